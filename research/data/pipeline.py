"""The data pipeline's public API: TFDS datasets by name, as sharded global `jax.Array` batches.

`data_config` is `config.data` (an ml_collections ConfigDict, or anything with attributes):

  name            TFDS name: 'offline_mnist', 'offline_digits', 'mnist', 'cifar10', ...
  split           training split, TFDS slicing allowed ('train', 'train[:64]')
  eval_split      evaluation split ('test')
  data_dir        TFDS data dir (None: TFDS default; gs:// works)
  download        bool: download and prepare a catalog dataset that is not prepared (default False)
  shuffle_buffer  int: shuffle buffer size per process; 0 = no shuffling
  random_flip     bool: random horizontal flips in training
  image_size      int or None: resize to image_size x image_size (bilinear, antialiased, rounded)
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
  num_classes: int | None  # None when the dataset has no 'label'.
  num_train: int  # Examples in config.data.split, all processes together.
  num_eval: int  # Examples in config.data.eval_split, all processes together.
  # The caption tokenizer file (research.data.captions_text) when config.data.text_length > 0.
  text_tokenizer: str | None = None


def dataset_info(data_config: Any) -> DatasetInfo:
  """Shapes, classes and split sizes, from TFDS metadata (no tensorflow needed once prepared)."""
  builder = tfds_source.get_builder(data_config)
  return DatasetInfo(
    image_shape=tfds_source.image_shape(builder, tfds_source.field(data_config, "image_size")),
    num_classes=tfds_source.num_classes(builder),
    num_train=tfds_source.num_examples(builder, tfds_source.field(data_config, "split")),
    num_eval=tfds_source.num_examples(
      builder, tfds_source.field(data_config, "eval_split"), "config.data.eval_split"
    ),
  )


def prepare(data_config: Any) -> None:
  """Makes `data_config.name` ready in `data_config.data_dir`.

  Generates an offline dataset (no network); downloads and prepares a catalog dataset when
  `data_config.download` is true; otherwise raises a `UserError` if it is not prepared.
  """
  tfds_source.prepare(data_config)


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
  from research.data import tf_pipeline

  if start_step < 0:
    raise UserError(f"start_step {start_step} is negative; resume from a step >= 0")
  local_batch = local_batch_size(global_batch_size, sharding)
  builder = tfds_source.get_builder(data_config)
  split = tfds_source.field(data_config, "split")
  tfds_source.num_examples(builder, split)  # A one-line UserError for a bad split.
  ds = tf_pipeline.train_dataset(
    builder,
    _process_split(split),
    local_batch=local_batch,
    seed=int(seed),
    start_step=int(start_step),
    shuffle_buffer=int(tfds_source.field(data_config, "shuffle_buffer") or 0),
    random_flip=bool(tfds_source.field(data_config, "random_flip")),
    image_size=tfds_source.field(data_config, "image_size"),
    process_index=jax.process_index(),
    text=_text_transform(data_config, text_tokenizer),
  )
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
  short parts are padded with masked rows (and whole masked batches where needed).
  """
  from research.data import tf_pipeline

  local_batch = local_batch_size(global_batch_size, sharding, "config.eval.batch_size")
  builder = tfds_source.get_builder(data_config)
  split = tfds_source.field(data_config, "eval_split")
  num_batches = tf_pipeline.eval_num_batches(
    builder, split, local_batch=local_batch, process_count=jax.process_count()
  )
  ds = tf_pipeline.eval_dataset(
    builder,
    _process_split(split),
    local_batch=local_batch,
    num_batches=num_batches,
    image_size=tfds_source.field(data_config, "image_size"),
    text=_text_transform(data_config, text_tokenizer),
  )
  return device_prefetch.DevicePrefetcher(
    ds.as_numpy_iterator(),
    sharding,
    size=int(tfds_source.field(data_config, "prefetch")),
    name="eval_prefetch",
  )
