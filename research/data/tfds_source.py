"""TFDS builders by name: lazy imports, preparation, the prepared check and split sizes.

Nothing here imports tensorflow at module import time, and reading a prepared dataset's metadata
(`get_builder`, `num_examples`) works without tensorflow installed. TensorFlow is imported only by
`import_tf` (building a `tf.data` pipeline, or generating the offline datasets).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from research.errors import UserError

# Config fields (attribute access on an ml_collections ConfigDict) and their defaults.
_DEFAULTS = {
  "split": "train",
  "eval_split": "test",
  "data_dir": None,
  "download": False,
  "shuffle_buffer": 10_000,
  "random_flip": False,
  "image_size": None,
  "jitter_size": 0,
  "unpaired_split": None,
  "unpaired_eval_split": None,
  "prefetch": 2,
}


def field(config: Any, name: str) -> Any:
  """`config.<name>`, or its default when the field is absent ('name' has no default)."""
  value = getattr(config, name, _DEFAULTS.get(name))
  if name == "name" and not value:
    raise UserError("config.data.name is not set; set it to a TFDS name such as 'offline_mnist'")
  return value


@functools.cache
def import_tf() -> Any:
  """Imports tensorflow quietly, hides the GPUs from it and returns the module."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  try:
    import tensorflow as tf
  except ImportError:
    raise UserError(
      "the data pipeline needs tensorflow; run `pip install tensorflow-cpu`"
    ) from None
  try:
    tf.config.set_visible_devices([], "GPU")  # TF must never take accelerator memory.
  except (RuntimeError, ValueError):  # Already initialised by someone else: leave it.
    pass
  tf.get_logger().setLevel(logging.ERROR)
  return tf


