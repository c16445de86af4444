"""GAN generators and discriminators: DCGAN (Radford et al. 2015) and small MLPs; linen modules only.

Interfaces (the GAN task relies on nothing else):
- a generator maps ``z`` float [B, Z] (and labels int32 [B] when ``num_classes > 0``) to images
  float32 [B, *image_shape] in [-1, 1] (``tanh``), or to unbounded points for the MLP toy;
- a discriminator maps an input [B, ...] (and labels) to logits float32 [B].
Both take ``train``: BatchNorm uses batch statistics and spectral norm runs its power iteration
with ``update_stats=True`` only when it is set. Class conditioning: the generator concatenates a
one-hot label to z (Mirza & Osindero 2014); the discriminator adds the projection term
``<embed(y), phi(x)>`` to its logit (Miyato & Koyama 2018, eq. 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.registry import MODELS

DCGAN_INIT = nn.initializers.normal(0.02)  # Radford et al. 2015, sec. 4: weights ~ N(0, 0.02)


def _bn_scale_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """BatchNorm scale ~ N(1, 0.02), as in the DCGAN reference code."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def num_stages(h: int, w: int) -> int:
  """Stride-2 stages between the image and the smallest map (>= 4 pixels a side): 28 -> 2 (7x7),
  32 -> 3 (4x4), 64 -> 4, 8 -> 1."""
  n = 0
  while h % 2 == 0 and w % 2 == 0 and h // 2 >= 4 and w // 2 >= 4:
    h, w, n = h // 2, w // 2, n + 1
  if n == 0:
    raise ValueError(f"image {h}x{w} is too small for a DCGAN (needs an even side >= 8)")
  return n


def _sn(layer: nn.Module, x: jax.Array, spectral_norm: bool, train: bool) -> jax.Array:
  """`layer(x)`, spectrally normalised (Miyato et al. 2018) when asked: one power iteration per
  call, the vector u kept in the ``batch_stats`` collection and updated only when `train`."""
  if spectral_norm:
    return nn.SpectralNorm(layer, n_steps=1)(x, update_stats=train)
  return layer(x)


def projection_term(
  phi: jax.Array, y: jax.Array | None, num_classes: int, spectral_norm: bool, train: bool
) -> jax.Array:
  """The projection discriminator's class term <embed(y), phi(x)> [B] (Miyato & Koyama eq. 3)."""
  if not num_classes:
    return jnp.zeros(phi.shape[:1], jnp.float32)
  if y is None:
    raise ValueError("a class-conditional discriminator needs labels")
  embed = nn.Embed(num_classes, phi.shape[-1], embedding_init=DCGAN_INIT, name="projection")
  return jnp.sum(_sn(embed, y, spectral_norm, train) * phi, axis=-1).astype(jnp.float32)


def with_labels(z: jax.Array, y: jax.Array | None, num_classes: int) -> jax.Array:
  if not num_classes:
    return z
  if y is None:
    raise ValueError("a class-conditional generator needs labels")
  return jnp.concatenate([z, jax.nn.one_hot(y, num_classes, dtype=z.dtype)], axis=-1)


@MODELS.register("dcgan_generator")
class DCGANGenerator(nn.Module):
  """z -> (h0 x w0 x F*2^(n-1)) -> stride-2 up-convolutions, BN + ReLU -> tanh image.

  For 32x32x3 and features=128: 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x3 (the paper's 64x64
  generator less one stage); for 28x28x1: 7x7x2F -> 14x14xF -> 28x28x1. No BN on the output layer.
  """

  image_shape: tuple[int, int, int]
  features: int = 64  # channels of the highest-resolution hidden stage; doubled per stage down
  num_classes: int = 0
  upsample: str = "transpose"  # "transpose" (the paper) | "resize" (nearest x2 then a 3x3 conv)
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    h, w, c = self.image_shape
    n = num_stages(h, w)
    h0, w0 = h >> n, w >> n
    bn = lambda: nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=_bn_scale_init, dtype=dt
    )
    x = with_labels(z, y, self.num_classes).astype(dt)
    # The first layer is a matmul of z (DCGAN: "could be called fully connected"), no bias before BN.
    top = self.features * 2 ** (n - 1)
    x = nn.Dense(h0 * w0 * top, use_bias=False, kernel_init=DCGAN_INIT, dtype=dt)(x)
    x = nn.relu(bn()(x.reshape(z.shape[0], h0, w0, top)))  # [B, h0, w0, top]
    for i in range(n):
      last = i == n - 1
      features = c if last else self.features * 2 ** (n - 2 - i)
      x = self._up(x, features, bias=last, dt=dt)
      x = x if last else nn.relu(bn()(x))
    return jnp.tanh(x.astype(jnp.float32))  # [B, h, w, c]

  def _up(self, x: jax.Array, features: int, bias: bool, dt: jnp.dtype) -> jax.Array:
    if self.upsample == "transpose":
      return nn.ConvTranspose(
        features, (4, 4), (2, 2), "SAME", use_bias=bias, kernel_init=DCGAN_INIT, dtype=dt
      )(x)
    if self.upsample != "resize":
      raise ValueError(f"upsample must be 'transpose' or 'resize', not {self.upsample!r}")
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
    return nn.Conv(
      features, (3, 3), padding="SAME", use_bias=bias, kernel_init=DCGAN_INIT, dtype=dt
    )(x)


