"""The host-side `tf.data` pipelines: deterministic, resumable train stream and padded eval pass.

Every function imports tensorflow lazily (through `tfds_source.import_tf`).

Train order is a pure function of (seed, process index, process count): each process reads its
`even_splits` part of the split in file order (no file shuffling; TFDS already shuffled the records
when it generated the files), epoch `e` is shuffled by a `shuffle_buffer`-sized buffer seeded from
(seed, e), and the horizontal flip of the example at stream position `i` is a stateless coin keyed
by (seed, process index, i). Epochs are concatenated into one continuous stream, batched with
`drop_remainder=True`, so batches cross epoch boundaries. Resuming at step k starts the stream at
epoch `k * local_batch // n` and skips the remainder as still-encoded records, before decoding.

Every image feature of the builder (`tfds_source.image_features`: 'image', and e.g. the condition
'input' of a paired dataset) is decoded and resized alike, and the training flip and jitter (resize
to jitter_size, random crop back to image_size; pix2pix's 286 -> 256) use one coin, and one pair of
crop offsets keyed by (seed, process index, i), for all of an example's images, so they stay
aligned and resuming stays exact.
"""

from __future__ import annotations

import hashlib
from typing import Any

from research.data import tfds_source
from research.errors import UserError

_EPOCHS = 2**62  # "Forever": the train stream's epoch range is [start_epoch, _EPOCHS).


def _key(*parts: Any) -> int:
  """A 62-bit integer derived from `parts` (stable across processes and Python runs)."""
  digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
  return int.from_bytes(digest[:8], "little") >> 2


def _options() -> Any:
  tf = tfds_source.import_tf()
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def read_encoded(
  builder: Any,
  split: Any,
  *,
  seed: int = 0,
  caption_key: str | None = None,
  images: tuple[str, ...] | None = None,
  labels: bool = True,
) -> Any:
  """`split` as a `tf.data.Dataset` of {image features: encoded bytes, 'label'?}, in file order.

  `images` names the image features to keep (default: all of `tfds_source.image_features`);
  `labels=False` drops 'label'. With `caption_key`, examples also carry 'caption': that feature's
  string(s).
  """
  tfds = tfds_source.import_tfds()
  images = tfds_source.image_features(builder) if images is None else tuple(images)
  # No TFDS auto-cache: it would keep the still-encoded records (what the files hold) in memory, and
  # tf.data warns on stderr whenever a partly read cache is dropped (a run stopped in epoch 0).
  read_config = tfds.ReadConfig(options=_options(), shuffle_seed=seed, try_autocache=False)
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={k: tfds.decode.SkipDecoding() for k in images},
    read_config=read_config,
  )
  keep = list(images) + (["label"] if labels and "label" in builder.info.features else [])
  if caption_key is None:
    return ds.map(lambda ex: {k: ex[k] for k in keep})
  from research.data import captions_text

  return ds.map(
    lambda ex: {
      **{k: ex[k] for k in keep},
      "caption": captions_text.caption_tensor(ex, caption_key),
    }
  )


def _cardinality(ds: Any, fallback: int) -> int:
  n = int(ds.cardinality().numpy())
  return n if n >= 0 else fallback


def _text_fn(text: Any) -> Any:
  """(caption string(s), coin in [0, 1)) -> "text" int32 [L]: one caption through the tokenizer.

  An example with several captions (coco_captions) uses caption floor(coin * n): a stateless coin
  per stream position in training, the first caption (coin 0) in eval.
  """
  tf = tfds_source.import_tf()

  def to_text(caption: Any, coin: Any) -> Any:
    caption = tf.reshape(caption, [-1])
    n = tf.shape(caption)[0]
    i = tf.minimum(tf.cast(coin * tf.cast(n, tf.float32), tf.int32), n - 1)
    ids = tf.numpy_function(text.encode, [caption[i]], tf.int32, stateful=False)
    return tf.ensure_shape(ids, [text.length])

  return to_text


