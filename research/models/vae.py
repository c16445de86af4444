"""VAE encoders and decoders (Kingma & Welling 2013): linen modules with typed fields only.

Both networks map an image [B, H, W, C] in [0, 1] to a diagonal-Gaussian posterior (mean, logvar)
[B, Z], and a latent [B, Z] to per-pixel likelihood parameters [B, H, W, C * out_params]
(``out_params`` = 1 for Bernoulli logits, 2 for a discretized logistic's mean and log-scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import UserError
from research.registry import MODELS


def _dtype(name: str) -> jnp.dtype:
  if name not in ("float32", "bfloat16", "float16"):
    raise UserError(f"unknown dtype {name!r} in config.model.dtype; use float32 or bfloat16")
  return jnp.dtype(name)


class _VAE(nn.Module):
  """Shared interface: `encode`, `decode`, and `__call__` (encode + decode of one latent)."""

  def __call__(self, x: jax.Array, z_noise: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean, logvar = self.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * z_noise  # reparameterisation, K&W eq. 10
    return self.decode(z), mean, logvar


@MODELS.register("conv_vae")
class ConvVAE(_VAE):
  """Strided-conv encoder, resize-conv decoder, for any H, W divisible by 2**len(channels)."""

  image_shape: tuple[int, int, int]  # H, W, C (set by the task from the dataset)
  out_params: int = 1
  latent_dim: int = 16
  channels: Sequence[int] = (32, 64)
  hidden: int = 256
  dtype: str = "float32"  # compute dtype; parameters stay float32

  def setup(self):
    dt = _dtype(self.dtype)
    h, w, _ = self.image_shape
    f = 2 ** len(self.channels)
    if h % f or w % f:
      raise ValueError(f"image {h}x{w} is not divisible by 2**len(channels)={f}")
    self._low = (h // f, w // f, self.channels[-1])
    self.enc_convs = [
      nn.Conv(c, (4, 4), strides=(2, 2), padding="SAME", dtype=dt) for c in self.channels
    ]
    self.enc_hidden = nn.Dense(self.hidden, dtype=dt)
    self.enc_out = nn.Dense(2 * self.latent_dim, dtype=jnp.float32)
    self.dec_hidden = nn.Dense(self.hidden, dtype=dt)
    self.dec_low = nn.Dense(math.prod(self._low), dtype=dt)
    # Resize-convolutions (nearest x2, then 3x3) rather than transposed convolutions: no
    # checkerboard artefacts (Odena et al. 2016), and XLA:CPU runs them ~10x faster.
    up_channels = (*reversed(self.channels[:-1]), self.channels[0])
    self.dec_convs = [nn.Conv(c, (3, 3), padding="SAME", dtype=dt) for c in up_channels]
    self.dec_out = nn.Conv(self.image_shape[2] * self.out_params, (3, 3), padding="SAME")

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x
    for conv in self.enc_convs:
      h = nn.gelu(conv(h))
    h = nn.gelu(self.enc_hidden(h.reshape(h.shape[0], -1)))
    mean, logvar = jnp.split(self.enc_out(h).astype(jnp.float32), 2, axis=-1)
    return mean, logvar

  def decode(self, z: jax.Array) -> jax.Array:
    h = nn.gelu(self.dec_hidden(z))
    h = nn.gelu(self.dec_low(h)).reshape(z.shape[0], *self._low)
    for conv in self.dec_convs:
      b, height, width, c = h.shape
      h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
      h = nn.gelu(conv(h))
    return self.dec_out(h).astype(jnp.float32)


@MODELS.register("mlp_vae")
class MlpVAE(_VAE):
  """The paper's MNIST model: one tanh hidden layer in each network (K&W 2013, section 5)."""

  image_shape: tuple[int, int, int]
  out_params: int = 1
  latent_dim: int = 20
  hidden: int = 500
  dtype: str = "float32"

  def setup(self):
    dt = _dtype(self.dtype)
    self.enc_hidden = nn.Dense(self.hidden, dtype=dt)
    self.enc_out = nn.Dense(2 * self.latent_dim, dtype=jnp.float32)
    self.dec_hidden = nn.Dense(self.hidden, dtype=dt)
    self.dec_out = nn.Dense(math.prod(self.image_shape) * self.out_params, dtype=jnp.float32)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = jnp.tanh(self.enc_hidden(x.reshape(x.shape[0], -1)))
    mean, logvar = jnp.split(self.enc_out(h).astype(jnp.float32), 2, axis=-1)
    return mean, logvar

  def decode(self, z: jax.Array) -> jax.Array:
    height, width, c = self.image_shape
    out = self.dec_out(jnp.tanh(self.dec_hidden(z)))
    return out.reshape(z.shape[0], height, width, c * self.out_params).astype(jnp.float32)
