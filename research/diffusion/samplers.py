"""Model-independent samplers: ancestral DDPM, DDIM, and classifier-free guidance.

A sampler takes `denoise_fn(x_t: [B, H, W, C], t: int32 [B]) -> model output` and the output's
target kind ("eps" or "v", see `schedules`). Everything is jittable: the loops are
`jax.lax.fori_loop`s, and the step tables are built from the schedule's float64 tables, which are
static (so `schedule` may be a traced argument; `denoise_fn`, `shape`, `target`, the step counts,
`eta` and the flags must be static).

Sampling with fewer steps than the schedule's T runs on `respace(schedule, subsequence)` and feeds
the model the ORIGINAL indices (`Schedule.timesteps`), as improved-diffusion's `timestep_map`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import schedules as sch

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def cfg_combine(cond_out: jax.Array, uncond_out: jax.Array, w: float | jax.Array) -> jax.Array:
  """(1 + w) cond - w uncond, classifier-free guidance (Ho & Salimans 2022, eq. 6).

  w = 0 is the conditional model, w = -1 the unconditional one. Diffusers, Imagen and DiT write the
  same thing as uncond + s (cond - uncond) with guidance scale s = 1 + w (DiT's cfg 1.5 is w = 0.5).

  The combination is applied to the model output as it is. For "eps" that is the paper's
  eps-guidance; for "v" (and any target affine in eps at fixed x_t, t, such as x0) it is exactly the
  same guidance, because eps = sqrt(1 - abar) x_t + sqrt(abar) v and the weights (1 + w) and -w sum
  to one, so the x_t terms cancel. No conversion is needed.
  """
  return (1.0 + w) * cond_out - w * uncond_out


def guided(
  denoise_fn_cond: DenoiseFn,
  denoise_fn_uncond: DenoiseFn,
  w: float | jax.Array,
  learned_range: bool = False,
) -> DenoiseFn:
  """A denoise_fn returning `cfg_combine` of two passes (w as in `cfg_combine`).

  learned_range: the outputs carry 2C channels [target, variance values]; only the target half is
  guided and the variance half is the conditional model's (as DiT's `forward_with_cfg`, except that
  DiT's reproducibility quirk guides only the first 3 of 4 latent channels; this guides all C).
  A model that batches both passes in one call can use `cfg_combine` on its halves directly.
  """

  def fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
    cond, uncond = denoise_fn_cond(x_t, t), denoise_fn_uncond(x_t, t)
    if not learned_range:
      return cfg_combine(cond, uncond, w)
    c_out, c_var = jnp.split(cond, 2, axis=-1)
    u_out, _ = jnp.split(uncond, 2, axis=-1)
    return jnp.concatenate([cfg_combine(c_out, u_out, w), c_var], axis=-1)

  return fn


def ddpm_step(
  schedule: sch.Schedule,
  x_t: jax.Array,
  t: jax.Array,
  model_out: jax.Array,
  noise: jax.Array,
  target: str,
  variance: str = "beta",
  clip_x0: bool = True,
) -> jax.Array:
  """x_{t-1} = mean + 1[t > 0] sigma_t z, one ancestral step (Ho et al. Algorithm 2; `p_sample`).

  t indexes `schedule` (int32 [B]); without clipping the mean equals
  (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t).
  """
  mean, log_var, _ = sch.p_mean_variance(schedule, x_t, t, model_out, target, variance, clip_x0)
  nonzero = (jnp.asarray(t) != 0).astype(x_t.dtype).reshape(jnp.shape(t) + (1,) * (x_t.ndim - 1))
  return mean + nonzero * jnp.exp(0.5 * log_var) * noise


def ddim_sigmas(schedule: sch.Schedule, eta: float) -> np.ndarray:
  """sigma_t(eta) of Song et al. eq. 16 for every step of `schedule` (float64 [T]).

  sigma = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}); on a (respaced)
  schedule 1 - abar_t / abar_{t-1} is its beta_t, so this is eta sqrt(beta~_t) exactly.
  """
  return float(eta) * np.sqrt(schedule.numpy["posterior_variance"])


def _ddim_tables(schedule: sch.Schedule, eta: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sqrt(abar_{t-1}), sqrt(1 - abar_{t-1} - sigma_t^2), sigma_t): float32 [T] from float64."""
  sigma, abar_prev = ddim_sigmas(schedule, eta), schedule.numpy["alphas_cumprod_prev"]
  direction = np.sqrt(np.maximum(1.0 - abar_prev - sigma**2, 0.0))
  return tuple(jnp.asarray(a, jnp.float32) for a in (np.sqrt(abar_prev), direction, sigma))


