"""Noise schedules and the closed forms of a Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021).

Index convention (the official DDPM code's): t = 0..T-1, and code index t is the paper's t + 1, so
t = 0 is the first noising step and `alphas_cumprod_prev[0] = 1` (x_{-1} in code terms is x_0).
Every table is computed in float64 with NumPy and cast to float32 once; the float64 versions stay
available as `Schedule.numpy` (and `schedule_arrays(betas)`).

Arrays broadcast per example: t is int32 [B] and x is [B, H, W, C]; a gathered coefficient becomes
[B, 1, 1, 1]. Model outputs are one of `TARGETS`:
  "eps": the noise (Ho et al. 2020, eq. 11);
  "v":   v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4).
The reverse-process variance is one of `VARIANCES`:
  "beta":          sigma_t^2 = beta_t (`fixedlarge`; first entry beta~_1, as the official code);
  "beta_tilde":    sigma_t^2 = beta~_t (`fixedsmall`, clipped log as the official code);
  "learned_range": the model outputs 2C channels [target, v_var]; log sigma^2 = frac log beta_t +
                   (1 - frac) log beta~_t with frac = (v_var + 1) / 2 (Nichol & Dhariwal eq. 15).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError

TARGETS = ("eps", "v")
VARIANCES = ("beta", "beta_tilde", "learned_range")
SPACINGS = ("uniform", "linspace", "quadratic", "leading", "trailing")

# The float32 tables a Schedule carries, in field order (all [T]).
_TABLES = (
  "betas",
  "alphas",
  "alphas_cumprod",
  "alphas_cumprod_prev",
  "sqrt_alphas_cumprod",
  "sqrt_one_minus_alphas_cumprod",
  "sqrt_recip_alphas_cumprod",
  "sqrt_recipm1_alphas_cumprod",
  "log_betas",
  "posterior_variance",
  "posterior_log_variance_clipped",
  "posterior_mean_coef1",
  "posterior_mean_coef2",
  "large_log_variance",
)


def schedule_arrays(betas: np.ndarray) -> dict[str, np.ndarray]:
  """All tables of a schedule in float64, from its betas [T] (the official `GaussianDiffusion2`)."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2:
    raise UserError(
      f"a diffusion schedule needs at least 2 steps, got betas of shape {betas.shape}"
    )
  if not (np.all(betas > 0) and np.all(betas < 1)):
    raise UserError(
      f"diffusion betas must lie in (0, 1), got [{betas.min():.4g}, {betas.max():.4g}]: "
      "use more steps, the cosine schedule, or smaller beta_start/beta_end"
    )
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.append(1.0, abar[:-1])
  # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), Ho et al. eq. 7; zero at t = 0.
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  return {
    "betas": betas,
    "alphas": alphas,
    "alphas_cumprod": abar,
    "alphas_cumprod_prev": abar_prev,
    "sqrt_alphas_cumprod": np.sqrt(abar),
    "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
    "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
    "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
    "log_betas": np.log(betas),
    "posterior_variance": post_var,
    # beta~_0 = 0, so the log replaces it with beta~_1 (official `posterior_log_variance_clipped`).
    "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
    # mu~ = coef1 x0 + coef2 x_t, Ho et al. eq. 7.
    "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
    "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    # `fixedlarge`: log beta_t with the first entry beta~_1 "to get a better decoder log likelihood".
    "large_log_variance": np.log(np.append(post_var[1], betas[1:])),
  }


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """The float32 tables [T] of a diffusion with T steps; a pytree (pass it through `jax.jit`).

  `timesteps[i]` is the index the model is fed at step i: the identity for a base schedule, the
  original indices for a respaced one (`respace`). The float64 betas and timesteps ride along as
  static data, so `numpy` (the float64 tables) is available even inside a jitted function.
  """

  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  log_betas: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array
  large_log_variance: jax.Array
  timesteps: jax.Array  # int32 [T]
  betas64: tuple[float, ...] = dataclasses.field(repr=False)
  timesteps64: tuple[int, ...] = dataclasses.field(repr=False)

  @classmethod
  def from_betas(cls, betas: np.ndarray, timesteps: np.ndarray | None = None) -> Schedule:
    tables = schedule_arrays(betas)
    steps = np.arange(len(tables["betas"])) if timesteps is None else np.asarray(timesteps)
    return cls(
      *(jnp.asarray(tables[k], jnp.float32) for k in _TABLES),
      jnp.asarray(steps, jnp.int32),
      tuple(float(b) for b in tables["betas"]),
      tuple(int(s) for s in steps),
    )

  @property
  def num_steps(self) -> int:
    return len(self.betas64)

  @functools.cached_property
  def numpy(self) -> dict[str, np.ndarray]:
    """The float64 tables (and int64 'timesteps'), concrete even while tracing."""
    return {**schedule_arrays(np.array(self.betas64)), "timesteps": np.array(self.timesteps64)}

  def tree_flatten(self):
    return tuple(getattr(self, k) for k in (*_TABLES, "timesteps")), (
      self.betas64,
      self.timesteps64,
    )

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)


