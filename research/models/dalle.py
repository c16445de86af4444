"""DALL-E's text-and-image transformer (Ramesh et al. 2021, section 2.2 and appendix B.1).

A decoder-only, pre-LayerNorm transformer over one stream: BOS, L caption tokens, then the image
tokens of the dVAE in raster order (`research.models.dalle_masks` has the layout and the masks).

- Caption tokens get a token embedding plus a learned embedding per text position; the caption's
  unused slots hold a learned padding token per position (ids ``text_vocab - L + i`` from the
  tokenizer), as in the paper. BOS is one more row of the caption embedding (id ``text_vocab``).
- Image tokens get a token embedding plus a row and a column embedding (appendix B.1).
- Attention goes through `jax.nn.dot_product_attention` with a boolean mask per layer (row, column,
  convolutional in the last layer; or dense causal), ``implementation=None`` so XLA picks a fused
  kernel where one exists. Dense causal layers without a cache pass ``is_causal`` instead of a mask.
- Two heads: caption logits at the L positions that predict caption tokens, image logits at the N
  positions that predict image tokens (the paper's single vocabulary restricted to the modality the
  position predicts).
- ``dtype`` is the compute dtype (bfloat16 with float32 parameters); logits are float32. ``remat``
  recomputes each block in the backward pass.

KV cache: `extend` runs T new positions starting at ``start`` against an explicit cache pytree
(one ``{"k", "v"}`` [B, S, heads, head_dim] pair per layer), returning the image logits of the last
new position and the updated cache. The sampler prefills the caption with one call and then runs
one image position at a time.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import dalle_masks
from research.registry import MODELS

Cache = list[dict[str, jax.Array]]  # per layer: "k", "v" [B, S, heads, head_dim]


def _dtype(name: str) -> Any:
  return jnp.dtype(name)


class Block(nn.Module):
  """Pre-LN block: x + attn(LN(x)), then x + MLP(LN(x))."""

  width: int
  num_heads: int
  mlp_ratio: int
  kind: str  # mask kind, `dalle_masks.KINDS`
  text_length: int
  grid: tuple[int, int]
  conv_kernel: int
  conv_wrap: bool
  out_init_std: float
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(
    self, x: jax.Array, cache: dict[str, jax.Array] | None = None, start: jax.Array | None = None
  ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """x [B, T, D] at positions start .. start+T-1 (0 .. S-1 without a cache)."""
    dt, pdt = _dtype(self.dtype), _dtype(self.param_dtype)
    head_dim = self.width // self.num_heads
    init = nn.initializers.normal(0.02)
    out_init = nn.initializers.normal(self.out_init_std)
    layout = dalle_masks.Layout(self.text_length, tuple(self.grid))
    b, t, _ = x.shape

    h = nn.LayerNorm(dtype=dt, param_dtype=pdt, name="ln_attn")(x)
    qkv = nn.DenseGeneral(
      (3, self.num_heads, head_dim), dtype=dt, param_dtype=pdt, kernel_init=init, name="qkv"
    )(h)  # [B, T, 3, heads, head_dim]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cache is None:
      if self.kind == "dense":
        attn = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=None)
      else:
        m = dalle_masks.mask(self.kind, layout, None, self.conv_kernel, self.conv_wrap)
        attn = jax.nn.dot_product_attention(q, k, v, mask=m[None, None], implementation=None)
    else:
      zero = jnp.zeros((), jnp.int32)
      idx = (zero, start.astype(jnp.int32), zero, zero)
      cache = {
        "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), idx),
        "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), idx),
      }
      rows = start + jnp.arange(t)  # [T] query positions
      # Causal masks never reach the cache's unwritten (later) positions.
      m = dalle_masks.mask(self.kind, layout, rows, self.conv_kernel, self.conv_wrap)  # [T, S]
      attn = jax.nn.dot_product_attention(
        q, cache["k"].astype(dt), cache["v"].astype(dt), mask=m[None, None], implementation=None
      )
    attn = attn.reshape(b, t, self.width)
    x = x + nn.Dense(self.width, dtype=dt, param_dtype=pdt, kernel_init=out_init, name="attn_out")(
      attn
    )

    h = nn.LayerNorm(dtype=dt, param_dtype=pdt, name="ln_mlp")(x)
    h = nn.Dense(self.mlp_ratio * self.width, dtype=dt, param_dtype=pdt, kernel_init=init)(h)
    h = nn.gelu(h)
    x = x + nn.Dense(self.width, dtype=dt, param_dtype=pdt, kernel_init=out_init, name="mlp_out")(h)
    return x, cache


@MODELS.register("dalle_transformer")
class DalleTransformer(nn.Module):
  text_vocab: int  # caption ids incl. the L per-position padding ids; BOS = text_vocab
  text_length: int  # L
  image_vocab: int  # dVAE codebook size K
  grid: tuple[int, int]  # (h, w) image tokens
  width: int = 512
  depth: int = 8
  num_heads: int = 8
  mlp_ratio: int = 4
  attention: str = "sparse"  # "sparse" (the paper's row/column/conv cycle) or "dense" causal
  conv_kernel: int = 11
  conv_wrap: bool = True
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False

  @property
  def layout(self) -> dalle_masks.Layout:
    return dalle_masks.Layout(self.text_length, tuple(self.grid))

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} does not divide into {self.num_heads} heads")
    pdt = _dtype(self.param_dtype)
    emb = nn.initializers.normal(0.02)
    h, w = self.grid
    self.text_embed = nn.Embed(self.text_vocab + 1, self.width, param_dtype=pdt, embedding_init=emb)
    self.text_pos = self.param("text_pos", emb, (self.text_length + 1, self.width), pdt)
    self.image_embed = nn.Embed(self.image_vocab, self.width, param_dtype=pdt, embedding_init=emb)
    self.row_embed = self.param("row_embed", emb, (h, self.width), pdt)
    self.col_embed = self.param("col_embed", emb, (w, self.width), pdt)
    kinds = dalle_masks.layer_kinds(self.depth, self.attention)
    block = nn.remat(Block) if self.remat else Block
    out_std = 0.02 / math.sqrt(2 * self.depth)  # GPT-2's scaled residual init
    self.blocks = [
      block(
        self.width,
        self.num_heads,
        self.mlp_ratio,
        kind,
        self.text_length,
        tuple(self.grid),
        self.conv_kernel,
        self.conv_wrap,
        out_std,
        self.dtype,
        self.param_dtype,
        name=f"block_{i}",
      )
      for i, kind in enumerate(kinds)
    ]
    self.ln_f = nn.LayerNorm(dtype=_dtype(self.dtype), param_dtype=pdt)
    dense = lambda n, name: nn.Dense(
      n, dtype=_dtype(self.dtype), param_dtype=pdt, kernel_init=emb, name=name
    )
    self.text_head = dense(self.text_vocab, "text_head")
    self.image_head = dense(self.image_vocab, "image_head")

  def _embed(self, ids: jax.Array, positions: jax.Array) -> jax.Array:
    """ids int32 [B, T] at stream positions [T] -> [B, T, D] (caption or image embeddings)."""
    lt = self.layout.num_text_positions
    is_text = (positions < lt)[None, :, None]
    text = (
      self.text_embed(jnp.clip(ids, 0, self.text_vocab))
      + self.text_pos[jnp.clip(positions, 0, lt - 1)]
    )
    k = jnp.clip(positions - lt, 0, self.layout.num_image - 1)  # image token index
    w = self.grid[1]
    image = self.image_embed(jnp.clip(ids, 0, self.image_vocab - 1))
    image = image + self.row_embed[k // w] + self.col_embed[k % w]
    return jnp.where(is_text, text, image).astype(_dtype(self.dtype))

  def stream(self, text: jax.Array, image: jax.Array) -> jax.Array:
    """The input ids [B, S]: BOS, caption [B, L], image tokens [B, N] but the last."""
    bos = jnp.full((text.shape[0], 1), self.text_vocab, jnp.int32)
    return jnp.concatenate([bos, text.astype(jnp.int32), image[:, :-1].astype(jnp.int32)], 1)

  def __call__(self, text: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced logits: caption [B, L, text_vocab] and image [B, N, image_vocab], float32."""
    ids = self.stream(text, image)  # [B, S]
    x = self._embed(ids, jnp.arange(ids.shape[1]))
    for blk in self.blocks:
      x, _ = blk(x)
    x = self.ln_f(x)
    lt = self.text_length
    text_logits = self.text_head(x[:, :lt]).astype(jnp.float32)  # positions 0..L-1
    image_logits = self.image_head(x[:, lt:]).astype(jnp.float32)  # positions L..S-1
    return text_logits, image_logits

  def init_cache(self, batch: int, dtype: Any = None) -> Cache:
    """Zeros for `extend`: one [B, S, heads, head_dim] key and value per layer."""
    shape = (batch, self.layout.seq_len, self.num_heads, self.width // self.num_heads)
    dt = _dtype(dtype or self.dtype)
    return [
      {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
      for _ in dalle_masks.layer_kinds(self.depth, self.attention)
    ]

  def extend(self, ids: jax.Array, start: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    """Runs ids [B, T] at positions start .. start+T-1 with the cache.

    Returns the image logits float32 [B, image_vocab] of the last new position (meaningful once
    that position is L or later) and the updated cache.
    """
    positions = start + jnp.arange(ids.shape[1])
    x = self._embed(ids, positions)
    new_cache = []
    for blk, c in zip(self.blocks, cache, strict=True):
      x, c = blk(x, c, start)
      new_cache.append(c)
    x = self.ln_f(x[:, -1])
    return self.image_head(x).astype(jnp.float32), new_cache
