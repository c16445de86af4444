"""The captioned-digits conventions: digit words, held-out pairs, cell geometry, caption templates.

Plain Python (no tensorflow, tensorflow_datasets or jax import), so that tasks and evaluation can
read captions and cells of `offline_captioned_digits` without loading the data pipeline. The TFDS
builder that writes the dataset (`research.data.captions`) uses exactly these definitions.

A canvas is two `CELL` x `CELL` cells side by side, (left, right); a digit is its `DIGIT_SIZE` x
`DIGIT_SIZE` image padded by `PAD` pixels on every side; an empty cell is all zeros. Labels are
(left, right) digits, -1 for an empty cell. A caption names its digits in words; a single-digit
caption that names no side puts its digit in the left cell, so the caption determines the label
(`caption_label` reads it back).
"""

from __future__ import annotations

import re

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Ordered (left, right) pairs never drawn in 'train' (each digit once on each side).
HELD_OUT_PAIRS = ((0, 5), (1, 7), (2, 9), (3, 6), (4, 8), (5, 1), (6, 0), (7, 3), (8, 2), (9, 4))
CELL = 32  # side of a cell, in pixels
DIGIT_SIZE = 28  # side of the MNIST digit inside a cell
PAD = (CELL - DIGIT_SIZE) // 2  # 2 pixels of zeros on every side of the digit
CANVAS_SHAPE = (CELL, 2 * CELL, 1)  # (H, W, C) of an image

# Captions for one digit: {a} = "a seven" / "an eight", {d} = "seven", {side} = "left" / "right".
# Templates without {side} put the digit in the left cell.
SINGLE_TEMPLATES = (
  "a handwritten {d}",
  "the digit {d}",
  "{a}",
  "the digit {d} on the {side}",
  "{a} on the {side}",
  "a handwritten {d} on the {side} side",
)
# Captions for two digits, {l} left and {r} right (with articles: {al}, {ar}).
PAIR_TEMPLATES = (
  "{al} to the left of {ar}",
  "{ar} to the right of {al}",
  "the digits {l} and {r}",
  "{al} on the left and {ar} on the right",
  "a handwritten {l} next to a handwritten {r}, in that order",
)
# Zero-shot classification of one digit in the left cell: the ten captions "a handwritten zero",
# ..., "a handwritten nine" (SINGLE_TEMPLATES[0], which names no side).
ZERO_SHOT_TEMPLATE = "a handwritten {}"
ZERO_SHOT_CAPTIONS = tuple(ZERO_SHOT_TEMPLATE.format(w) for w in WORDS)


def article(d: int) -> str:
  """The digit's word with its indefinite article: "an eight", "a one"."""
  return ("an " if d == 8 else "a ") + WORDS[d]


def caption_for(label: tuple[int, int], template: int) -> str:
  """The caption of (left, right) digits (-1 = empty cell) with template number `template`."""
  left, right = label
  if left >= 0 and right >= 0:
    t = PAIR_TEMPLATES[template % len(PAIR_TEMPLATES)]
    return t.format(l=WORDS[left], r=WORDS[right], al=article(left), ar=article(right))
  d, side = (left, "left") if left >= 0 else (right, "right")
  sided = [t for t in SINGLE_TEMPLATES if "{side}" in t]
  pool = sided if side == "right" else SINGLE_TEMPLATES  # no side named -> left cell
  return pool[template % len(pool)].format(d=WORDS[d], a=article(d), side=side)


def caption_label(caption: str) -> tuple[int, int]:
  """The (left, right) digits a caption asks for (-1 = none); any text, not only generated ones.

  Two digit words: the first is on the left unless the caption says "... to the right of ...".
  One word: the right cell when the caption names the right side, else the left cell (the dataset's
  rule). No digit word: (-1, -1).
  """
  words = re.findall(r"[a-z]+", caption.lower())
  digits = [WORDS.index(w) for w in words if w in WORDS]
  if len(digits) >= 2:
    a, b = digits[:2]
    return (b, a) if "right of" in caption.lower() else (a, b)
  if len(digits) == 1:
    return (-1, digits[0]) if "right" in words else (digits[0], -1)
  return (-1, -1)


def digit_box(cell_side: int) -> tuple[int, int]:
  """(offset, size) of the digit's square inside a cell of `cell_side` pixels (any resolution).

  size = max(1, round(cell_side * DIGIT_SIZE / CELL)), offset = (cell_side - size) // 2: at the
  dataset's own resolution, (2, 28); the digit is rows and columns [offset, offset + size).
  """
  size = max(1, round(cell_side * DIGIT_SIZE / CELL))
  return (cell_side - size) // 2, size
