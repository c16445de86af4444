"""VAE math (Kingma & Welling 2013; Burda et al. 2015), per example, summed over pixels.

Conventions: every log-density is summed over all pixels and channels of one image (nats per image).
A mean over pixels would weight the reconstruction 1/D against the KL and collapse the posterior.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, Kingma & Welling 2013, appendix B.

  mean, logvar: [B, Z] -> [B].
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def gaussian_log_prob(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(z; mean, diag(exp(logvar))), summed over the last axis. [..., Z] -> [...]."""
  return -0.5 * jnp.sum(
    jnp.log(2 * jnp.pi) + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1
  )


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
  """sum_i x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i), from logits (never log of sigmoid).

  logits, x: [B, H, W, C] with x in {0, 1} -> [B].
  """
  lp = x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)


def discretized_logistic_log_prob(
  mean: jax.Array, log_scale: jax.Array, x: jax.Array, num_bins: int = 256
) -> jax.Array:
  """Discretized logistic likelihood of 8-bit pixels (Salimans et al. 2017, PixelCNN++ eq. 2).

  x: pixels scaled to [-1, 1] (k / 127.5 - 1). Each pixel owns the bin of width 2/255 around it; the
  edge bins extend to -inf and +inf, so the probabilities of the 256 levels sum to one.
  mean, log_scale, x: [B, H, W, C] -> [B].
  """
  half_bin = 1.0 / (num_bins - 1)
  inv_scale = jnp.exp(-log_scale)
  plus = inv_scale * (x - mean + half_bin)
  minus = inv_scale * (x - mean - half_bin)
  # The mass of an inner bin, F(plus) - F(minus), in log space without cancellation: below the mean
  # as log F(plus) + log(1 - F(minus)/F(plus)), above it as the same with the upper tails
  # 1 - F = sigmoid(-.). Both are exact; each is accurate on its own side.
  low_a, low_b = jax.nn.log_sigmoid(plus), jax.nn.log_sigmoid(minus)
  high_a, high_b = jax.nn.log_sigmoid(-minus), jax.nn.log_sigmoid(-plus)
  below = x < mean
  a, b = jnp.where(below, low_a, high_a), jnp.where(below, low_b, high_b)
  diff = jnp.minimum(b - a, -1e-30)
  log_mid = a + jnp.log(-jnp.expm1(diff))
  # A bin far narrower than the scale: the difference underflows; use density x bin width.
  centre = inv_scale * (x - mean)
  log_pdf_mid = centre - log_scale - 2.0 * jax.nn.softplus(centre) + jnp.log(2 * half_bin)
  log_mid = jnp.where(diff > -1e-6, log_pdf_mid, log_mid)
  # Edge bins extend to -inf (level 0) and +inf (level 255).
  lp = jnp.where(x < -1 + half_bin, low_a, jnp.where(x > 1 - half_bin, high_a, log_mid))
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)


def iwae_bound(log_weights: jax.Array) -> jax.Array:
  """L_k = log (1/k) sum_i w_i (Burda et al. 2015, eq. 8). log_weights: [k, B] -> [B]."""
  k = log_weights.shape[0]
  return jax.nn.logsumexp(log_weights, axis=0) - jnp.log(k)


def slerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
  """Spherical interpolation between latents a, b: [Z]; t: [T] in [0, 1] -> [T, Z] (White 2016)."""
  na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
  cos = jnp.clip(jnp.dot(a, b) / (na * nb + 1e-12), -1.0, 1.0)
  omega = jnp.arccos(cos)
  so = jnp.sin(omega)
  t = t[:, None]
  lerp = (1 - t) * a + t * b
  wa = jnp.sin((1 - t) * omega) / jnp.where(so > 1e-6, so, 1.0)
  wb = jnp.sin(t * omega) / jnp.where(so > 1e-6, so, 1.0)
  return jnp.where(so > 1e-6, wa * a + wb * b, lerp)
