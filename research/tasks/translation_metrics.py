"""Per-image fidelity of a translation to its target: L1, PSNR and SSIM; jittable, float32 out.

All take float images in [0, 1] of shape [B, H, W, C] and return one value per image [B]:

- ``l1``: mean absolute error over pixels and channels (the pix2pix objective's term, here on the
  [0, 1] scale; the training loss uses [-1, 1], twice this).
- ``psnr``: 10 log10(1 / MSE) in dB with a peak of 1 (as ``tf.image.psnr(max_val=1)``); a perfect
  match gives +inf, so the mean over a split reports the finite clip at 100 dB.
- ``ssim``: the structural similarity of Wang et al. 2004 (eq. 13) with their constants K1 = 0.01,
  K2 = 0.03 and an 11x11 Gaussian window of sigma 1.5 (shrunk to the image for smaller sides),
  computed on the 'valid' part of the image and averaged over positions and channels, exactly as
  ``tf.image.ssim`` does (the test compares to it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PSNR_CAP = 100.0  # dB: a perfect reconstruction's PSNR (+inf) is reported as this


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  return jnp.minimum(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-20)), PSNR_CAP)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  """The normalised 1-D Gaussian of `size` taps (the 2-D window is its outer product)."""
  r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-0.5 * (r / sigma) ** 2)
  return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array, g: np.ndarray) -> jax.Array:
  """Separable 'valid' Gaussian filter of [B, H, W, C], per channel -> [B, H-k+1, W-k+1, C]."""
  k = g.shape[0]
  c = x.shape[-1]
  dn = ("NHWC", "HWIO", "NHWC")
  rows = jnp.tile(jnp.asarray(g).reshape(k, 1, 1, 1), (1, 1, 1, c))
  cols = jnp.tile(jnp.asarray(g).reshape(1, k, 1, 1), (1, 1, 1, c))
  y = jax.lax.conv_general_dilated(
    x, rows, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c
  )
  return jax.lax.conv_general_dilated(
    y, cols, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c
  )


def ssim(
  x: jax.Array,
  y: jax.Array,
  *,
  window: int = 11,
  sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
) -> jax.Array:
  size = min(window, x.shape[1], x.shape[2])
  g = _gaussian_window(size, sigma)
  c1, c2 = k1**2, k2**2  # (K L)^2 with the dynamic range L = 1
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  mu_x, mu_y = _filter(x, g), _filter(y, g)
  var_x = _filter(x * x, g) - mu_x**2
  var_y = _filter(y * y, g) - mu_y**2
  cov = _filter(x * y, g) - mu_x * mu_y
  luminance = (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
  structure = (2.0 * cov + c2) / (var_x + var_y + c2)
  return jnp.mean(luminance * structure, axis=(1, 2, 3))