@functools.cache
def import_tfds() -> Any:
  """Imports tensorflow_datasets (which does not import tensorflow) with quiet output."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError(
      "the data pipeline needs tensorflow_datasets; run `pip install tensorflow-datasets`"
    ) from None
  tfds.disable_progress_bar()
  return tfds


@functools.cache
def offline_builder_classes() -> dict[str, Any]:
  """The offline builder classes by TFDS name; the first call registers them all with TFDS.

  Their data ships in wheels, so the pipeline generates them on demand (no download involved).
  Imported here, lazily, because their modules import tensorflow_datasets.
  """
  import_tfds()
  from research.data import captions, offline_builders

  classes = (
    offline_builders.OfflineMnist,
    offline_builders.OfflineDigits,
    offline_builders.OfflineSketchedDigits,
    captions.OfflineCaptionedDigits,
  )
  return {b.name: b for b in classes}


@functools.cache
def download_builder_classes() -> dict[str, Any]:
  """This package's builders that download their data (not in the TFDS catalog), by TFDS name.

  `pix2pix` (`research.data.pix2pix_builder`): the paired pix2pix tarballs. Like a catalog
  dataset, it is prepared only with config.data.download (or `research.data.prepare`).
  """
  import_tfds()
  from research.data import pix2pix_builder

  return {pix2pix_builder.Pix2Pix.name: pix2pix_builder.Pix2Pix}


def _offline_names() -> tuple[str, ...]:
  return tuple(offline_builder_classes())


def is_mocked() -> bool:
  """Whether `tfds.testing.mock_data` is active (it patches `download_and_prepare`).

  The mock serves random examples without any prepared files or split metadata, so under it the
  prepared check is skipped and split sizes come from the mocked `tf.data` cardinality.
  """
  tfds = import_tfds()
  patched = tfds.core.DatasetBuilder.download_and_prepare
  return "mock_data" in getattr(patched, "__qualname__", "")


def _prepare_cmd(name: str, data_dir: Any) -> str:
  return f"python -m research.data.prepare --name={name} --data_dir={data_dir}"


def _make_builder(name: str, data_dir: str | None) -> Any:
  tfds = import_tfds()
  offline = ", ".join(repr(n) for n in _offline_names())  # Also registers the offline builders.
  download_builder_classes()  # Registers pix2pix.
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="tfrecord")
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(
      f"unknown TFDS dataset {name!r} in config.data.name; use a TFDS catalog name or one of "
      f"{offline}"
    ) from None


def is_prepared(builder: Any) -> bool:
  """Whether the builder's version folder holds its dataset_info.json (TFDS writes it last).

  The test of `builder.is_prepared()` (a valid version folder with dataset_info.json; the builder's
  own version is valid) without its absl warning "Variant folder ... has no dataset_info.json",
  which TFDS logs whenever the folder is absent, i.e. before every first build.
  """
  return builder.data_path.joinpath("dataset_info.json").exists()


def download_and_prepare(builder: Any, *, offline: bool) -> None:
  """Writes the dataset's tfrecord files into the builder's data_dir (downloads unless offline)."""
  tfds = import_tfds()
  if offline:
    try:
      import_tf()  # Generating Image features encodes PNGs with tensorflow.
    except UserError:
      cmd = _prepare_cmd(builder.name, builder.data_dir_root)
      raise UserError(
        f"generating {builder.name!r} needs tensorflow; run `pip install tensorflow-cpu`, or run "
        f"`{cmd}` where it is installed and set config.data.data_dir to that dir"
      ) from None
  config = tfds.download.DownloadConfig(try_download_gcs=not offline)
  try:
    builder.download_and_prepare(file_format="tfrecord", download_config=config)
  except OSError as e:
    import requests  # A dependency of tensorflow_datasets.

    if not isinstance(e, requests.exceptions.RequestException):
      raise
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    cmd = _prepare_cmd(builder.info.full_name.rsplit("/", 1)[0], builder.data_dir_root)
    raise UserError(
      f"downloading {builder.name!r} failed ({reason}); run `{cmd}` on a machine with internet "
      "and set config.data.data_dir to that dir"
    ) from None


def get_builder(data_config: Any) -> Any:
  """The prepared TFDS builder for `data_config.name` in `data_config.data_dir`.

  Offline builders are generated on demand (their data ships in wheels); a catalog dataset is
  downloaded only when `data_config.download` is true. Otherwise an unprepared dataset raises a
  `UserError` at once, without touching the network.
  """
  name = field(data_config, "name")
  data_dir = field(data_config, "data_dir")
  offline = name in _offline_names()
  builder = _make_builder(name, data_dir)
  if is_prepared(builder) or is_mocked():
    return builder
  if offline or field(data_config, "download"):
    download_and_prepare(builder, offline=offline)
    return builder
  where = builder.data_dir_root
  raise UserError(
    f"dataset {name!r} is not prepared in {where}; run `{_prepare_cmd(name, where)}` on a machine "
    "with internet, set config.data.data_dir to where it is, or set config.data.download=True"
  )


def prepare(data_config: Any) -> None:
  """Generates an offline dataset, or downloads a catalog one when `download` is true.

  A catalog dataset that is not prepared and may not be downloaded raises a `UserError`.
  """
  get_builder(data_config)


def num_examples(builder: Any, split: Any, key: str = "config.data.split") -> int:
  """Examples in `split` (a name, a TFDS slice like 'train[:64]', or an even_splits part)."""
  splits = builder.info.splits
  if not splits and is_mocked():
    return mocked_cardinality(builder, split)
  try:
    return int(splits[split].num_examples)
  except (KeyError, ValueError, AssertionError) as e:
    known = ", ".join(sorted(splits.keys())) or "none"
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(
      f"split {str(split)!r} of dataset {builder.name!r} is not valid ({reason}); "
      f"set {key} to one of: {known} (TFDS slicing like 'train[:64]' works too)"
    ) from None


def mocked_cardinality(builder: Any, split: Any) -> int:
  """Number of examples `tfds.testing.mock_data` serves for `split`."""
  import_tf()
  return int(builder.as_dataset(split=split).cardinality().numpy())


def image_features(builder: Any) -> tuple[str, ...]:
  """The names of the builder's top-level `tfds.features.Image` features, 'image' first.

  The pipeline decodes, resizes, flips and crops all of them alike (e.g. 'image' and the condition
  'input' of a paired dataset), so that an example's images stay aligned.
  """
  tfds = import_tfds()
  features = builder.info.features
  names = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  return tuple(sorted(names, key=lambda k: (k != "image", k)))


def image_shape(
  builder: Any, image_size: int | None, feature: str = "image"
) -> tuple[int, int, int]:
  """(H, W, C) of `feature`'s images as the pipeline yields them: the feature's shape, or resized."""
  features = builder.info.features
  if feature not in features:
    raise UserError(
      f"dataset {builder.name!r} has no {feature!r} feature (features: "
      f"{sorted(features.keys())}); pick an image dataset in config.data.name"
    )
  h, w, c = features[feature].shape
  if image_size:
    h = w = int(image_size)
  if h is None or w is None or c is None:
    raise UserError(
      f"dataset {builder.name!r} has {feature!r} images of varying size "
      f"{features[feature].shape}; set config.data.image_size to resize them"
    )
  return int(h), int(w), int(c)


def num_classes(builder: Any) -> int | None:
  """The 'label' ClassLabel's number of classes, or None when the dataset has no labels."""
  features = builder.info.features
  if "label" not in features:
    return None
  return getattr(features["label"], "num_classes", None)