def ddim_step(
  schedule: sch.Schedule,
  x_t: jax.Array,
  t: jax.Array,
  model_out: jax.Array,
  noise: jax.Array,
  target: str,
  eta: float = 0.0,
  clip_x0: bool = True,
  learned_range: bool = False,
) -> jax.Array:
  """One DDIM step to the previous entry of `schedule` (Song et al. 2021, eq. 12).

  x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps_hat + sigma_t z.
  t indexes `schedule` (int32 [B]); on a respaced schedule abar_{t-1} is the previous entry of the
  subsequence (1 after the last). When clip_x0, x0_hat is clipped and eps_hat recomputed from it
  (improved-diffusion's `ddim_sample`), so the update stays on the line through x_t and x0_hat.
  learned_range: drop the variance half of a 2C-channel output (DDIM does not use it).
  """
  if learned_range:
    model_out, _ = jnp.split(model_out, 2, axis=-1)
  x0_hat = sch.predict_x0(schedule, x_t, t, model_out, target)
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    eps_hat = sch.eps_from_x0(schedule, x_t, t, x0_hat)
  else:
    eps_hat = sch.predict_eps(schedule, x_t, t, model_out, target)
  sqrt_abar_prev, direction, sigma = _ddim_tables(schedule, eta)
  return (
    sch.gather(sqrt_abar_prev, t, x_t) * x0_hat
    + sch.gather(direction, t, x_t) * eps_hat
    + sch.gather(sigma, t, x_t) * noise
  )


def _sample_loop(
  rng: jax.Array,
  schedule: sch.Schedule,
  denoise_fn: DenoiseFn,
  shape: tuple[int, ...],
  step: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array],
  x_T: jax.Array | None,
) -> jax.Array:
  """Runs step(x, t, model_out, noise) from t = S-1 down to 0, feeding the model original indices."""
  init_key, steps_key = jax.random.split(rng)
  x = jax.random.normal(init_key, shape, jnp.float32) if x_T is None else x_T.astype(jnp.float32)
  batch = shape[0]
  n = schedule.num_steps

  def body(i, x):
    idx = n - 1 - i
    t = jnp.full((batch,), idx, jnp.int32)
    out = denoise_fn(x, jnp.full((batch,), schedule.timesteps[idx], jnp.int32))
    noise = jax.random.normal(jax.random.fold_in(steps_key, idx), shape, jnp.float32)
    return step(x, t, out, noise)

  return jax.lax.fori_loop(0, n, body, x)


def ddpm_sample(
  rng: jax.Array,
  schedule: sch.Schedule,
  denoise_fn: DenoiseFn,
  shape: tuple[int, ...],
  target: str,
  variance: str = "beta",
  clip_x0: bool = True,
  num_steps: int | None = None,
  spacing: str = "linspace",
  x_T: jax.Array | None = None,
  steps_offset: int = 0,
) -> jax.Array:
  """Ancestral sampling (Ho et al. Algorithm 2) from x_T ~ N(0, I); returns x_0 [*shape] float32.

  variance: "beta" (sigma^2 = beta, the paper's/CIFAR default), "beta_tilde", or "learned_range".
  num_steps: sample on the respaced schedule (`timestep_subsequence(T, num_steps, spacing)`; the
  default spacing is improved-diffusion's / DiT's "250"), None for all T steps; steps_offset goes
  to `timestep_subsequence` (diffusers' "leading" offset).
  With clip_x0 every x0 prediction is clipped to [-1, 1], so the result (the last step's x0_hat,
  since mu~ at t = 0 is x0_hat) lies in [-1, 1].
  """
  sch.check_target(target)
  sch.check_variance(variance)
  if num_steps is not None:
    steps = sch.timestep_subsequence(schedule.num_steps, num_steps, spacing, steps_offset)
    schedule = sch.respace(schedule, steps)
  step = lambda x, t, out, z: ddpm_step(schedule, x, t, out, z, target, variance, clip_x0)
  x0 = _sample_loop(rng, schedule, denoise_fn, tuple(shape), step, x_T)
  return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0


def ddim_sample(
  rng: jax.Array,
  schedule: sch.Schedule,
  denoise_fn: DenoiseFn,
  shape: tuple[int, ...],
  target: str,
  num_steps: int,
  eta: float = 0.0,
  clip_x0: bool = True,
  x_T: jax.Array | None = None,
  spacing: str = "uniform",
  learned_range: bool = False,
  steps_offset: int = 0,
) -> jax.Array:
  """DDIM (Song et al. 2021, eq. 12 with sigma of eq. 16) on `num_steps` steps; x_0 [*shape].

  spacing: "uniform" (the DDIM repo's strided range(0, T, T // num_steps)), "linspace",
  "quadratic", or diffusers' "leading" (with `steps_offset`) and "trailing" (see
  `timestep_subsequence`). eta = 0 is deterministic given x_T; eta = 1 with num_steps = T is
  ancestral sampling with variance beta~. Each step goes to the previous entry of the subsequence
  and after the first entry to abar = 1: diffusers' DDIMScheduler with set_alpha_to_one=True, whose
  `t - T // num_steps` is that previous entry whenever the entries are T // num_steps apart
  ("leading"; "trailing" when num_steps divides T).
  """
  sch.check_target(target)
  steps = sch.timestep_subsequence(schedule.num_steps, num_steps, spacing, steps_offset)
  if len(steps) != schedule.num_steps:
    schedule = sch.respace(schedule, steps)
  step = lambda x, t, out, z: ddim_step(schedule, x, t, out, z, target, eta, clip_x0, learned_range)
  x0 = _sample_loop(rng, schedule, denoise_fn, tuple(shape), step, x_T)
  return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0