def linear_schedule(
  T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, rescale: bool = True
) -> Schedule:
  """Betas linear from beta_start to beta_end (Ho et al. 2020, sec. 4).

  rescale: multiply both ends by 1000/T (Nichol & Dhariwal's `get_named_beta_schedule`), so any T
  noises as far as T = 1000 does (abar_T ~ 4e-5); at T = 1000 it changes nothing.
  """
  scale = 1000.0 / T if rescale else 1.0
  return Schedule.from_betas(np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
  """abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2) (Nichol & Dhariwal 2021, eq. 17).

  beta_t = min(1 - abar(t+1)/abar(t), max_beta) for code index t (the official
  `betas_for_alpha_bar`); the clip only bites at the last step, where f(1) = 0.
  """
  f = lambda u: np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
  t = np.arange(T, dtype=np.float64)
  return Schedule.from_betas(np.minimum(1.0 - f((t + 1) / T) / f(t / T), max_beta))


_SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


def make_schedule(name: str, T: int, **kw) -> Schedule:
  """A schedule by name: 'linear' or 'cosine'; kw go to its constructor."""
  if name not in _SCHEDULES:
    raise UserError(f"unknown noise schedule {name!r}: use one of {sorted(_SCHEDULES)}")
  try:
    return _SCHEDULES[name](T, **kw)
  except TypeError as e:
    raise UserError(f"bad arguments {sorted(kw)} for the {name!r} schedule: {e}") from None


def timestep_subsequence(
  T: int, num_steps: int, spacing: str = "uniform", steps_offset: int = 0
) -> np.ndarray:
  """Increasing original indices for sampling with fewer steps (Song et al. 2021, sec. 4.2).

  "uniform":   range(0, T, T // num_steps), the DDIM repo's strided sequence (it has more than
               num_steps entries when num_steps does not divide T, exactly as the repo);
  "linspace":  round(linspace(0, T - 1, num_steps)), exactly num_steps entries including T - 1
               (improved-diffusion's `space_timesteps(T, "N")`, used by DiT's 250 steps; also
               diffusers' DDIMScheduler `timestep_spacing="linspace"`);
  "quadratic": int(linspace(0, sqrt(0.8 T), num_steps)^2), the DDIM repo's CIFAR-10 choice
               (duplicates removed, so possibly fewer entries);
  "leading":   arange(num_steps) * (T // num_steps) + steps_offset, diffusers' "leading" (Stable
               Diffusion's configs use steps_offset 1); exactly num_steps entries;
  "trailing":  round(arange(T, 0, -T / num_steps)) - 1, diffusers' "trailing" (Lin et al. 2024,
               Table 2): always includes T - 1; exactly num_steps entries.
  diffusers lists these in decreasing order; this returns them increasing. `steps_offset` is
  diffusers' `steps_offset`, which only "leading" uses (any other spacing rejects a nonzero one).
  """
  if not 1 <= num_steps <= T:
    raise UserError(f"num_steps={num_steps} must be between 1 and the schedule's T={T}")
  if steps_offset and spacing != "leading":
    raise UserError(
      f"steps_offset={steps_offset} only applies to spacing='leading' (diffusers ignores it "
      f"for {spacing!r}): set steps_offset=0 or use spacing='leading'"
    )
  if spacing == "leading":
    steps = np.arange(num_steps, dtype=np.int64) * (T // num_steps) + int(steps_offset)
    if steps[0] < 0 or steps[-1] >= T:
      raise UserError(
        f"steps_offset={steps_offset} puts timesteps outside [0, {T}) "
        f"(last {steps[-1]}): use a smaller steps_offset or fewer steps"
      )
    return steps
  if spacing == "trailing":
    # float64 ratio and NumPy's round-half-to-even, exactly as diffusers' set_timesteps. Its float
    # arange yields one extra entry (-1 after the shift) for some (T, num_steps), e.g. (17, 7):
    # only the first num_steps entries are kept, which are diffusers' other entries.
    steps = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64)[:num_steps] - 1
    return steps[::-1].copy()
  if spacing == "uniform":
    steps = np.arange(0, T, T // num_steps)
  elif spacing == "linspace":
    steps = np.round(np.linspace(0, T - 1, num_steps)).astype(np.int64)
  elif spacing == "quadratic":
    steps = (np.linspace(0, np.sqrt(T * 0.8), num_steps) ** 2).astype(np.int64)
  else:
    raise UserError(f"unknown timestep spacing {spacing!r}: use one of {list(SPACINGS)}")
  return np.unique(steps)


def respace(schedule: Schedule, timesteps: np.ndarray) -> Schedule:
  """The schedule restricted to a subsequence (improved-diffusion `respace.py`).

  beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}}, so abar'_i = abar_{tau_i}; `timesteps` maps step i
  back to the index the model was trained with (composed when `schedule` is already respaced).
  """
  tau = np.asarray(timesteps, dtype=np.int64)
  if tau.ndim != 1 or np.any(np.diff(tau) <= 0) or tau[0] < 0 or tau[-1] >= schedule.num_steps:
    raise UserError(f"respacing needs increasing indices in [0, {schedule.num_steps}), got {tau}")
  abar = schedule.numpy["alphas_cumprod"][tau]
  betas = 1.0 - abar / np.append(1.0, abar[:-1])
  return Schedule.from_betas(betas, schedule.numpy["timesteps"][tau])


def gather(table: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
  """table[t] shaped to broadcast against x: t [B], x [B, ...] -> [B, 1, ..., 1]."""
  t = jnp.asarray(t, jnp.int32)
  return jnp.take(table, t).reshape(t.shape + (1,) * (x.ndim - t.ndim))


def check_target(target: str) -> None:
  if target not in TARGETS:
    raise UserError(f"unknown diffusion target {target!r}: use one of {list(TARGETS)}")


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, a draw of q(x_t | x0) (Ho et al. eq. 4)."""
  return (
    gather(schedule.sqrt_alphas_cumprod, t, x0) * x0
    + gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
  )


def training_target(
  schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, target: str
) -> jax.Array:
  """What the network regresses: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
  check_target(target)
  if target == "eps":
    return noise
  return (
    gather(schedule.sqrt_alphas_cumprod, t, x0) * noise
    - gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0
  )


def predict_x0(
  schedule: Schedule, x_t: jax.Array, t: jax.Array, model_out: jax.Array, target: str
) -> jax.Array:
  """x0 from a model output: eps -> sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (Ho et al. eq. 15),
  v -> sqrt(abar) x_t - sqrt(1 - abar) v."""
  check_target(target)
  if target == "eps":
    return (
      gather(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
      - gather(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * model_out
    )
  return (
    gather(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
    - gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * model_out
  )


def predict_eps(
  schedule: Schedule, x_t: jax.Array, t: jax.Array, model_out: jax.Array, target: str
) -> jax.Array:
  """eps from a model output: eps -> itself, v -> sqrt(1 - abar) x_t + sqrt(abar) v."""
  check_target(target)
  if target == "eps":
    return model_out
  return (
    gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
    + gather(schedule.sqrt_alphas_cumprod, t, x_t) * model_out
  )


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
  """The eps consistent with x_t and a (possibly clipped) x0 (improved-diffusion)."""
  return (gather(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / gather(
    schedule.sqrt_recipm1_alphas_cumprod, t, x_t
  )


def q_posterior(
  schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q(x_{t-1} | x_t, x0) = N(mean, variance) (Ho et al. eq. 6-7).

  Returns mean [B, H, W, C], variance and the clipped log variance, both [B, 1, 1, 1].
  """
  mean = (
    gather(schedule.posterior_mean_coef1, t, x_t) * x0
    + gather(schedule.posterior_mean_coef2, t, x_t) * x_t
  )
  return (
    mean,
    gather(schedule.posterior_variance, t, x_t),
    gather(schedule.posterior_log_variance_clipped, t, x_t),
  )


def check_variance(variance: str) -> None:
  if variance not in VARIANCES:
    raise UserError(f"unknown diffusion variance {variance!r}: use one of {list(VARIANCES)}")


def split_model_output(model_out: jax.Array, variance: str) -> tuple[jax.Array, jax.Array | None]:
  """(target prediction, variance values or None): 'learned_range' outputs carry 2C channels."""
  check_variance(variance)
  if variance != "learned_range":
    return model_out, None
  if model_out.shape[-1] % 2:
    raise UserError(
      f"variance='learned_range' needs 2C output channels, got {model_out.shape[-1]}: "
      "set the model's output channels to twice the image channels"
    )
  return jnp.split(model_out, 2, axis=-1)


def model_log_variance(
  schedule: Schedule, x_t: jax.Array, t: jax.Array, variance: str, var_values: jax.Array | None
) -> jax.Array:
  """log sigma_t^2 of p(x_{t-1} | x_t): [B, 1, 1, 1] when fixed, [B, H, W, C] when learned."""
  if variance == "beta":
    return gather(schedule.large_log_variance, t, x_t)
  if variance == "beta_tilde":
    return gather(schedule.posterior_log_variance_clipped, t, x_t)
  # Nichol & Dhariwal eq. 15: interpolate between log beta~ and log beta in log space.
  frac = (var_values + 1.0) / 2.0
  max_log = gather(schedule.log_betas, t, x_t)
  min_log = gather(schedule.posterior_log_variance_clipped, t, x_t)
  return frac * max_log + (1.0 - frac) * min_log


def p_mean_variance(
  schedule: Schedule,
  x_t: jax.Array,
  t: jax.Array,
  model_out: jax.Array,
  target: str,
  variance: str = "beta",
  clip_x0: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """p(x_{t-1} | x_t) = N(mean, exp(log_variance)) with mean = mu~(x0_hat, x_t) (Ho et al. eq. 11).

  Returns (mean, log_variance, x0_hat); x0_hat is clipped to [-1, 1] when clip_x0 (sampling and
  evaluation in the official code; never in the training KL terms).
  """
  out, var_values = split_model_output(model_out, variance)
  x0_hat = predict_x0(schedule, x_t, t, out, target)
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  mean, _, _ = q_posterior(schedule, x0_hat, x_t, t)
  return mean, model_log_variance(schedule, x_t, t, variance, var_values), x0_hat
