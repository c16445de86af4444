"""The data pipeline's public API: TFDS datasets by name, as sharded global `jax.Array` batches.

`data_config` is `config.data` (an ml_collections ConfigDict, or anything with attributes):

  name            TFDS name: 'offline_mnist', 'offline_digits', 'mnist', 'cifar10', ...; paired
                  image-to-image: 'offline_sketched_digits', 'pix2pix/facades' (this package's
                  builders), unpaired: 'cycle_gan/horse2zebra' (with unpaired_split)
  split           training split, TFDS slicing allowed ('train', 'train[:64]')
  eval_split      evaluation split ('test')
  data_dir        TFDS data dir (None: TFDS default; gs:// works)
  download        bool: download and prepare a catalog (or pix2pix) dataset that is not prepared
                  (default False)
  shuffle_buffer  int: shuffle buffer size per process; 0 = no shuffling
  random_flip     bool: random horizontal flips in training (one coin for all images of an example)
  image_size      int or None: resize to image_size x image_size (bilinear, antialiased, rounded)
  jitter_size     int: > 0 (e.g. 286 for image_size 256, pix2pix's jitter) resizes the training
                  images to jitter_size x jitter_size and crops image_size x image_size at random
                  offsets (one crop for all images of an example); 0 = off (default); needs
                  image_size < jitter_size; eval never jitters
  unpaired_split  str or None: unpaired (CycleGAN) mode: the training split of domain B, read
                  beside config.data.split (domain A); see `research.data.unpaired`
  unpaired_eval_split  str or None: domain B's eval split (set with unpaired_split)
  prefetch        int: device batches kept ready by a background thread
  text_length     int, optional: > 0 maps each example's caption to 'text' int32 [text_length]
                  through the BPE tokenizer (the iterators' `text_tokenizer` file, else
                  config.data.text_tokenizer; see `research.data.captions_text`), on the host
                  inside tf.data
  caption_key     str, optional: the caption feature ('caption'; 'captions/text' for coco_captions)

Batches are dicts of global arrays: 'image' uint8 [B, H, W, C], 'label' int32 [B] when the
dataset has labels, 'text' int32 [B, L] with text_length, and in eval also 'mask' float32 [B]
(0 for padding rows). Dim 0 is sharded over the batch axes of the caller's `NamedSharding`
(`spec[0]`); other dims are replicated.

Image-to-image data adds 'input' uint8 [B, H, W, C_in], the condition (a sketch, a label map):
a paired dataset's 'input' feature (offline_sketched_digits, pix2pix/<name>), decoded, resized,
flipped and jittered exactly like 'image'; or, in unpaired mode, domain A's images (no 'label'
then, and eval batches carry 'input_mask' for the 'input' rows beside 'mask' for the 'image' rows).

Each process reads `tfds.even_splits(split, n=jax.process_count())[jax.process_index()]` and
builds `global_batch_size // jax.process_count()` examples per batch. The train stream is infinite
and a pure function of (seed, process layout); `start_step=k` resumes it exactly at batch k. See
`research.data.tf_pipeline` for how. The offline datasets are generated on first use; a catalog
dataset that is not prepared fails at once with a `UserError` unless `download` is set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import jax

from research.data import device_prefetch, tfds_source
from research.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about the data before seeing a batch."""

  image_shape: tuple[int, int, int]  # (H, W, C) as the pipeline yields them (after resize).
  num_classes: int | None  # None when the dataset has no 'label' (or in unpaired mode).
  num_train: int  # Examples in config.data.split (unpaired: unpaired_split), all processes.
  num_eval: int  # Examples in config.data.eval_split (unpaired: unpaired_eval_split).
  # The caption tokenizer file (research.data.captions_text) when config.data.text_length > 0.
  text_tokenizer: str | None = None
  # (H, W, C_in) of 'input' after resize; None when batches have no 'input'.
  input_shape: tuple[int, int, int] | None = None
  # Examples behind 'input' in eval: the eval split's (paired), config.data.eval_split's
  # (unpaired: domain A); 0 without 'input'. num_train_input likewise for training.
  num_eval_input: int = 0
  num_train_input: int = 0


def _image_size(data_config: Any) -> int | None:
  """config.data.image_size, after checking config.data.jitter_size against it."""
  from research.data import tf_pipeline

  image_size = tfds_source.field(data_config, "image_size")
  tf_pipeline.check_jitter(tfds_source.field(data_config, "jitter_size"), image_size)
  return image_size


