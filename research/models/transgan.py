"""A transformer GAN after TransGAN (Jiang, Chang & Wang 2021): linen modules only.

Reference version: the final NeurIPS 2021 paper ("TransGAN: Two Pure Transformers Can Make One
Strong GAN, and That Can Scale Up", CIFAR-10 IS 9.02 / FID 9.26) and its code
(VITA-Group/TransGAN ``exps/cifar_train.py`` with ``models_search/ViT_custom_scale2_rp_noise.py``
for G and ``ViT_custom_scale2.py`` for D). The earlier arXiv versions (IS 8.64 / FID 11.89) used
``ViT_custom`` for both: latent 1024 with ``--latent_norm``, a single-scale D of depth 7 on 4x4
patches, no relative positions, one output projection. Both layouts are options here;
`experiments/transgan_cifar10.py` uses the final one.

Generator: z -> a (bottom_width^2)-token grid of width `dim` -> transformer blocks -> pixel shuffle
(each token's channels become a 2x2 block of tokens with a quarter of the channels, sec. 3.1:
"memory-friendly" upsampling) -> blocks -> ... With ``rgb_skips`` (final version) every stage has
its own 1x1 projection to pixels, upsampled (nearest) to the image size and summed; otherwise only
the last stage is projected. Discriminator: ViT (Dosovitskiy et al. 2021) on non-overlapping
patches with a class token; with ``multi_scale`` (final version) a second, coarser patch embedding
(2p x 2p patches, a quarter of the width) joins the tokens after the first ``depth`` blocks and a 2x2
average pool, ``depth`` more blocks follow, then one block with the class token.

Attention: ``relative_position`` adds a learned bias per head and relative offset inside the token
grid (Swin-style table, as the final code); ``grid`` > 0 restricts attention to non-overlapping
grid x grid cells at stages whose side is larger (the paper's grid self-attention, sec. 3.2, used
for its 64x64 and larger models; at 32x32 the final code attends over the whole grid, as ``grid=0``
does).

Departures from the final code, kept on purpose or for cost:
- tanh on the generator's output (the final code returns the unbounded sum of its projections;
  samples are clipped to [-1, 1] in either case);
- no noise injection in the generator's attention (``noise_strength``, initialised to 0 there);
- pre-LayerNorm blocks with GELU in both networks and xavier-uniform init everywhere (the code
  uses truncated-normal 0.02 for D's linear layers);
- ``latent_norm`` (rescale z to norm sqrt(Z)) belongs to the earlier version; the final forward
  pass ignores it;
- DiffAugment and the EMA schedule differ (see `experiments/transgan_cifar10.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models.gan import projection_term, with_labels
from research.registry import MODELS

XAVIER = nn.initializers.xavier_uniform()  # TransGAN's init_type xavier_uniform
POS_INIT = nn.initializers.truncated_normal(0.02)


def relative_position_index(window: int) -> np.ndarray:
  """int [w*w, w*w]: index into a ((2w-1)^2)-row table of token i's offset from token j (Swin)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, w*w, w*w], each in [0, 2w-2]
  return rel[0] * (2 * window - 1) + rel[1]


def grid_partition(tokens: jax.Array, side: int, cell: int) -> jax.Array:
  """[B, side*side, C] (row-major) -> [B * (side/cell)^2, cell*cell, C], one row per grid cell."""
  b, _, c = tokens.shape
  g = side // cell
  x = tokens.reshape(b, g, cell, g, cell, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b * g * g, cell * cell, c)


def grid_merge(cells: jax.Array, side: int, cell: int) -> jax.Array:
  """The inverse of `grid_partition`: [B * (side/cell)^2, cell*cell, C] -> [B, side*side, C]."""
  g = side // cell
  c = cells.shape[-1]
  x = cells.reshape(-1, g, g, cell, cell, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, side * side, c)


class Attention(nn.Module):
  """Multi-head self-attention over tokens that may form a side x side grid (`side` > 0)."""

  dim: int
  heads: int
  relative_position: bool = False
  grid: int = 0  # > 0: attend within grid x grid cells when the token grid is larger
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, side: int = 0) -> jax.Array:  # [B, N, dim] -> [B, N, dim]
    dt = jnp.dtype(self.dtype)
    if side and x.shape[1] != side * side:
      raise ValueError(f"{x.shape[1]} tokens are not a {side}x{side} grid")
    window = side
    if self.grid and side > self.grid:
      if side % self.grid:
        raise ValueError(f"grid {self.grid} does not divide the {side}x{side} token grid")
      x, window = grid_partition(x, side, self.grid), self.grid  # [B', g*g, dim]
    b, n, _ = x.shape
    dh = self.dim // self.heads
    qkv = nn.Dense(3 * self.dim, use_bias=False, kernel_init=XAVIER, dtype=dt, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3 * self.heads, dh), 3, axis=2)  # each [B', n, H, dh]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * dh**-0.5  # [B', H, n, n]
    if self.relative_position and window:
      table = self.param(
        "relative_position_bias", POS_INIT, ((2 * window - 1) ** 2, self.heads), jnp.float32
      )
      bias = table[relative_position_index(window)]  # [n, n, H]
      logits = logits + bias.transpose(2, 0, 1)[None]
    weights = jax.nn.softmax(logits, axis=-1).astype(dt)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, self.dim)
    out = nn.Dense(self.dim, kernel_init=XAVIER, dtype=dt, name="proj")(out)
    if window != side:
      out = grid_merge(out, side, window)
    return out


