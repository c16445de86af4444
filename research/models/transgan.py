"""A transformer GAN in the spirit of TransGAN (Jiang, Chang & Wang 2021): linen modules only.

Generator: z -> a (bottom_width^2)-token grid of width `dim` -> transformer blocks -> pixel shuffle
(each token's channels become a 2x2 block of tokens with a quarter of the channels, TransGAN
sec. 3.1: "memory-friendly" upsampling) -> blocks -> ... -> a 1x1 projection to pixels, tanh.
Discriminator: ViT (Dosovitskiy et al. 2021) on non-overlapping patches with a class token, whose
final feature gives the logit (plus the projection term when conditional).

Simplifications against the paper (documented in `experiments/transgan_cifar10.py`): full self-
attention at every stage (TransGAN uses grid self-attention at high resolution, not needed at
32x32), learned absolute position embeddings (not relative), pre-LayerNorm blocks, and a single-
scale discriminator (TransGAN v4's is multi-scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.gan import projection_term, with_labels
from research.registry import MODELS

XAVIER = nn.initializers.xavier_uniform()  # TransGAN's init_type xavier_uniform
POS_INIT = nn.initializers.truncated_normal(0.02)


class Block(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with GELU."""

  dim: int
  heads: int
  mlp_ratio: int = 4
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, N, dim]
    dt = jnp.dtype(self.dtype)
    h = nn.LayerNorm(dtype=dt)(x)
    x = x + nn.MultiHeadDotProductAttention(
      num_heads=self.heads, dtype=dt, kernel_init=XAVIER, deterministic=True
    )(h)
    h = nn.LayerNorm(dtype=dt)(x)
    h = nn.gelu(nn.Dense(self.dim * self.mlp_ratio, kernel_init=XAVIER, dtype=dt)(h))
    return x + nn.Dense(self.dim, kernel_init=XAVIER, dtype=dt)(h)


def pixel_shuffle(tokens: jax.Array, side: int) -> jax.Array:
  """[B, side*side, C] -> [B, (2 side)^2, C/4]: each token becomes a 2x2 block (depth-to-space)."""
  b, _, c = tokens.shape
  x = tokens.reshape(b, side, side, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 4 * side * side, c // 4)


@MODELS.register("transgan_generator")
class TransGANGenerator(nn.Module):
  """Stage i works at bottom_width * 2^i a side with dim / 4^i channels and depths[i] blocks."""

  image_shape: tuple[int, int, int]
  bottom_width: int = 8
  dim: int = 1024
  depths: Sequence[int] = (5, 4, 2)
  heads: int = 4
  mlp_ratio: int = 4
  latent_norm: bool = True  # TransGAN's --latent_norm: z rescaled to norm sqrt(Z)
  num_classes: int = 0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    h, w, c = self.image_shape
    side = self.bottom_width
    if h != w or side * 2 ** (len(self.depths) - 1) != h:
      raise ValueError(
        f"bottom_width {side} x 2^(len(depths) - 1) = {side * 2 ** (len(self.depths) - 1)} "
        f"must equal the (square) image side {h}x{w}"
      )
    if self.dim % 4 ** (len(self.depths) - 1):
      raise ValueError(f"dim {self.dim} must divide by 4 per pixel-shuffle stage")
    if self.latent_norm:
      z = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
    x = with_labels(z, y, self.num_classes).astype(dt)
    x = nn.Dense(side * side * self.dim, kernel_init=XAVIER, dtype=dt)(x)
    x = x.reshape(z.shape[0], side * side, self.dim)  # [B, N0, dim]
    dim = self.dim
    for i, depth in enumerate(self.depths):
      if i > 0:
        x, side, dim = pixel_shuffle(x, side), 2 * side, dim // 4  # [B, (2 side)^2, dim / 4]
      x = x + self.param(f"pos_embed_{i}", POS_INIT, (1, side * side, dim)).astype(dt)
      for _ in range(depth):
        x = Block(dim, self.heads, self.mlp_ratio, self.dtype)(x)
    x = x.reshape(z.shape[0], h, w, dim)
    x = nn.Conv(c, (1, 1), kernel_init=XAVIER, dtype=dt)(x)
    return jnp.tanh(x.astype(jnp.float32))  # [B, h, w, c]


@MODELS.register("vit_discriminator")
class ViTDiscriminator(nn.Module):
  """Patch embedding (a stride-p convolution), class token, transformer blocks, logit."""

  patch_size: int = 4
  dim: int = 384
  depth: int = 7
  heads: int = 4
  mlp_ratio: int = 4
  num_classes: int = 0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image {h}x{w} does not divide into {p}x{p} patches")
    t = nn.Conv(self.dim, (p, p), (p, p), "VALID", kernel_init=XAVIER, dtype=dt)(x.astype(dt))
    t = t.reshape(b, -1, self.dim)  # [B, N, dim]
    cls = jnp.broadcast_to(
      self.param("cls", POS_INIT, (1, 1, self.dim)).astype(dt), (b, 1, self.dim)
    )
    t = jnp.concatenate([cls, t], axis=1)
    t = t + self.param("pos_embed", POS_INIT, (1, t.shape[1], self.dim)).astype(dt)
    for _ in range(self.depth):
      t = Block(self.dim, self.heads, self.mlp_ratio, self.dtype)(t)
    phi = nn.LayerNorm(dtype=dt)(t[:, 0])  # [B, dim]
    out = nn.Dense(1, kernel_init=XAVIER, dtype=dt)(phi)[:, 0].astype(jnp.float32)
    return out + projection_term(phi, y, self.num_classes, False, train)