def dataset_info(data_config: Any) -> DatasetInfo:
  """Shapes, classes and split sizes, from TFDS metadata (no tensorflow needed once prepared)."""
  from research.data import unpaired

  pair = unpaired.splits(data_config)
  builder = tfds_source.get_builder(data_config)
  image_size = _image_size(data_config)
  image_shape = tfds_source.image_shape(builder, image_size)
  split = tfds_source.field(data_config, "split")
  eval_split = tfds_source.field(data_config, "eval_split")
  num_train = tfds_source.num_examples(builder, split)
  num_eval = tfds_source.num_examples(builder, eval_split, "config.data.eval_split")
  if pair is not None:
    return DatasetInfo(
      image_shape=image_shape,
      num_classes=None,
      num_train=tfds_source.num_examples(builder, pair[0], "config.data.unpaired_split"),
      num_eval=tfds_source.num_examples(builder, pair[1], "config.data.unpaired_eval_split"),
      input_shape=image_shape,
      num_eval_input=num_eval,
      num_train_input=num_train,
    )
  paired = "input" in tfds_source.image_features(builder)
  return DatasetInfo(
    image_shape=image_shape,
    num_classes=tfds_source.num_classes(builder),
    num_train=num_train,
    num_eval=num_eval,
    input_shape=tfds_source.image_shape(builder, image_size, "input") if paired else None,
    num_eval_input=num_eval if paired else 0,
    num_train_input=num_train if paired else 0,
  )


def prepare(data_config: Any) -> None:
  """Makes `data_config.name` ready in `data_config.data_dir`.

  Generates an offline dataset (no network); downloads and prepares a catalog dataset when
  `data_config.download` is true; otherwise raises a `UserError` if it is not prepared.
  """
  tfds_source.prepare(data_config)


def held_out_examples(data_config: Any, num: int) -> dict[str, Any]:
  """The first `num` eval examples as host numpy arrays, the same on every process.

  For tasks that translate fixed held-out inputs (pix2pix, CycleGAN): {'image', 'input' and
  'label' where the batches have them}, decoded and resized as in eval (no jitter, no 'mask'), in
  file order of config.data.eval_split; in unpaired mode 'input' is the start of eval_split
  (domain A) and 'image' of unpaired_eval_split (domain B), both cut to the shorter. Fewer than
  `num` rows when the split is shorter.
  """
  from research.data import tf_pipeline, unpaired

  if int(num) < 1:
    raise UserError(f"{num} held-out examples asked for; set config.eval.num_samples to >= 1")
  pair = unpaired.splits(data_config)
  builder = tfds_source.get_builder(data_config)
  split = tfds_source.field(data_config, "eval_split")
  tfds_source.num_examples(builder, split, "config.data.eval_split")
  image_size = _image_size(data_config)
  if pair is None:
    return tf_pipeline.first_examples(builder, split, num, image_size=image_size)
  tfds_source.num_examples(builder, pair[1], "config.data.unpaired_eval_split")
  only = {"image_size": image_size, "images": ("image",), "labels": False}
  a = tf_pipeline.first_examples(builder, split, num, **only)["image"]
  b = tf_pipeline.first_examples(builder, pair[1], num, **only)["image"]
  n = min(len(a), len(b))
  return {"input": a[:n], "image": b[:n]}


def _batch_devices(sharding: jax.sharding.NamedSharding) -> int:
  """Number of devices dim 0 of a batch is split over: the product of the batch axes' sizes."""
  spec0 = sharding.spec[0] if len(sharding.spec) else None
  if spec0 is None:
    return 1
  axes = (spec0,) if isinstance(spec0, str) else tuple(spec0)
  return math.prod(sharding.mesh.shape[a] for a in axes)


def local_batch_size(
  global_batch_size: int, sharding: jax.sharding.NamedSharding, what: str = "config.batch_size"
) -> int:
  """This process's share of a global batch, after checking that it divides evenly.

  `what` names the config field to fix in the error message.
  """
  devices = _batch_devices(sharding)
  processes = jax.process_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    raise UserError(
      f"global batch size {global_batch_size} does not divide by the {devices} devices; "
      f"set {what} to a multiple of {devices}"
    )
  if global_batch_size % processes:
    raise UserError(
      f"global batch size {global_batch_size} does not divide by the {processes} processes; "
      f"set {what} to a multiple of {processes}"
    )
  return global_batch_size // processes