def _preprocess_fn(
  builder: Any, image_size: int | None, text: Any = None, images: tuple[str, ...] | None = None
) -> Any:
  """Decodes the image features, resizes them when asked (bilinear, antialiased, rounded) and casts
  labels.

  `images` are the image features to decode (default: all); each is resized to image_size x
  image_size when it is set. With `text` (a `captions_text.TextTransform`), the 'caption' becomes
  "text" int32 [L].
  """
  tf = tfds_source.import_tf()
  images = tfds_source.image_features(builder) if images is None else tuple(images)
  features = {k: builder.info.features[k] for k in images}
  shapes = {k: tfds_source.image_shape(builder, image_size, k) for k in images}
  resize = {
    k: bool(image_size) and tuple(f.shape[:2]) != shapes[k][:2] for k, f in features.items()
  }

  to_text = _text_fn(text) if text is not None else None

  def preprocess(ex: dict[str, Any], coin: Any = 0.0) -> dict[str, Any]:
    out = {}
    for k, feature in features.items():
      image = feature.decode_example(ex[k])
      h, w, c = shapes[k]
      if resize[k]:
        image = tf.image.resize(image, [h, w], method="bilinear", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
      out[k] = tf.ensure_shape(image, [h, w, c])
    if "label" in ex:
      out["label"] = tf.cast(ex["label"], tf.int32)
    if to_text is not None:
      out["text"] = to_text(ex["caption"], coin)
    return out

  return preprocess


def check_jitter(jitter_size: int, image_size: int | None) -> int:
  """`jitter_size` as an int after checking it (0 = off); a one-line `UserError` if it is bad."""
  try:
    jitter = int(jitter_size or 0)
  except (TypeError, ValueError):
    raise UserError(
      f"config.data.jitter_size={jitter_size!r} is not an int; set it to e.g. 286 (or 0 = off)"
    ) from None
  if jitter < 0:
    raise UserError(f"config.data.jitter_size={jitter} is negative; use 0 (off) or a size")
  if jitter and (not image_size or int(image_size) >= jitter):
    raise UserError(
      f"config.data.jitter_size={jitter} needs config.data.image_size set below it (the crop "
      f"size; image_size is {image_size}); set image_size (e.g. 256 for 286) or jitter_size=0"
    )
  return jitter


def train_dataset(
  builder: Any,
  split: Any,
  *,
  local_batch: int,
  seed: int,
  start_step: int,
  shuffle_buffer: int,
  random_flip: bool,
  image_size: int | None,
  process_index: int,
  text: Any = None,
  jitter_size: int = 0,
  images: tuple[str, ...] | None = None,
  labels: bool = True,
) -> Any:
  """The infinite, deterministic stream of local batches from `start_step` on.

  `text` (a `captions_text.TextTransform` or None) adds "text" int32 [L] from the captions.
  `jitter_size` > 0 resizes the images to jitter_size x jitter_size and crops image_size x
  image_size at random offsets (`check_jitter`). `images` / `labels` as in `read_encoded`.
  """
  tf = tfds_source.import_tf()
  jitter = check_jitter(jitter_size, image_size)
  base = read_encoded(
    builder, split, seed=seed, caption_key=text and text.caption_key, images=images, labels=labels
  )
  n = _cardinality(base, tfds_source.num_examples(builder, split))
  if n == 0:
    raise UserError(
      f"the {process_index}-th process's part of split {str(split)!r} of {builder.name!r} is "
      "empty; use a larger config.data.split"
    )
  start_epoch, skip = divmod(start_step * local_batch, n)
  buffer = min(int(shuffle_buffer or 0), n)
  shuffle_key = tf.constant(_key("shuffle", seed), tf.int64)
  flip_key = tf.constant(_key("flip", seed, process_index), tf.int64)
  crop_key = tf.constant(_key("crop", seed, process_index), tf.int64)

  def epoch(e: Any) -> Any:
    ds = base
    if buffer > 1:
      epoch_seed = tf.random.stateless_uniform(
        [], seed=tf.stack([shuffle_key, e]), minval=0, maxval=2**62, dtype=tf.int64
      )
      ds = ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    return ds.enumerate().map(lambda i, ex: {**ex, "index": e * n + i})

  preprocess = _preprocess_fn(builder, jitter or image_size, text, images)
  image_keys = [k for k in base.element_spec if k not in ("label", "caption")]
  caption_key = tf.constant(_key("caption", seed, process_index), tf.int64)

  def augment(ex: dict[str, Any]) -> dict[str, Any]:
    index = ex.pop("index")
    coin = tf.random.stateless_uniform([], seed=tf.stack([caption_key, index])) if text else 0.0
    out = preprocess(ex, coin)
    if jitter:  # One crop for all of the example's images.
      size = int(image_size)
      offset = tf.random.stateless_uniform(
        [2], seed=tf.stack([crop_key, index]), minval=0, maxval=jitter - size + 1, dtype=tf.int32
      )
      for k in image_keys:
        crop = out[k][offset[0] : offset[0] + size, offset[1] : offset[1] + size]
        out[k] = tf.ensure_shape(crop, [size, size, out[k].shape[-1]])
    if random_flip:  # One coin for all of the example's images.
      coin = tf.random.stateless_uniform([], seed=tf.stack([flip_key, index]))
      for k in image_keys:
        out[k] = tf.where(coin < 0.5, tf.image.flip_left_right(out[k]), out[k])
    return out

  ds = tf.data.Dataset.range(start_epoch, _EPOCHS).flat_map(epoch)
  ds = ds.skip(skip)  # Still encoded: skipping costs reads, not decodes.
  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_num_batches(
  builder: Any,
  split: Any,
  *,
  local_batch: int,
  process_count: int,
  key: str = "config.data.eval_split",
) -> int:
  """Batches every process yields for one eval pass: from the largest per-process part.

  `key` names the config field of `split` in the error message of a bad split.
  """
  tfds = tfds_source.import_tfds()
  parts = tfds.even_splits(split, n=process_count)
  if not builder.info.splits and tfds_source.is_mocked():  # Same mocked size everywhere.
    sizes = [tfds_source.mocked_cardinality(builder, parts[0])]
  else:
    sizes = [tfds_source.num_examples(builder, p, key) for p in parts]
  return -(-max(sizes) // local_batch)


def eval_dataset(
  builder: Any,
  split: Any,
  *,
  local_batch: int,
  num_batches: int,
  image_size: int | None,
  text: Any = None,
  images: tuple[str, ...] | None = None,
  labels: bool = True,
  key: str = "config.data.eval_split",
) -> Any:
  """One pass over `split` in `num_batches` local batches with a float32 'mask' (0 = padding).

  No jitter: images are only resized to image_size. `images` / `labels` as in `read_encoded`.
  """
  tf = tfds_source.import_tf()
  base = read_encoded(
    builder, split, caption_key=text and text.caption_key, images=images, labels=labels
  )
  n = _cardinality(base, tfds_source.num_examples(builder, split, key))
  pad = num_batches * local_batch - n
  if pad < 0:
    raise ValueError(f"eval part has {n} examples, more than {num_batches} x {local_batch}")
  preprocess = _preprocess_fn(builder, image_size, text, images)

  def real(ex: dict[str, Any]) -> dict[str, Any]:
    return {**preprocess(ex), "mask": tf.constant(1.0, tf.float32)}

  ds = base.map(real, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(pad))
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def first_examples(
  builder: Any,
  split: Any,
  num: int,
  *,
  image_size: int | None,
  images: tuple[str, ...] | None = None,
  labels: bool = True,
) -> dict[str, Any]:
  """The first `num` examples of `split` in file order (fewer if it is shorter), as the eval pass
  decodes them (resized, never jittered), as host numpy arrays {feature: [n, ...]}."""
  tf = tfds_source.import_tf()
  base = read_encoded(builder, split, images=images, labels=labels).take(int(num))
  preprocess = _preprocess_fn(builder, image_size, None, images)
  ds = base.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(max(int(num), 1)).with_options(_options())
  batch = next(iter(ds), None)
  if batch is None:
    raise UserError(f"split {str(split)!r} of {builder.name!r} is empty; use a larger eval split")
  return {k: v.numpy() for k, v in batch.items()}
