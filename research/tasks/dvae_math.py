"""The dVAE's math (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", arXiv 2102.12092).

- The logit-Laplace likelihood (appendix A.3) on pixels mapped into (eps, 1 - eps) by `map_pixels`.
- The Gumbel-softmax relaxation (Jang et al. 2016; Maddison et al. 2016) of the categorical
  posterior, used in the forward and the backward pass (not straight-through; section 2.1).
- The KL divergence of the categorical posterior to the uniform prior, on softmax(logits).
- The cosine schedules of the KL weight, the temperature (appendix A.2).

Everything works on jnp arrays (float32 inside jit); `cosine_schedule` also takes numpy float64
(the host-side check of the end points).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

LOGIT_LAPLACE_EPS = 0.1  # the paper's epsilon (appendix A.3, openai/DALL-E `map_pixels`)


def map_pixels(x: jax.Array, eps: float = LOGIT_LAPLACE_EPS) -> jax.Array:
  """phi: [0, 1] -> [eps, 1 - eps], phi(x) = (1 - 2 eps) x + eps (appendix A.3)."""
  return (1.0 - 2.0 * eps) * x + eps


def unmap_pixels(y: jax.Array, eps: float = LOGIT_LAPLACE_EPS) -> jax.Array:
  """phi^-1, clipped to [0, 1] (a decoded mean may fall outside [eps, 1 - eps])."""
  return jnp.clip((y - eps) / (1.0 - 2.0 * eps), 0.0, 1.0)


def logit_laplace_log_prob(y: jax.Array, mu: jax.Array, log_b: jax.Array) -> jax.Array:
  """Elementwise ln f(y | mu, b) of the logit-Laplace density on (0, 1) (appendix A.3, eq. 2):

    f(y | mu, b) = 1 / (2 b y (1 - y)) * exp(-|logit(y) - mu| / b)

  i.e. logit(y) ~ Laplace(mu, b). `mu` and `log_b` = ln b are the decoder's two outputs per channel.
  """
  logit_y = jnp.log(y) - jnp.log1p(-y)
  return -(
    jnp.log(2.0) + log_b + jnp.log(y) + jnp.log1p(-y) + jnp.abs(logit_y - mu) * jnp.exp(-log_b)
  )


def gumbel_softmax(rng: jax.Array, logits: jax.Array, tau: jax.Array | float) -> jax.Array:
  """A relaxed one-hot sample softmax((logits + g) / tau), g ~ Gumbel(0, 1) iid; [..., K] -> [..., K].

  As tau -> 0 the sample tends to the one-hot of argmax(logits + g), which is distributed as
  Categorical(softmax(logits)) (the Gumbel-max trick). Computed in float32.
  """
  g = jax.random.gumbel(rng, logits.shape, jnp.float32)
  return jax.nn.softmax((logits.astype(jnp.float32) + g) / tau, axis=-1)


def categorical_sample(rng: jax.Array, logits: jax.Array) -> jax.Array:
  """A hard one-hot sample from Categorical(softmax(logits)), float32 [..., K] (Gumbel-max)."""
  k = logits.shape[-1]
  return jax.nn.one_hot(jax.random.categorical(rng, logits.astype(jnp.float32)), k)


def kl_to_uniform(logits: jax.Array) -> jax.Array:
  """KL(q || Uniform(K)) = sum_k q_k ln q_k + ln K per position, q = softmax(logits); [..., K] -> [...]."""
  logits = logits.astype(jnp.float32)
  log_q = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(jnp.exp(log_q) * log_q, axis=-1) + math.log(logits.shape[-1])


def perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of the distribution proportional to `counts` [K]; K when uniform, 1 when one code."""
  p = counts / jnp.maximum(jnp.sum(counts), 1e-12)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def cosine_schedule(step, start: float, end: float, num_steps: int):
  """start -> end along half a cosine over `num_steps` steps, then constant at `end`:

    v(s) = end + (start - end) * (1 + cos(pi * min(s / num_steps, 1))) / 2

  (the paper anneals the KL weight, the temperature and the learning rate with cosine schedules,
  appendix A.2). In the train step `step` is the int32 step and this runs in float32: steps up to
  2**24 are exact in float32, so only the cosine itself rounds (relative error ~1e-7). Given a
  Python int or numpy value it computes in float64 on the host.
  """
  xp = jnp if isinstance(step, jax.Array) else np
  if num_steps <= 0:  # no annealing: the end value from the first step
    return xp.asarray(end, jnp.float32 if xp is jnp else np.float64)
  dtype = jnp.float32 if xp is jnp else np.float64
  frac = xp.clip(xp.asarray(step, dtype) / dtype(num_steps), 0.0, 1.0)
  return end + (start - end) * 0.5 * (1.0 + xp.cos(dtype(math.pi) * frac))