def _text_transform(data_config: Any, tokenizer: str | None) -> Any:
  """The caption -> 'text' map when config.data.text_length > 0, else None."""
  from research.data import captions_text

  return captions_text.text_transform(data_config, tokenizer)


def _process_split(split: str) -> Any:
  tfds = tfds_source.import_tfds()
  return tfds.even_splits(split, n=jax.process_count())[jax.process_index()]


def train_iterator(
  data_config: Any,
  *,
  global_batch_size: int,
  sharding: jax.sharding.NamedSharding,
  seed: int,
  start_step: int = 0,
  text_tokenizer: str | None = None,
) -> Iterator[dict[str, jax.Array]]:
  """The infinite training stream of global batches, starting at batch `start_step`.

  Batch k is the same whether the iterator started at 0 or at `start_step <= k` (same seed and
  process layout). Call `.close()` on the result, or drop it, to stop its prefetch thread.
  """
  from research.data import tf_pipeline, unpaired

  if start_step < 0:
    raise UserError(f"start_step {start_step} is negative; resume from a step >= 0")
  local_batch = local_batch_size(global_batch_size, sharding)
  pair = unpaired.splits(data_config)
  builder = tfds_source.get_builder(data_config)
  split = tfds_source.field(data_config, "split")
  tfds_source.num_examples(builder, split)  # A one-line UserError for a bad split.
  kwargs = {
    "local_batch": local_batch,
    "seed": int(seed),
    "start_step": int(start_step),
    "shuffle_buffer": int(tfds_source.field(data_config, "shuffle_buffer") or 0),
    "random_flip": bool(tfds_source.field(data_config, "random_flip")),
    "image_size": _image_size(data_config),
    "jitter_size": tfds_source.field(data_config, "jitter_size"),
    "process_index": jax.process_index(),
  }
  if pair is None:
    text = _text_transform(data_config, text_tokenizer)
    ds = tf_pipeline.train_dataset(builder, _process_split(split), text=text, **kwargs)
  else:
    tfds_source.num_examples(builder, pair[0], "config.data.unpaired_split")
    ds = unpaired.train_dataset(builder, _process_split(split), _process_split(pair[0]), **kwargs)
  return device_prefetch.DevicePrefetcher(
    ds.as_numpy_iterator(),
    sharding,
    size=int(tfds_source.field(data_config, "prefetch")),
    name="train_prefetch",
  )


def eval_iterator(
  data_config: Any,
  *,
  global_batch_size: int,
  sharding: jax.sharding.NamedSharding,
  text_tokenizer: str | None = None,
) -> Iterator[dict[str, jax.Array]]:
  """One pass over `eval_split` in global batches with a 'mask' (1 real, 0 padding).

  Every process yields the same number of batches: ceil(largest per-process part / local batch);
  short parts are padded with masked rows (and whole masked batches where needed). In unpaired
  mode both eval splits are padded to the larger one's batches ('mask' and 'input_mask').
  """
  from research.data import tf_pipeline, unpaired

  local_batch = local_batch_size(global_batch_size, sharding, "config.eval.batch_size")
  pair = unpaired.splits(data_config)
  builder = tfds_source.get_builder(data_config)
  split = tfds_source.field(data_config, "eval_split")
  image_size = _image_size(data_config)
  if pair is None:
    num_batches = tf_pipeline.eval_num_batches(
      builder, split, local_batch=local_batch, process_count=jax.process_count()
    )
    ds = tf_pipeline.eval_dataset(
      builder,
      _process_split(split),
      local_batch=local_batch,
      num_batches=num_batches,
      image_size=image_size,
      text=_text_transform(data_config, text_tokenizer),
    )
  else:
    num_batches = unpaired.eval_num_batches(
      builder, split, pair[1], local_batch=local_batch, process_count=jax.process_count()
    )
    ds = unpaired.eval_dataset(
      builder,
      _process_split(split),
      _process_split(pair[1]),
      local_batch=local_batch,
      num_batches=num_batches,
      image_size=image_size,
    )
  return device_prefetch.DevicePrefetcher(
    ds.as_numpy_iterator(),
    sharding,
    size=int(tfds_source.field(data_config, "prefetch")),
    name="eval_prefetch",
  )
