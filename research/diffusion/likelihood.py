"""The variational bound of a diffusion in bits/dim (Ho et al. 2020, sec. 3.3 and eq. 5).

L = L_T + sum_{t>1} L_{t-1} + L_0 with
  L_T     = KL(q(x_T | x0) || N(0, I))                       (`prior_bpd`),
  L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))     (`vb_terms_bpd`, code t >= 1),
  L_0     = -log p(x0 | x_1), a discretized Gaussian decoder (`vb_terms_bpd`, code t = 0),
following the official `diffusion_utils_2.py` (`normal_kl`, `discretized_gaussian_log_likelihood`,
`_vb_terms_bpd`, `_prior_bpd`, `calc_bpd_loop`). Every term is per example in bits/dim: the mean
over the D = H W C dimensions of the per-dimension nats, divided by ln 2 (= nats / (D ln 2)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import schedules as sch
from research.errors import UserError


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over all axes but the first: [B, ...] -> [B]."""
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def normal_kl(
  mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array
) -> jax.Array:
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats (broadcasts)."""
  return 0.5 * (
    -1.0
    + logvar2
    - logvar1
    + jnp.exp(logvar1 - logvar2)
    + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
  )


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, the official code's approximation."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


def discretized_gaussian_log_likelihood(
  x: jax.Array, means: jax.Array, log_scales: jax.Array
) -> jax.Array:
  """log P(x) per element for 8-bit data scaled to [-1, 1] (Ho et al. eq. 13).

  Each value owns the bin [x - 1/255, x + 1/255]; the edge bins (x < -0.999, x > 0.999) extend to
  -inf / +inf, so the 256 levels' probabilities sum to one. Logs are clamped at 1e-12.
  x, means, log_scales broadcast -> elementwise log-probabilities.
  """
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def prior_bpd(schedule: sch.Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x0) || N(0, I)) in bits/dim: x0 [B, H, W, C] -> [B]."""
  t = jnp.full((x0.shape[0],), schedule.num_steps - 1, jnp.int32)
  mean = sch.gather(schedule.sqrt_alphas_cumprod, t, x0) * x0
  logvar = jnp.log(sch.gather(1.0 - schedule.alphas_cumprod, t, x0))
  return mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / math.log(2.0)


def vb_terms_bpd(
  schedule: sch.Schedule,
  model_out: jax.Array,
  x0: jax.Array,
  x_t: jax.Array,
  t: jax.Array,
  target: str,
  variance: str = "beta",
  clip_x0: bool = False,
  stop_grad_mean: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """The bound's term at code step t, in bits/dim, and the model's x0 prediction.

  t >= 1: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)); t = 0: -log p(x0 | x_1) with the
  discretized Gaussian decoder of mean mu~(x0_hat, x_1) and log scale log_variance / 2.
  model_out: the network output at (x_t, t) (2C channels for variance='learned_range').
  clip_x0: clip x0_hat to [-1, 1] (the official evaluation does; the training terms must not).
  stop_grad_mean: stop the gradient through the target half of a 'learned_range' output, so the
  term trains only the variance (Nichol & Dhariwal's L_hybrid).
  Shapes: model_out, x0, x_t [B, H, W, C], t int32 [B] -> ([B], [B, H, W, C]).
  """
  if stop_grad_mean and variance == "learned_range":
    out, var_values = sch.split_model_output(model_out, variance)
    model_out = jnp.concatenate([jax.lax.stop_gradient(out), var_values], axis=-1)
  true_mean, _, true_logvar = sch.q_posterior(schedule, x0, x_t, t)
  mean, logvar, x0_hat = sch.p_mean_variance(schedule, x_t, t, model_out, target, variance, clip_x0)
  kl = mean_flat(normal_kl(true_mean, true_logvar, mean, logvar)) / math.log(2.0)
  decoder_nll = -mean_flat(
    discretized_gaussian_log_likelihood(x0, mean, 0.5 * jnp.broadcast_to(logvar, x0.shape))
  ) / math.log(2.0)
  return jnp.where(t == 0, decoder_nll, kl), x0_hat


def calc_bpd_loop(
  rng: jax.Array,
  schedule: sch.Schedule,
  denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
  x0: jax.Array,
  target: str,
  variance: str = "beta",
  clip_x0: bool = True,
) -> dict[str, jax.Array]:
  """The full bound of each example, one `lax.scan` step (one network call) per timestep.

  At each t a fresh x_t ~ q(x_t | x0) is drawn (noise from fold_in(rng, t)), as the official
  `calc_bpd_loop`. On a respaced schedule this is the bound of the respaced chain (the model is fed
  `schedule.timesteps`). x0: [B, H, W, C] in [-1, 1] (8-bit levels). Returns per example:
    total_bpd [B] = prior_bpd + sum over t of vb_bpd,
    prior_bpd [B], vb_bpd [B, T] (column 0 is the decoder term), decoder_bpd [B] (= vb_bpd[:, 0]),
    mse [B, T]: mean over dims of (x0_hat - x0)^2 at each t.
  """
  batch = x0.shape[0]

  def body(carry, idx):
    t = jnp.full((batch,), idx, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, idx), x0.shape, x0.dtype)
    x_t = sch.q_sample(schedule, x0, t, noise)
    out = denoise_fn(x_t, jnp.full((batch,), schedule.timesteps[idx], jnp.int32))
    bpd, x0_hat = vb_terms_bpd(schedule, out, x0, x_t, t, target, variance, clip_x0)
    return carry, (bpd, mean_flat(jnp.square(x0_hat - x0)))

  _, (vb, mse) = jax.lax.scan(body, None, jnp.arange(schedule.num_steps))
  vb, mse = vb.T, mse.T  # [B, T]
  prior = prior_bpd(schedule, x0)
  return {
    "total_bpd": prior + jnp.sum(vb, axis=1),
    "prior_bpd": prior,
    "vb_bpd": vb,
    "decoder_bpd": vb[:, 0],
    "mse": mse,
  }


