"""Attention masks of DALL-E's sparse transformer (Ramesh et al. 2021, section 2.2, appendix B.1).

The transformer reads one stream of input positions (teacher forcing, next-token prediction):

  position 0            BOS (predicts caption token 0)
  positions 1 .. L      caption tokens 0 .. L-1 (position L predicts image token 0)
  positions L+1 .. S-1  image tokens 0 .. N-2 in raster order (position L+1+k predicts token k+1)

so S = L + N input positions for L caption tokens and an h x w grid of N = h*w image tokens (1,280 for
the paper's 256 + 32x32). The first L+1 positions are "text", the rest "image".

Every mask is causal (a position sees itself and earlier ones). Text positions attend causally to
text; every image position attends to all text positions. Image-to-image attention follows the
layer's kind (the paper's figure 11, stated for image token indices k >= k' on a grid of width w):

- ``row``: the previous w + 1 tokens, k - k' <= w (the earliest one is the same column in the
  previous row);
- ``column``: the same column, (k - k') mod w == 0 (the paper transposes the image states; a mask
  gives the same attention);
- ``conv``: a causal convolutional neighbourhood, |row(k) - row(k')| <= r and column distance <= r
  for an (2r+1) x (2r+1) kernel (11 x 11 in the paper), columns measured around the wrap-around of the
  grid when ``wrap`` (as model_specs.md A5 states it) or clipped at the edges otherwise;
- ``dense``: all earlier image tokens (plain causal attention, the option the issue asks for).

Layer i of n (1-based) uses ``column`` when (i - 2) mod 4 == 0 and ``row`` otherwise ("row, column,
row, row, ..."); the last layer uses ``conv`` (appendix B.1).

Masks are built from iotas (`jnp`), so a jitted model carries no [S, S] constants.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KINDS = ("row", "column", "conv", "dense")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where text and image positions sit in the input stream."""

  text_length: int  # L caption tokens
  grid: tuple[int, int]  # (h, w) image tokens

  @property
  def num_image(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def num_text_positions(self) -> int:
    return self.text_length + 1  # BOS + caption

  @property
  def seq_len(self) -> int:
    return self.text_length + self.num_image


def layer_kinds(depth: int, attention: str) -> tuple[str, ...]:
  """The mask kind of each layer: the paper's cycle for ``sparse``, ``dense`` everywhere else."""
  if attention == "dense":
    return ("dense",) * depth
  if attention != "sparse":
    raise ValueError(f"attention={attention!r}; use 'sparse' or 'dense'")
  kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, depth)]  # appendix B.1
  return (*kinds, "conv")


def mask(
  kind: str,
  layout: Layout,
  rows: jax.Array | None = None,
  conv_kernel: int = 11,
  wrap: bool = True,
) -> jax.Array:
  """bool [Q, S]: query position `rows[q]` may attend to key position s. `rows` default: all S."""
  if kind not in KINDS:
    raise ValueError(f"unknown mask kind {kind!r}; use one of {KINDS}")
  s = layout.seq_len
  i = (jnp.arange(s) if rows is None else rows)[:, None]  # [Q, 1] query positions
  j = jnp.arange(s)[None, :]  # [1, S] key positions
  causal = j <= i
  t = layout.num_text_positions
  key_is_text = j < t  # every position sees all (earlier) text positions
  ki, kj = i - t, j - t  # image token indices (negative on text positions)
  _, w = layout.grid
  if kind == "dense":
    pattern = jnp.ones_like(causal)
  elif kind == "row":
    pattern = ki - kj <= w
  elif kind == "column":
    pattern = (ki - kj) % w == 0
  else:
    r = conv_kernel // 2
    dc = jnp.abs(ki % w - kj % w)
    if wrap:
      dc = jnp.minimum(dc, w - dc)
    pattern = (jnp.abs(ki // w - kj // w) <= r) & (dc <= r)
  image_pair = (i >= t) & (j >= t)
  return causal & (key_is_text | (image_pair & pattern))
