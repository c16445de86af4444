"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random policy is applied to every image D sees, real and generated, in both players'
updates (Zhao et al. sec. 3, eq. 3-4), with independent draws per image. Every transform is
differentiable in the image, so the generator's gradient flows back through the augmentation.
Images are float [B, H, W, C] in [-1, 1]; the transforms and their constants follow the authors'
reference implementation:

- ``color``: brightness + U(-0.5, 0.5); saturation (x - mean_c) * U(0, 2) + mean_c; contrast
  (x - mean) * U(0.5, 1.5) + mean.
- ``translation``: an integer shift of up to 1/8 of the side in each direction, zero-filled.
- ``cutout``: a zeroed square of half the side, centred anywhere in the image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
  """``"translation,cutout,color"`` -> a tuple of known names (ValueError otherwise)."""
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  unknown = [p for p in names if p not in POLICIES]
  if unknown:
    raise ValueError(f"unknown DiffAugment policy {unknown}; known: {', '.join(POLICIES)}")
  return names


def _uniform(rng: jax.Array, x: jax.Array, low: float, high: float) -> jax.Array:
  """One draw per image, [B, 1, 1, 1]."""
  return jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype, low, high)


def color(x: jax.Array, rng: jax.Array) -> jax.Array:
  k1, k2, k3 = jax.random.split(rng, 3)
  x = x + _uniform(k1, x, -0.5, 0.5)  # brightness
  mean_c = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - mean_c) * _uniform(k2, x, 0.0, 2.0) + mean_c  # saturation (identity for 1 channel)
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * _uniform(k3, x, 0.5, 1.5) + mean  # contrast


def translation(x: jax.Array, rng: jax.Array, ratio: float = 0.125) -> jax.Array:
  b, h, w, _ = x.shape
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  if sh == 0 and sw == 0:
    return x
  ky, kx = jax.random.split(rng)
  dy = jax.random.randint(ky, (b,), -sh, sh + 1)
  dx = jax.random.randint(kx, (b,), -sw, sw + 1)
  padded = jnp.pad(x, ((0, 0), (sh, sh), (sw, sw), (0, 0)))  # zeros come in from the border

  def shift(img: jax.Array, oy: jax.Array, ox: jax.Array) -> jax.Array:
    # Output pixel (i, j) is input pixel (i + oy, j + ox), as in the reference implementation.
    return jax.lax.dynamic_slice(img, (sh + oy, sw + ox, 0), (h, w, img.shape[-1]))

  return jax.vmap(shift)(padded, dy, dx)


def cutout(x: jax.Array, rng: jax.Array, ratio: float = 0.5) -> jax.Array:
  b, h, w, _ = x.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  ky, kx = jax.random.split(rng)
  # Centres as in the reference: offset in [0, size + (1 - cut % 2)), box from offset - cut // 2.
  cy = jax.random.randint(ky, (b, 1, 1), 0, h + (1 - ch % 2))
  cx = jax.random.randint(kx, (b, 1, 1), 0, w + (1 - cw % 2))
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside_y = (rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch)
  inside_x = (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw)
  mask = 1.0 - (inside_y & inside_x).astype(x.dtype)  # [B, H, W]
  return x * mask[..., None]


_FNS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: jax.Array, rng: jax.Array, policy: tuple[str, ...]) -> jax.Array:
  """Applies `policy` in order to images [B, H, W, C]; the identity for an empty policy."""
  for i, name in enumerate(policy):
    x = _FNS[name](x, jax.random.fold_in(rng, i))
  return x