def bound_bpd(
  rng: jax.Array,
  schedule: sch.Schedule,
  denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
  x0: jax.Array,
  target: str,
  variance: str = "beta",
  num_terms: int | None = None,
  clip_x0: bool = True,
) -> dict[str, jax.Array]:
  """An unbiased, stratified estimate of the bound with `num_terms` network calls per image.

  The decoder term (t = 0) is always computed; t = 1..T-1 is cut into num_terms - 1 contiguous
  strata, one t is drawn uniformly per stratum and example, and its term is weighted by the
  stratum's size. num_terms = T (or None) gives every term once, with the same draws as
  `calc_bpd_loop`, hence the same total. x0: [B, H, W, C] in [-1, 1]. Returns [B] arrays:
  total_bpd = prior_bpd + decoder_bpd + terms_bpd (the estimated sum of the KL terms t >= 1).
  """
  T, batch = schedule.num_steps, x0.shape[0]
  k = T if num_terms is None else int(num_terms)
  if not 2 <= k <= T:
    raise UserError(f"num_terms={num_terms} must be between 2 and the schedule's T={T}")
  edges = np.round(np.linspace(1, T, k)).astype(np.int32)  # k - 1 strata [lo, hi) of 1..T-1

  def term(t: jax.Array, key: jax.Array) -> jax.Array:
    x_t = sch.q_sample(schedule, x0, t, jax.random.normal(key, x0.shape, x0.dtype))
    out = denoise_fn(x_t, jnp.take(schedule.timesteps, t))
    return vb_terms_bpd(schedule, out, x0, x_t, t, target, variance, clip_x0)[0]

  def body(total, stratum):
    lo, hi = stratum
    key = jax.random.fold_in(rng, lo)  # = calc_bpd_loop's key when the stratum is {lo}
    t = jax.random.randint(jax.random.fold_in(key, 1 << 20), (batch,), lo, hi)
    return total + (hi - lo).astype(x0.dtype) * term(t, key), None

  decoder = term(jnp.zeros((batch,), jnp.int32), jax.random.fold_in(rng, 0))
  terms, _ = jax.lax.scan(
    body, jnp.zeros((batch,), x0.dtype), (jnp.asarray(edges[:-1]), jnp.asarray(edges[1:]))
  )
  prior = prior_bpd(schedule, x0)
  return {
    "total_bpd": prior + decoder + terms,
    "prior_bpd": prior,
    "decoder_bpd": decoder,
    "terms_bpd": terms,
  }
