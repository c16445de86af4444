"""DALL-E's attention masks against an explicit construction over (i, j), and the layer cycle."""

import numpy as np
import pytest

from research.models import dalle_masks


def reference(kind, text_length, grid, kernel=11, wrap=True):
  """The paper's rules (appendix B.1, figure 11) position pair by position pair."""
  h, w = grid
  t = text_length + 1  # BOS + caption
  s = text_length + h * w
  out = np.zeros((s, s), bool)
  for i in range(s):
    for j in range(s):
      if j > i:
        continue  # nothing attends to the future
      if j < t:
        out[i, j] = True  # text causally; every image position sees all text
        continue
      (ri, ci), (rj, cj) = divmod(i - t, w), divmod(j - t, w)
      if kind == "dense":
        out[i, j] = True
      elif kind == "row":
        out[i, j] = j in range(i - w, i + 1)  # the previous w + 1 tokens
      elif kind == "column":
        out[i, j] = cj == ci
      elif kind == "conv":
        r = kernel // 2
        cols = {(ci + d) % w for d in range(-r, r + 1)} if wrap else set(range(ci - r, ci + r + 1))
        out[i, j] = ri - r <= rj <= ri + r and cj in cols
  return out


@pytest.mark.parametrize("kind", dalle_masks.KINDS)
@pytest.mark.parametrize(
  "text_length,grid,kernel,wrap",
  [(6, (4, 4), 3, True), (3, (3, 5), 3, False), (5, (4, 7), 5, True), (2, (6, 3), 11, True)],
)
def test_mask_equals_explicit_construction(kind, text_length, grid, kernel, wrap):
  layout = dalle_masks.Layout(text_length, grid)
  got = np.asarray(dalle_masks.mask(kind, layout, conv_kernel=kernel, wrap=wrap))
  np.testing.assert_array_equal(got, reference(kind, text_length, grid, kernel, wrap))


def test_query_rows_are_rows_of_the_full_mask():
  layout = dalle_masks.Layout(4, (3, 4))
  full = np.asarray(dalle_masks.mask("conv", layout, conv_kernel=3))
  rows = np.array([0, 5, 9, 15])
  part = np.asarray(dalle_masks.mask("conv", layout, rows=rows, conv_kernel=3))
  np.testing.assert_array_equal(part, full[rows])


def test_figure_11_row_example():
  # 6 text tokens, a 4x4 grid: image token 8 sees image tokens 4..8 (the previous w + 1) and all text.
  layout = dalle_masks.Layout(6, (4, 4))
  m = np.asarray(dalle_masks.mask("row", layout))
  q = 7 + 8  # BOS + 6 caption positions, then image token 8
  assert m[q, :7].all()
  np.testing.assert_array_equal(np.flatnonzero(m[q, 7:]), [4, 5, 6, 7, 8])
  col = np.asarray(dalle_masks.mask("column", layout))
  np.testing.assert_array_equal(np.flatnonzero(col[q, 7:]), [0, 4, 8])


def test_layer_cycle():
  # Layer i (1-based) < n: column when (i - 2) % 4 == 0, else row; the last layer convolutional.
  assert dalle_masks.layer_kinds(8, "sparse") == (
    "row", "column", "row", "row", "row", "column", "row", "conv"
  )  # fmt: skip
  kinds = dalle_masks.layer_kinds(64, "sparse")
  assert kinds[-1] == "conv" and kinds.count("column") == 16
  assert dalle_masks.layer_kinds(3, "dense") == ("dense",) * 3
