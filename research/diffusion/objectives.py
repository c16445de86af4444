"""One interface for diffusion training objectives: DDPM, flow matching and EDM (MeanFlow: meanflow.py).

Pinned time convention (every objective, sampler and likelihood in this package follows it):
  data at t = 0, noise at t = t_max, on a Gaussian path x_t = a(t) x0 + s(t) eps, eps ~ N(0, I).
  - Flow matching / rectified flow (`FlowObjective`; the SD3 and MeanFlow convention):
      a = 1 - t, s = t, t in [0, 1]; the network predicts the velocity v = eps - x0 = dx_t/dt.
  - EDM (`EDMObjective`, Karras et al. 2022): a = 1, s = t = sigma, sigma from sigma_max down to 0;
      the network F is preconditioned, D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) ~ x0.
  - DDPM (`DDPMObjective`): integer t in {0..T-1}, a = sqrt(abar_t), s = sqrt(1 - abar_t); a thin
      wrapper over `schedules` with unchanged numbers (eps or v prediction).
Sources that put data at t = 1 (Lipman et al., the SiT and shortcut repos) must be time-reversed
before porting (reference: model_specs_modern.md section 0).

Every objective is a frozen dataclass with the methods of `Objective` (shapes: x [B, ...], t [B]):
  sample_time(rng, n) -> t [n]           float32 (int32 for DDPM), the training distribution of t
  coefficients(t) -> (a, s)              each [B]
  corrupt(x0, t, noise) -> x_t           a(t) x0 + s(t) noise
  net_inputs(x_t, t) -> (x_in, c_noise)  what the network receives (c_noise [B], or [B, K])
  target(x0, noise, t) -> [B, ...]       the regression target of the RAW network output
  loss_weight(t) -> [B]                  per-example weight of the squared error
  predictions(net_out, x_t, t) -> (x0_hat, eps_hat)
  drift(net_out, x_t, t) -> dx_t/dt      of the probability-flow ODE, in the objective's own time
  score(net_out, x_t, t) -> -eps_hat / s(t)
  time_grid(num_steps, ...) -> np.float64 [num_steps + 1], from noise (t_max) to data (0)
  loss(net_fn, x0, rng) -> (per_example_loss [B], aux)   aux["t"] [B] is the time drawn

The network: `net_fn(x_in [B, ...], c_noise [B] or [B, K]) -> net_out [B, ...]` is supplied by the
task and closes over params, labels, the dropout key and `train` (for the DDPM UNet:
`lambda x, c: net.apply({"params": p}, x, c, labels, train=True, rngs={"dropout": k})`). The
samplers (`ode_samplers`) call the same kind of function with EMA params and train=False.

Random keys: `loss` splits rng into three, jax.random.split(rng, 3) = [time key, noise key, caller
key]; it uses only the first two, and the third (`caller_key(rng)`) is the caller's, for dropout.
`DiffusionTask.simple_loss` splits its rng the same way (t_key, noise_key, dropout_key), so
`DDPMObjective.loss(net_fn, x0, rng)` with net_fn using `caller_key(rng)` for dropout reproduces
its per-example losses bit for bit.

Loss reduction: the squared error is averaged over the non-batch axes (L_simple's `mean_flat`) and
multiplied by `loss_weight`; the caller averages over the batch. (EDM's code sums over pixels;
that is a constant factor D, which Adam largely ignores. MeanFlow sums, see meanflow.py.)

Flow time conditioning: c_noise = `time_scale` * t with time_scale = 1000 by default, so t in [0, 1]
spans the same range as DDPM's integer timesteps and a DDPM-style sinusoidal embedding (the UNet's
`timestep_embedding`, frequencies down to 1e-4) resolves it. EDM feeds c_noise = ln(sigma) / 4 (about
-1.6 to 1.1) to the same embedding, as EDM's DDPM++ does with its positional embedding. MeanFlow's
c_noise is [B, 2] (the UNet's `num_times=2`); initialise such a network with t of shape [B, 2].

Objectives are built by name from a config in `research.tasks.diffusion` (``config.task.objective``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import schedules as sch
from research.errors import UserError

NetFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_in [B, ...], c_noise [B] | [B, K])
TIME_SAMPLINGS = ("uniform", "logit_normal")


class Objective(Protocol):
  """What the samplers, the likelihood and the task rely on (see the module docstring)."""

  t_max: float

  def sample_time(self, rng: jax.Array, n: int) -> jax.Array: ...
  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]: ...
  def corrupt(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array: ...
  def net_inputs(self, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]: ...
  def time_of(self, c_noise: jax.Array) -> jax.Array: ...
  def noise_to_signal(self, c_noise: jax.Array) -> jax.Array: ...
  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array: ...
  def loss_weight(self, t: jax.Array) -> jax.Array: ...
  def predictions(
    self, net_out: jax.Array, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array]: ...
  def drift(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array: ...
  def score(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array: ...
  def time_grid(self, num_steps: int, **kw: Any) -> np.ndarray: ...
  def loss(self, net_fn: NetFn, x0: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]: ...


def bcast(t: jax.Array, x: jax.Array) -> jax.Array:
  """t [B] shaped to broadcast against x [B, ...]: [B, 1, ..., 1]."""
  t = jnp.asarray(t)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over all axes but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def caller_key(rng: jax.Array) -> jax.Array:
  """The key of `rng` that `loss` leaves to the caller (for dropout): split(rng, 3)[2]."""
  return jax.random.split(rng, 3)[2]


def logit_normal(rng: jax.Array, n: int, loc: float, scale: float) -> jax.Array:
  """t = sigmoid(u), u ~ N(loc, scale^2): SD3's logit-normal time density (Esser et al. 2024, sec. 3.1)."""
  return jax.nn.sigmoid(loc + scale * jax.random.normal(rng, (n,), jnp.float32))