class Block(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with GELU."""

  dim: int
  heads: int
  mlp_ratio: int = 4
  relative_position: bool = False
  grid: int = 0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, side: int = 0) -> jax.Array:  # [B, N, dim]
    dt = jnp.dtype(self.dtype)
    h = nn.LayerNorm(dtype=dt)(x)
    x = x + Attention(self.dim, self.heads, self.relative_position, self.grid, self.dtype)(h, side)
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
  latent_norm: bool = True  # the earlier version's --latent_norm: z rescaled to norm sqrt(Z)
  rgb_skips: bool = False  # final version: every stage projected to pixels and summed
  relative_position: bool = False  # final version: learned relative position bias
  grid: int = 0  # grid self-attention cell side at larger stages (0: full attention)
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
    out = jnp.zeros((z.shape[0], h, w, c), jnp.float32)
    for i, depth in enumerate(self.depths):
      if i > 0:
        x, side, dim = pixel_shuffle(x, side), 2 * side, dim // 4  # [B, (2 side)^2, dim / 4]
      x = x + self.param(f"pos_embed_{i}", POS_INIT, (1, side * side, dim)).astype(dt)
      for _ in range(depth):
        x = Block(dim, self.heads, self.mlp_ratio, self.relative_position, self.grid, self.dtype)(
          x, side
        )
      if self.rgb_skips or i == len(self.depths) - 1:
        rgb = nn.Conv(c, (1, 1), kernel_init=XAVIER, dtype=dt)(x.reshape(-1, side, side, dim))
        up = h // side  # nearest-neighbour upsampling to the image size (F.interpolate's default)
        out = out + jnp.repeat(jnp.repeat(rgb.astype(jnp.float32), up, axis=1), up, axis=2)
    return jnp.tanh(out)  # [B, h, w, c]


@MODELS.register("vit_discriminator")
class ViTDiscriminator(nn.Module):
  """Patch embedding (a stride-p convolution), class token, transformer blocks, logit.

  ``multi_scale`` (final TransGAN): p x p patches at 3/4 of the width through `depth` blocks, a 2x2
  average pool, concatenated with 2p x 2p patches at 1/4 of the width, `depth` more blocks, then
  one block with the class token (2 depth + 1 blocks in all).
  """

  patch_size: int = 4
  dim: int = 384
  depth: int = 7
  heads: int = 4
  mlp_ratio: int = 4
  multi_scale: bool = False
  relative_position: bool = False
  num_classes: int = 0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    b, h, w, _ = x.shape
    p = self.patch_size
    step = 2 * p if self.multi_scale else p
    if h != w or h % step:
      raise ValueError(f"image {h}x{w} is not square or does not divide into {step}x{step} patches")
    if self.relative_position and not self.multi_scale:
      raise ValueError(
        "relative_position needs multi_scale (single-scale blocks carry the class token)"
      )
    x = x.astype(dt)
    block = lambda d: Block(d, self.heads, self.mlp_ratio, self.relative_position, 0, self.dtype)
    if self.multi_scale:
      wide, side = self.dim // 4 * 3, h // p
      t = nn.Conv(wide, (p, p), (p, p), "VALID", kernel_init=XAVIER, dtype=dt)(x)
      t = t.reshape(b, side * side, wide)  # [B, (h/p)^2, 3 dim / 4]
      t = t + self.param("pos_embed_1", POS_INIT, (1, side * side, wide)).astype(dt)
      for _ in range(self.depth):
        t = block(wide)(t, side)
      t = nn.avg_pool(t.reshape(b, side, side, wide), (2, 2), (2, 2))  # [B, side/2, side/2, .]
      side //= 2
      coarse = nn.Conv(
        self.dim - wide, (2 * p, 2 * p), (2 * p, 2 * p), "VALID", kernel_init=XAVIER, dtype=dt
      )(x)  # [B, side, side, dim / 4]
      t = jnp.concatenate([t, coarse], axis=-1).reshape(b, side * side, self.dim)
      t = t + self.param("pos_embed_2", POS_INIT, (1, side * side, self.dim)).astype(dt)
      for _ in range(self.depth):
        t = block(self.dim)(t, side)
      last = 1  # one block with the class token, without relative positions
    else:
      side = h // p
      t = nn.Conv(self.dim, (p, p), (p, p), "VALID", kernel_init=XAVIER, dtype=dt)(x)
      t = t.reshape(b, side * side, self.dim)  # [B, N, dim]
      last = self.depth
    cls = jnp.broadcast_to(
      self.param("cls", POS_INIT, (1, 1, self.dim)).astype(dt), (b, 1, self.dim)
    )
    t = jnp.concatenate([cls, t], axis=1)  # [B, 1 + N, dim]
    if not self.multi_scale:
      t = t + self.param("pos_embed", POS_INIT, (1, t.shape[1], self.dim)).astype(dt)
    for _ in range(last):
      t = Block(self.dim, self.heads, self.mlp_ratio, False, 0, self.dtype)(t)
    phi = nn.LayerNorm(dtype=dt)(t[:, 0])  # [B, dim]
    out = nn.Dense(1, kernel_init=XAVIER, dtype=dt)(phi)[:, 0].astype(jnp.float32)
    return out + projection_term(phi, y, self.num_classes, False, train)
