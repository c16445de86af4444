"""Autoregressive sampling of DALL-E image tokens with a KV cache (Ramesh et al. 2021, section 2.3).

One jitted computation per call: the caption (BOS + L ids) is prefilled in one `extend` call, then a
`lax.fori_loop` runs one image position at a time against the cache. Each token is drawn from the
filtered logits (temperature, top-k, nucleus); with ``guidance_scale`` s != 1 the batch is doubled
with the all-padding caption and the logits are combined as dalle-mini's "super conditioning"
(classifier-free guidance on logits): logits_u + s (logits_c - logits_u), so s = 1 is the
conditional model. The key of image token k is ``fold_in(rng, k)`` whatever the batch layout, so a
full-recomputation sampler with the same keys draws the same tokens (tests/test_dalle_sampling.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from research.models.dalle import DalleTransformer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 1.0  # 0 = greedy (argmax)
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # nucleus mass; 1 = off
  guidance_scale: float = 1.0  # s in logits_u + s (logits_c - logits_u); 1 = no guidance


def filter_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """float32 [B, V] -> logits with the tokens outside top-k / the nucleus at -inf, over temperature."""
  logits = logits / max(cfg.temperature, 1e-6)
  if cfg.top_k > 0:
    kth = jax.lax.top_k(logits, min(cfg.top_k, logits.shape[-1]))[0][..., -1:]  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if cfg.top_p < 1.0:
    # Holtzman et al. 2020: the smallest set of most likely tokens whose mass reaches top_p.
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # [B, V] descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
    keep = mass_before < cfg.top_p  # the first token is always kept
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def pick(key: jax.Array, logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """One token per row of float32 logits [B, V] -> int32 [B]."""
  if cfg.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits, cfg), axis=-1).astype(jnp.int32)


def guided(logits: jax.Array, cfg: SamplingConfig, batch: int) -> jax.Array:
  """[B or 2B, V] -> [B, V]: the conditional rows, or the guided combination of both halves."""
  if cfg.guidance_scale == 1.0:
    return logits
  cond, uncond = logits[:batch], logits[batch:]
  return uncond + cfg.guidance_scale * (cond - uncond)  # dalle-mini's super conditioning


def generate(
  model: DalleTransformer,
  params: Any,
  text: jax.Array,
  null_text: jax.Array,
  rng: jax.Array,
  cfg: SamplingConfig,
) -> jax.Array:
  """Image tokens int32 [B, N] for captions int32 [B, L], with the KV cache."""
  b, lt = text.shape
  n = model.layout.num_image
  if cfg.guidance_scale != 1.0:
    text = jnp.concatenate([text, jnp.broadcast_to(null_text, text.shape)], axis=0)
  rows = text.shape[0]
  bos = jnp.full((rows, 1), model.text_vocab, jnp.int32)
  cache = model.init_cache(rows)
  apply = lambda ids, start, c: model.apply({"params": params}, ids, start, c, method="extend")
  logits, cache = apply(jnp.concatenate([bos, text.astype(jnp.int32)], 1), jnp.int32(0), cache)

  def feed(tok: jax.Array) -> jax.Array:
    return jnp.tile(tok, rows // b)[:, None]  # the same token in both halves under guidance

  def body(k, carry):
    tokens, logits, cache = carry
    tok = pick(jax.random.fold_in(rng, k), guided(logits, cfg, b), cfg)  # [B]
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, k))
    logits, cache = apply(feed(tok), lt + 1 + k, cache)  # position of image token k
    return tokens, logits, cache

  tokens = jnp.zeros((b, n), jnp.int32)
  tokens, logits, _ = jax.lax.fori_loop(0, n - 1, body, (tokens, logits, cache))
  last = pick(jax.random.fold_in(rng, n - 1), guided(logits, cfg, b), cfg)
  return tokens.at[:, n - 1].set(last)


def generate_without_cache(
  model: DalleTransformer,
  params: Any,
  text: jax.Array,
  null_text: jax.Array,
  rng: jax.Array,
  cfg: SamplingConfig,
) -> jax.Array:
  """The same draws as `generate` by recomputing the whole sequence per token (slow; for tests)."""
  b, _ = text.shape
  n = model.layout.num_image
  if cfg.guidance_scale != 1.0:
    text = jnp.concatenate([text, jnp.broadcast_to(null_text, text.shape)], axis=0)
  forward = jax.jit(lambda t, img: model.apply({"params": params}, t, img)[1])
  tokens = jnp.zeros((b, n), jnp.int32)
  for k in range(n):
    image = jnp.tile(tokens, (text.shape[0] // b, 1))
    logits = forward(text, image)[:, k]  # [rows, V]: predicts image token k
    tok = pick(jax.random.fold_in(rng, k), guided(logits, cfg, b), cfg)
    tokens = tokens.at[:, k].set(tok)
  return tokens
