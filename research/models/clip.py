"""A small CLIP (Radford et al. 2021) for reranking DALL-E samples: image and text towers.

`ClipModel(images, text)` returns L2-normalised embeddings of both towers and the logit scale:

* image tower (`ConvImageEncoder`): strided 3x3 convs (GroupNorm, GELU), then the feature map is
  *flattened* (not pooled) into a dense layer, so the embedding knows where a digit is (left/right
  cells of the captioned-digits canvases);
* text tower (`TextTransformer`): token + learned position embeddings, pre-LN transformer blocks with
  a causal mask as in CLIP (section 2.4), attention through `jax.nn.dot_product_attention`. CLIP
  takes the feature at the end-of-text token; with DALL-E's per-position padding every caption ends
  at position L-1, which (causally) sees the whole caption, so that position is the text feature;
* linear projections without bias to `embed_dim` (CLIP's W_i, W_t), L2-normalised;
* the temperature as a learned log-scale, initialised to log(1 / 0.07) and clipped so the scale
  stays at most 100 (CLIP section 2.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.registry import MODELS

MAX_LOGIT_SCALE = 100.0  # CLIP clips exp(t) at 100
INIT_TEMPERATURE = 0.07


class ConvImageEncoder(nn.Module):
  """uint8-scaled images in [-1, 1] [B, H, W, C] -> features [B, width]."""

  channels: Sequence[int] = (32, 64, 128)
  width: int = 256
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for ch in self.channels:  # each halves H and W
      x = nn.Conv(ch, (3, 3), strides=(2, 2), dtype=self.dtype)(x)
      x = nn.GroupNorm(num_groups=min(8, ch), dtype=self.dtype)(x)
      x = nn.gelu(x)
    x = x.reshape(x.shape[0], -1)  # [B, h * w * ch]: keeps positions
    return nn.gelu(nn.Dense(self.width, dtype=self.dtype)(x))  # [B, width]


class Block(nn.Module):
  """Pre-LN transformer block: x + attn(LN(x)), x + MLP(LN(x)); causal attention."""

  width: int
  heads: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, length, d = x.shape
    h = nn.LayerNorm(dtype=self.dtype)(x)
    qkv = nn.DenseGeneral((3, self.heads, d // self.heads), dtype=self.dtype)(h)  # [B, L, 3, H, K]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, K] each
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # [B, L, H, K]
    x = x + nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype)(a)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.Dense(4 * d, dtype=self.dtype)(h)
    return x + nn.Dense(d, dtype=self.dtype)(nn.gelu(h))


class TextTransformer(nn.Module):
  """Token ids int32 [B, L] -> the last position's features [B, width]."""

  vocab_size: int
  text_length: int
  width: int = 128
  depth: int = 2
  heads: int = 4
  dtype: str = "float32"

  @nn.compact
  def __call__(self, text: jax.Array) -> jax.Array:
    init = nn.initializers.normal(0.02)
    x = nn.Embed(self.vocab_size, self.width, embedding_init=init)(text)  # [B, L, D]
    pos = self.param("pos_embedding", init, (self.text_length, self.width))
    x = (x + pos[: text.shape[1]]).astype(self.dtype)
    for _ in range(self.depth):
      x = Block(self.width, self.heads, self.dtype)(x)
    return nn.LayerNorm(dtype=self.dtype)(x[:, -1])  # [B, D]: the end of the caption


@MODELS.register("clip")
class ClipModel(nn.Module):
  """Both towers, projections and the logit scale."""

  vocab_size: int
  text_length: int
  embed_dim: int = 128
  image_channels: Sequence[int] = (32, 64, 128)
  image_width: int = 256
  text_width: int = 128
  text_depth: int = 2
  text_heads: int = 4
  dtype: str = "float32"

  def setup(self):
    self.image_tower = ConvImageEncoder(tuple(self.image_channels), self.image_width, self.dtype)
    self.text_tower = TextTransformer(
      self.vocab_size,
      self.text_length,
      self.text_width,
      self.text_depth,
      self.text_heads,
      self.dtype,
    )
    self.image_proj = nn.Dense(self.embed_dim, use_bias=False)
    self.text_proj = nn.Dense(self.embed_dim, use_bias=False)
    # CLIP section 2.5: t = log(1 / 0.07) learned, exp(t) clipped at 100.
    self.log_scale = self.param(
      "log_scale", nn.initializers.constant(math.log(1 / INIT_TEMPERATURE)), ()
    )

  def encode_image(self, x: jax.Array) -> jax.Array:
    """Images in [-1, 1] [B, H, W, C] -> unit vectors f32 [B, E]."""
    e = self.image_proj(self.image_tower(x)).astype(jnp.float32)
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True).clip(1e-6)

  def encode_text(self, text: jax.Array) -> jax.Array:
    """Token ids [B, L] -> unit vectors f32 [B, E]."""
    e = self.text_proj(self.text_tower(text)).astype(jnp.float32)
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True).clip(1e-6)

  def scale(self) -> jax.Array:
    """exp(t) clipped at 100 (a scalar)."""
    return jnp.minimum(jnp.exp(self.log_scale), MAX_LOGIT_SCALE)

  def __call__(self, x: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return self.encode_image(x), self.encode_text(text), self.scale()
