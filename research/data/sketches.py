"""Sketches of digits for `offline_sketched_digits`: thin white strokes traced from each digit.

numpy only (no scikit-image, no scipy), vectorised over the whole stack, so the 5,000 sketches of
the builder take well under a second. A sketch is one of two line drawings of the digit's binary
mask (pixels >= `THRESHOLD`):

* a contour: the mask minus its erosion by the 3x3 cross, the digit's one-pixel outline;
* a skeleton: the mask thinned to one-pixel-wide centre lines by Zhang & Suen's algorithm (1984,
  "A fast parallel algorithm for thinning digital patterns"), both sub-iterations applied to every
  image of the stack at once until none changes.

The line is then drawn with a stroke of 1 or 2 px (a 2x2 dilation towards +y/+x for 2 px), white
(255) on black like the digits. Kind and width are fixed per row by SHA-256 of
``"offline_sketched_digits:<row>"`` (`row_style`), so the sketch of a row never depends on RNGs or
on the other rows. Every sketch pixel lies inside the mask or within 1 px of it.
"""

from __future__ import annotations

import hashlib

import numpy as np

THRESHOLD = 128  # uint8 value from which a digit pixel counts as ink.
CONTOUR, SKELETON = 0, 1  # Sketch kinds.
_SALT = "offline_sketched_digits"


def row_style(row: int) -> tuple[int, int]:
  """(kind, stroke width in px) of dataset row `row`: CONTOUR or SKELETON, and 1 or 2."""
  digest = hashlib.sha256(f"{_SALT}:{int(row)}".encode()).digest()
  return digest[0] & 1, 1 + (digest[1] & 1)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """`mask` [N, H, W] moved so that out[:, y, x] = mask[:, y + dy, x + dx] (False outside)."""
  n, h, w = mask.shape
  padded = np.zeros((n, h + 2, w + 2), mask.dtype)
  padded[:, 1:-1, 1:-1] = mask
  return padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def erode(mask: np.ndarray) -> np.ndarray:
  """Binary erosion of a bool stack [N, H, W] by the 3x3 cross (a pixel stays if its 4 neighbours
  are set; outside the image counts as background)."""
  out = mask.copy()
  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    out &= _shift(mask, dy, dx)
  return out


def contour(mask: np.ndarray) -> np.ndarray:
  """The one-pixel, 8-connected outline of each mask of a bool stack [N, H, W]: the mask minus
  its cross erosion (the pixels with a background 4-neighbour)."""
  return mask & ~erode(mask)


def thin(mask: np.ndarray, max_iterations: int = 64) -> np.ndarray:
  """Zhang-Suen thinning of a bool stack [N, H, W] into one-pixel-wide skeletons.

  With P2..P9 the 8 neighbours clockwise from north, a pixel is removed when 2 <= B <= 6 (B: its
  neighbours that are set), A == 1 (A: the 0 -> 1 transitions around P2, P3, ..., P9, P2) and, in
  the first sub-iteration, P2*P4*P6 == P4*P6*P8 == 0, in the second P2*P4*P8 == P2*P6*P8 == 0.
  Only the images still changing are processed in each round.
  """
  n, h, w = mask.shape
  padded = np.zeros((n, h + 2, w + 2), bool)  # A zero border: neighbours are plain slices.
  padded[:, 1:-1, 1:-1] = mask
  offsets = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))  # P2..P9
  active = np.arange(n)
  for _ in range(max_iterations):
    changed = np.zeros(len(active), bool)
    for step in (0, 1):
      sub = padded[active]
      p = [sub[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in offsets]
      b = np.zeros((len(active), h, w), np.uint8)
      a = np.zeros((len(active), h, w), np.uint8)
      for i in range(8):
        b += p[i]
        a += ~p[i] & p[(i + 1) % 8]
      p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
      if step == 0:
        keep = ~(p4 & p6 & (p2 | p8))
      else:
        keep = ~(p2 & p8 & (p4 | p6))
      remove = sub[:, 1:-1, 1:-1] & (b >= 2) & (b <= 6) & (a == 1) & keep
      sub[:, 1:-1, 1:-1] &= ~remove
      padded[active] = sub
      changed |= remove.any(axis=(1, 2))
    active = active[changed]
    if not len(active):
      break
  return padded[:, 1:-1, 1:-1].copy()


def dilate_2px(lines: np.ndarray) -> np.ndarray:
  """A 2-px-wide stroke along one-pixel lines [N, H, W]: the 2x2 dilation towards +y and +x."""
  return lines | _shift(lines, -1, 0) | _shift(lines, 0, -1) | _shift(lines, -1, -1)


def sketch(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """Sketches of digits: uint8 [N, H, W, 1] images (white on black) -> uint8 [N, H, W, 1] in {0, 255}.

  `rows` [N] are the images' dataset rows, which fix each sketch's kind and stroke width.
  """
  mask = images[..., 0] >= THRESHOLD
  styles = np.array([row_style(r) for r in rows], np.int64).reshape(-1, 2)
  kind, width = styles[:, 0], styles[:, 1]
  lines = contour(mask)
  skeleton = kind == SKELETON
  lines[skeleton] = thin(mask[skeleton])
  lines = np.where((width == 2)[:, None, None], dilate_2px(lines), lines)
  return (lines[..., None] * np.uint8(255)).astype(np.uint8)