@MODELS.register("dcgan_discriminator")
class DCGANDiscriminator(nn.Module):
  """Stride-2 4x4 convolutions, LeakyReLU(0.2), a normalisation on every layer but the first, and
  a linear logit of the flattened features (plus the projection term when conditional)."""

  features: int = 64  # channels of the first layer; doubled per stage
  num_classes: int = 0
  norm: str = "batch"  # "batch" (DCGAN) | "layer" (WGAN-GP critics) | "none" (with spectral norm)
  spectral_norm: bool = False
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    n = num_stages(x.shape[1], x.shape[2])
    h = x.astype(dt)
    for i in range(n):
      conv = nn.Conv(
        self.features * 2**i, (4, 4), (2, 2), "SAME", use_bias=i == 0 or self.norm == "none",
        kernel_init=DCGAN_INIT, dtype=dt,
      )  # fmt: skip
      h = _sn(conv, h, self.spectral_norm, train)
      if i > 0:
        h = self._normalise(h, train, dt)
      h = nn.leaky_relu(h, 0.2)
    phi = h.reshape(h.shape[0], -1)  # [B, h0 * w0 * features * 2^(n-1)]
    out = _sn(nn.Dense(1, kernel_init=DCGAN_INIT, dtype=dt), phi, self.spectral_norm, train)
    return out[:, 0].astype(jnp.float32) + projection_term(
      phi, y, self.num_classes, self.spectral_norm, train
    )

  def _normalise(self, h: jax.Array, train: bool, dt: jnp.dtype) -> jax.Array:
    if self.norm == "batch":
      return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=_bn_scale_init,
        dtype=dt,
      )(h)  # fmt: skip
    if self.norm == "layer":
      return nn.LayerNorm(reduction_axes=(1, 2, 3), dtype=dt)(h)
    if self.norm == "none":
      return h
    raise ValueError(f"norm must be 'batch', 'layer' or 'none', not {self.norm!r}")


@MODELS.register("mlp_generator")
class MlpGenerator(nn.Module):
  """ReLU MLP from z to an output of `image_shape` (points for 2-D toys, or small images)."""

  image_shape: tuple[int, ...]
  hidden: Sequence[int] = (128, 128, 128)
  num_classes: int = 0
  output: str = "tanh"  # "tanh" (images in [-1, 1]) | "linear" (unbounded points)
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    x = with_labels(z, y, self.num_classes).astype(dt)
    for f in self.hidden:
      x = nn.relu(nn.Dense(f, dtype=dt)(x))
    x = nn.Dense(math.prod(self.image_shape), dtype=dt)(x).astype(jnp.float32)
    x = jnp.tanh(x) if self.output == "tanh" else x
    return x.reshape(z.shape[0], *self.image_shape)


@MODELS.register("mlp_discriminator")
class MlpDiscriminator(nn.Module):
  """LeakyReLU(0.2) MLP on the flattened input -> logit, optionally spectrally normalised."""

  hidden: Sequence[int] = (128, 128, 128)
  num_classes: int = 0
  spectral_norm: bool = False
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    h = x.reshape(x.shape[0], -1).astype(dt)
    for f in self.hidden:
      h = nn.leaky_relu(_sn(nn.Dense(f, dtype=dt), h, self.spectral_norm, train), 0.2)
    out = _sn(nn.Dense(1, dtype=dt), h, self.spectral_norm, train)[:, 0].astype(jnp.float32)
    return out + projection_term(h, y, self.num_classes, self.spectral_norm, train)