def shift_time(t: Any, shift: float) -> Any:
  """t' = shift t / (1 + (shift - 1) t) (SD3 sec. 5.3.2; diffusers' FlowMatchEulerDiscreteScheduler).

  Works on NumPy and JAX arrays; shift > 1 spends more of [0, 1] at high noise (t near 1).
  """
  return shift * t / (1.0 + (shift - 1.0) * t)


def shift_for_resolution(num_pixels: int, base_num_pixels: int) -> float:
  """SD3's resolution-dependent shift alpha = sqrt(m / n) (m target, n base pixel counts)."""
  return math.sqrt(num_pixels / base_num_pixels)


class _PathMixin:
  """`corrupt`, `score` and `loss` from the objective-specific methods."""

  def corrupt(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    a, s = self.coefficients(t)
    return bcast(a, x0) * x0 + bcast(s, x0) * noise  # [B, ...]

  def noise_to_signal(self, c_noise: jax.Array) -> jax.Array:
    """sigma = s(t) / a(t) [B] at the time the network was given, EDM's sigma for every
    objective (inf at pure noise): the common scale of guidance intervals."""
    a, s = self.coefficients(self.time_of(c_noise))
    return s / a

  def score(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """grad log p_t(x_t) = -E[eps | x_t] / s(t) (Tweedie); undefined at s = 0."""
    _, eps_hat = self.predictions(net_out, x_t, t)
    return -eps_hat / bcast(self.coefficients(t)[1], x_t)

  def loss(self, net_fn: NetFn, x0: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]:
    """loss_weight(t) * mean_flat((net_fn(net_inputs(x_t, t)) - target)^2) [B], and {"t": t}."""
    t_key, noise_key, _ = jax.random.split(rng, 3)  # the third key is the caller's (dropout)
    t = self.sample_time(t_key, x0.shape[0])  # [B]
    noise = jax.random.normal(noise_key, x0.shape)  # [B, ...]
    x_t = self.corrupt(x0, t, noise)
    out = net_fn(*self.net_inputs(x_t, t))
    per_example = mean_flat(jnp.square(out - self.target(x0, noise, t)))
    return self.loss_weight(t) * per_example, {"t": t}


@dataclasses.dataclass(frozen=True)
class DDPMObjective(_PathMixin):
  """DDPM's L_simple (Ho et al. 2020, eq. 14) over `schedules`, eps or v target, t ~ U{0..T-1}.

  The numbers are those of `DiffusionTask.simple_loss` (same key use: see the module docstring).
  There is no continuous-time ODE in this parameterisation: `drift` and `time_grid` raise; sample
  with `samplers.ddim_sample` (eta = 0 is the deterministic sampler) or `samplers.ddpm_sample`.
  """

  schedule: sch.Schedule
  prediction: str = "eps"  # "eps" | "v" (schedules.TARGETS)

  def __post_init__(self) -> None:
    sch.check_target(self.prediction)

  @property
  def t_max(self) -> float:
    return float(self.schedule.num_steps - 1)

  def sample_time(self, rng: jax.Array, n: int) -> jax.Array:
    return jax.random.randint(rng, (n,), 0, self.schedule.num_steps)  # Algorithm 1, line 3; int32

  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    t = jnp.asarray(t, jnp.int32)
    return (
      jnp.take(self.schedule.sqrt_alphas_cumprod, t),
      jnp.take(self.schedule.sqrt_one_minus_alphas_cumprod, t),
    )

  def corrupt(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    return sch.q_sample(self.schedule, x0, t, noise)

  def net_inputs(self, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x_t, jnp.asarray(t, jnp.int32)  # the integer index, as the DDPM UNet is trained

  def time_of(self, c_noise: jax.Array) -> jax.Array:
    """t [B] from the network's time input (the inverse of `net_inputs`)."""
    return jnp.asarray(c_noise, jnp.int32)

  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    return sch.training_target(self.schedule, x0, t, noise, self.prediction)

  def loss_weight(self, t: jax.Array) -> jax.Array:
    return jnp.ones(jnp.shape(t), jnp.float32)

  def predictions(
    self, net_out: jax.Array, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    return (
      sch.predict_x0(self.schedule, x_t, t, net_out, self.prediction),
      sch.predict_eps(self.schedule, x_t, t, net_out, self.prediction),
    )

  def drift(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    raise UserError(
      "the DDPM objective has integer time and no ODE drift: sample it with "
      "samplers.ddim_sample or samplers.ddpm_sample"
    )

  def time_grid(self, num_steps: int, **kw: Any) -> np.ndarray:
    raise UserError(
      "the DDPM objective has no continuous time grid: use schedules.timestep_subsequence "
      "with samplers.ddim_sample"
    )


@dataclasses.dataclass(frozen=True)
class FlowObjective(_PathMixin):
  """Conditional flow matching on the linear path (Lipman et al. 2022; Liu et al. 2022; SD3).

  x_t = (1 - t) x0 + t eps, target v = eps - x0 (= dx_t/dt), unit loss weight. Time sampling:
  "uniform" t ~ U[0, 1), or "logit_normal" t = sigmoid(N(loc, scale^2)) (SD3 sec. 3.1; its best
  setting is loc 0, scale 1), then SD3's shift t' = shift t / (1 + (shift - 1) t) when shift != 1.
  `time_grid` applies the same shift, as it must (SD3 sec. 5.3.2: train and sample alike).
  """

  time_sampling: str = "uniform"  # one of TIME_SAMPLINGS
  loc: float = 0.0  # logit-normal location
  scale: float = 1.0  # logit-normal scale
  shift: float = 1.0  # SD3 timestep shift (1 = none); see shift_for_resolution
  time_scale: float = 1000.0  # c_noise = time_scale * t

  @property
  def t_max(self) -> float:
    return 1.0

  def __post_init__(self) -> None:
    if self.time_sampling not in TIME_SAMPLINGS:
      raise UserError(
        f"unknown time_sampling {self.time_sampling!r}: use one of {list(TIME_SAMPLINGS)}"
      )
    if not (self.scale > 0 and self.shift > 0 and self.time_scale > 0):
      raise UserError(
        f"flow objective needs scale, shift and time_scale > 0, got "
        f"{self.scale}, {self.shift}, {self.time_scale}: use positive values (shift 1 = no shift)"
      )

  def sample_time(self, rng: jax.Array, n: int) -> jax.Array:
    if self.time_sampling == "uniform":
      t = jax.random.uniform(rng, (n,), jnp.float32)
    else:
      t = logit_normal(rng, n, self.loc, self.scale)
    return t if self.shift == 1.0 else shift_time(t, self.shift)

  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    t = jnp.asarray(t, jnp.float32)
    return 1.0 - t, t

  def net_inputs(self, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x_t, self.time_scale * jnp.asarray(t, jnp.float32)

  def time_of(self, c_noise: jax.Array) -> jax.Array:
    return jnp.asarray(c_noise, jnp.float32) / self.time_scale

  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    return noise - x0  # d/dt [(1 - t) x0 + t eps]

  def loss_weight(self, t: jax.Array) -> jax.Array:
    return jnp.ones(jnp.shape(t), jnp.float32)

  def predictions(
    self, net_out: jax.Array, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    # x_t = (1 - t) x0 + t eps and v = eps - x0 give x0 = x_t - t v, eps = x_t + (1 - t) v.
    tb = bcast(jnp.asarray(t, jnp.float32), x_t)
    return x_t - tb * net_out, x_t + (1.0 - tb) * net_out

  def drift(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    return net_out  # the velocity is dx_t/dt

  def time_grid(self, num_steps: int, shift: float | None = None) -> np.ndarray:
    """Uniform 1 -> 0 in float64, shifted by `shift` (default: the objective's own)."""
    _check_steps(num_steps)
    grid = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64)
    shift = self.shift if shift is None else shift
    return grid if shift == 1.0 else shift_time(grid, float(shift))


@dataclasses.dataclass(frozen=True)
class EDMObjective(_PathMixin):
  """EDM's preconditioned denoiser loss (Karras et al. 2022, Table 1, eq. 2, 7 and 8).

  x = x0 + sigma n, ln sigma ~ N(P_mean, P_std^2). D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
  with c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
  c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4 (sd = sigma_data).

  The loss is EDM's lambda(sigma) ||D - x0||^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2,
  written on the raw output F: D - x0 = c_out (F - (x0 - c_skip x) / c_out), so `target` is the
  effective target (x0 - c_skip x) / c_out and `loss_weight` = lambda c_out^2, which is 1: every
  sigma gets unit weight on F (EDM eq. 8 and the text after it), and for data of std sd both
  c_in x and the effective target have unit variance.
  """

  sigma_data: float = 0.5
  p_mean: float = -1.2
  p_std: float = 1.2
  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0

  @property
  def t_max(self) -> float:
    return self.sigma_max

  def sample_time(self, rng: jax.Array, n: int) -> jax.Array:
    return jnp.exp(self.p_mean + self.p_std * jax.random.normal(rng, (n,), jnp.float32))

  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    t = jnp.asarray(t, jnp.float32)
    return jnp.ones_like(t), t

  def preconditioning(self, sigma: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in, c_noise), each [B] (EDM Table 1, last column)."""
    sigma = jnp.asarray(sigma, jnp.float32)
    sd2 = self.sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * self.sigma_data * jax.lax.rsqrt(sigma**2 + sd2)
    c_in = jax.lax.rsqrt(sigma**2 + sd2)
    return c_skip, c_out, c_in, jnp.log(sigma) / 4.0

  def lam(self, sigma: jax.Array) -> jax.Array:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM Table 1)."""
    return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

  def denoise(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """D(x; sigma) = c_skip x + c_out F (EDM eq. 7)."""
    c_skip, c_out, _, _ = self.preconditioning(t)
    return bcast(c_skip, x_t) * x_t + bcast(c_out, x_t) * net_out

  def net_inputs(self, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    _, _, c_in, c_noise = self.preconditioning(t)
    return bcast(c_in, x_t) * x_t, c_noise

  def time_of(self, c_noise: jax.Array) -> jax.Array:
    return jnp.exp(4.0 * jnp.asarray(c_noise, jnp.float32))  # c_noise = ln(sigma) / 4

  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    x_t = self.corrupt(x0, t, noise)
    c_skip, c_out, _, _ = self.preconditioning(t)
    return (x0 - bcast(c_skip, x0) * x_t) / bcast(c_out, x0)

  def loss_weight(self, t: jax.Array) -> jax.Array:
    sigma = jnp.asarray(t, jnp.float32)
    return self.lam(sigma) * jnp.square(self.preconditioning(sigma)[1])  # = 1 up to rounding

  def predictions(
    self, net_out: jax.Array, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    d = self.denoise(net_out, x_t, t)
    return d, (x_t - d) / bcast(jnp.asarray(t, jnp.float32), x_t)

  def drift(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    return self.predictions(net_out, x_t, t)[
      1
    ]  # dx/dsigma = (x - D) / sigma (EDM eq. 1 and 3, sigma(t) = t)

  def time_grid(
    self,
    num_steps: int = 18,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
  ) -> np.ndarray:
    """sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N, then 0 (EDM eq. 5)."""
    _check_steps(num_steps)
    lo = self.sigma_min if sigma_min is None else sigma_min
    hi = self.sigma_max if sigma_max is None else sigma_max
    rho = self.rho if rho is None else rho
    if not 0 < lo < hi:
      raise UserError(f"EDM grid needs 0 < sigma_min < sigma_max, got {lo} and {hi}")
    frac = np.arange(num_steps, dtype=np.float64) / max(num_steps - 1, 1)
    sigmas = (hi ** (1 / rho) + frac * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return np.append(sigmas, 0.0)


def _check_steps(num_steps: int) -> None:
  if int(num_steps) < 1:
    raise UserError(f"num_steps={num_steps} must be at least 1")
