"""Pixel conventions shared by the families: uint8 images in and out, grids of pictures; jittable.

Images enter tasks as uint8 [B, H, W, C] and leave `sample` as uint8 (the Task protocol). Networks
see either [-1, 1] (`to_signed`: diffusion, GANs, CLIP) or [0, 1] (`to_unit`: VAEs); the way back
rounds to the nearest level and clips.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_signed(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] (Ho et al. 2020, section 3.3)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def from_signed(x: jax.Array) -> jax.Array:
  """float [-1, 1] -> uint8, rounded and clipped."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def to_unit(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def from_unit(x: jax.Array) -> jax.Array:
  """float [0, 1] -> uint8, rounded and clipped."""
  return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)


def tile(rows: jax.Array, pad: int = 1) -> jax.Array:
  """uint8 [R, N, H, W, ch] -> one picture [R * (H + pad), N * (W + pad), ch]: row r holds the
  N images rows[r], each followed by `pad` white pixels to the right and below."""
  r, n, h, w, ch = rows.shape
  padded = jnp.pad(rows, ((0, 0), (0, 0), (0, pad), (0, pad), (0, 0)), constant_values=255)
  return padded.transpose(0, 2, 1, 3, 4).reshape(r * (h + pad), n * (w + pad), ch)
