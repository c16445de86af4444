"""Samplers over the `objectives` interface: Euler, Heun, EDM's stochastic sampler, Euler-Maruyama
for flow models, MeanFlow's one/few-step sampler, and classifier-free guidance.

Every sampler takes `model_fn(x_in, c_noise) -> net_out`: the same kind of callable as the loss's
`net_fn` (the caller closes over EMA params and labels, applies guidance with `guided`, and uses
train=False), the objective, a time grid from noise to data (`objective.time_grid(...)`: any float
array [N + 1], NumPy float64 or JAX; its length is static, its values may be traced) and a key.
At step i the sampler feeds the network `objective.net_inputs(x, t_i)`, and turns its output into
dx/dt with `objective.drift` (flow: v; EDM: (x - D)/sigma). Loops are `jax.lax.fori_loop`s, so
everything jits with model_fn, the objective, shape and the method-defining options static.
Each returns (x_0 [*shape] float32, nfe int32): the number of network evaluations actually made.

Start: x_T = s(t_0) z, z ~ N(0, I) (`prior_sample`: sigma_max z for EDM, z for flow), unless x_T is
given. Arithmetic is float32 (EDM's code runs its sampler in float64; JAX's default is float32).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import objectives as obj
from research.diffusion import samplers
from research.diffusion.meanflow import MeanFlowObjective
from research.errors import UserError

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_in [B, ...], c_noise) -> net_out
DIFFUSION_FORMS = ("sigma", "constant")


def guided(cond_fn: ModelFn, uncond_fn: ModelFn, w: float | jax.Array) -> ModelFn:
  """model_fn returning (1 + w) cond - w uncond (`samplers.cfg_combine`; w = 0: the conditional model).

  Guiding the raw output is the same as guiding v, eps, x0 or D: for every objective here these
  are affine in the output with coefficients that depend on (x_t, t) only, and the weights sum to 1
  (reference section 1.5). SiT/DiT's scale s is 1 + w.
  """
  return lambda x_in, c: samplers.cfg_combine(cond_fn(x_in, c), uncond_fn(x_in, c), w)


def prior_sample(
  rng: jax.Array, objective: obj.Objective, grid: np.ndarray | jax.Array, shape: tuple[int, ...]
) -> jax.Array:
  """x_T = s(t_0) z with z ~ N(0, I) [*shape] (ignores a(t_0) x0: exact for flow, where a(1) = 0)."""
  s0 = objective.coefficients(jnp.asarray(grid, jnp.float32)[:1])[1][0]  # scalar s(t_0)
  return s0 * jax.random.normal(rng, shape, jnp.float32)


def drift_at(objective: obj.Objective, model_fn: ModelFn, x: jax.Array, t: jax.Array) -> jax.Array:
  """dx/dt at the scalar time t for the batch x [B, ...]."""
  tb = jnp.full((x.shape[0],), t, jnp.float32)
  return objective.drift(model_fn(*objective.net_inputs(x, tb)), x, tb)


def _start(
  rng: jax.Array,
  objective: obj.Objective,
  grid: np.ndarray | jax.Array,
  shape: tuple[int, ...],
  x_T: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x_T [*shape], grid float32 [N + 1], the key for per-step noise): split(rng) = [x_T, steps]."""
  init_key, steps_key = jax.random.split(rng)
  g = jnp.asarray(grid, jnp.float32)  # [N + 1]
  if g.ndim != 1 or g.shape[0] < 2:
    raise UserError(f"a sampling grid needs at least 2 times, got shape {g.shape}")
  x = prior_sample(init_key, objective, g, tuple(shape)) if x_T is None else x_T
  return x.astype(jnp.float32), g, steps_key


def euler_sample(
  rng: jax.Array,
  objective: obj.Objective,
  model_fn: ModelFn,
  grid: np.ndarray | jax.Array,
  shape: tuple[int, ...],
  x_T: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """x_{i+1} = x_i + (t_{i+1} - t_i) f(x_i, t_i): first order, NFE = N."""
  x, g, _ = _start(rng, objective, grid, shape, x_T)
  n = g.shape[0] - 1

  def body(i, x):
    return x + (g[i + 1] - g[i]) * drift_at(objective, model_fn, x, g[i])

  return jax.lax.fori_loop(0, n, body, x), jnp.int32(n)


def _heun_step(
  objective: obj.Objective,
  model_fn: ModelFn,
  x_hat: jax.Array,
  t_hat: jax.Array,
  t_next: jax.Array,
) -> jax.Array:
  """Euler to t_next, then the trapezoidal correction unless t_next = 0 (EDM Algorithm 1, l. 7-8)."""
  d = drift_at(objective, model_fn, x_hat, t_hat)
  x_next = x_hat + (t_next - t_hat) * d

  def correct(x_next):
    return x_hat + (t_next - t_hat) * 0.5 * (d + drift_at(objective, model_fn, x_next, t_next))

  return jax.lax.cond(t_next > 0, correct, lambda y: y, x_next)


def heun_sample(
  rng: jax.Array,
  objective: obj.Objective,
  model_fn: ModelFn,
  grid: np.ndarray | jax.Array,
  shape: tuple[int, ...],
  x_T: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Heun's second-order method (EDM Algorithm 1); the step to t = 0 is plain Euler.

  NFE = N + (number of t_{i+1} > 0): 2N - 1 on a grid ending at 0 (35 for EDM's N = 18).
  """
  x, g, _ = _start(rng, objective, grid, shape, x_T)
  n = g.shape[0] - 1
  body = lambda i, x: _heun_step(objective, model_fn, x, g[i], g[i + 1])
  nfe = n + jnp.sum(g[1:] > 0).astype(jnp.int32)
  return jax.lax.fori_loop(0, n, body, x), nfe


def edm_sample(
  rng: jax.Array,
  objective: obj.EDMObjective,
  model_fn: ModelFn,
  grid: np.ndarray | jax.Array,
  shape: tuple[int, ...],
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float("inf"),
  s_noise: float = 1.0,
  x_T: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2; `edm_sampler` of NVlabs/edm).

  At each sigma_i in [s_tmin, s_tmax]: gamma = min(s_churn / N, sqrt(2) - 1), sigma_hat =
  sigma_i (1 + gamma), x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise z; then a Heun step from
  sigma_hat to sigma_{i+1} (Euler on the last, to 0). s_churn = 0 is `heun_sample` (Algorithm 1).
  Table 5 settings: CIFAR-10 VP (30, 0.01, 1, 1.007); ImageNet-64 EDM-trained (40, 0.05, 50, 1.003).
  """
  if not isinstance(objective, obj.EDMObjective):
    raise UserError(
      "edm_sample needs an EDMObjective (x = x0 + sigma n); "
      "use euler_maruyama_sample for flow models"
    )
  x, g, steps_key = _start(rng, objective, grid, shape, x_T)
  n = g.shape[0] - 1
  gamma_max = min(float(s_churn) / n, np.sqrt(2.0) - 1.0)

  def body(i, x):
    t_cur, t_next = g[i], g[i + 1]
    gamma = jnp.where((t_cur >= s_tmin) & (t_cur <= s_tmax), gamma_max, 0.0)
    t_hat = t_cur * (1.0 + gamma)
    z = jax.random.normal(jax.random.fold_in(steps_key, i), x.shape, jnp.float32)
    # Algorithm 2, line 6: sqrt(t_hat^2 - t^2) written as t sqrt(gamma (2 + gamma)), exactly 0 at
    # gamma = 0 (the difference of squares can round below 0 and give NaN).
    x_hat = x + t_cur * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z
    return _heun_step(objective, model_fn, x_hat, t_hat, t_next)

  nfe = n + jnp.sum(g[1:] > 0).astype(jnp.int32)
  return jax.lax.fori_loop(0, n, body, x), nfe


def diffusion_coefficient(
  objective: obj.Objective, t: jax.Array, form: str = "sigma", norm: float = 1.0
) -> jax.Array:
  """D_t of the sampling SDE: "sigma" = norm s(t) (SiT's default), "constant" = norm; [B]."""
  if form == "sigma":
    return norm * objective.coefficients(t)[1]
  if form == "constant":
    return jnp.full(jnp.shape(t), norm, jnp.float32)
  raise UserError(f"unknown diffusion_form {form!r}: use one of {list(DIFFUSION_FORMS)}")


def euler_maruyama_sample(
  rng: jax.Array,
  objective: obj.Objective,
  model_fn: ModelFn,
  grid: np.ndarray | jax.Array,
  shape: tuple[int, ...],
  diffusion_form: str = "sigma",
  diffusion_norm: float = 1.0,
  x_T: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Euler-Maruyama on the reverse-time SDE with the marginals of the PF-ODE (SiT, Ma et al. 2024).

  Derivation for OUR direction (data at t = 0, integrating t from t_max down to 0). The marginals
  p_t obey the continuity equation d_t p = -div(v p), v = the PF-ODE drift. In reversed time
  tau = t_max - t, q_tau = p_{t_max - tau} obeys d_tau q = div(v q). An SDE dy = b dtau + sqrt(2 D) dW
  has d_tau q = -div(b q) + D lap q = -div((b - D grad log q) q), so it matches for
  b = -v + D s, with s = grad log p_t the score. Back in t (dtau = -dt = t_i - t_{i+1} > 0):
    x_{i+1} = x_i + (t_{i+1} - t_i) (v - D_t s) + sqrt(2 D_t (t_i - t_{i+1})) z.
  Since t_{i+1} - t_i < 0, the -D s term moves along the score (a Langevin correction), as SiT's
  x + (v + D s) dt in its own direction (data at t = 1, v pointing to the data). The last step is
  the drift only (no noise; SiT's "Mean" last step). D_t = diffusion_norm s(t) for "sigma": for a
  flow D s = -norm eps_hat, finite as t -> 0. NFE = N.
  """
  if diffusion_form not in DIFFUSION_FORMS:
    raise UserError(
      f"unknown diffusion_form {diffusion_form!r}: use one of {list(DIFFUSION_FORMS)}"
    )
  x, g, steps_key = _start(rng, objective, grid, shape, x_T)
  n = g.shape[0] - 1

  def mean(x, t, t_next):
    tb = jnp.full((x.shape[0],), t, jnp.float32)
    out = model_fn(*objective.net_inputs(x, tb))
    d = diffusion_coefficient(objective, tb, diffusion_form, diffusion_norm)
    drift = objective.drift(out, x, tb) - obj.bcast(d, x) * objective.score(out, x, tb)
    return x + (t_next - t) * drift, d

  def body(i, x):
    m, d = mean(x, g[i], g[i + 1])
    z = jax.random.normal(jax.random.fold_in(steps_key, i), x.shape, jnp.float32)
    return m + obj.bcast(jnp.sqrt(2.0 * d * (g[i] - g[i + 1])), x) * z

  x = jax.lax.fori_loop(0, n - 1, body, x)
  return mean(x, g[n - 1], g[n])[0], jnp.int32(n)


def meanflow_sample(
  rng: jax.Array,
  objective: MeanFlowObjective,
  model_fn: ModelFn,
  shape: tuple[int, ...],
  num_steps: int = 1,
  x_T: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """z_r = z_t - (t - r) u(z_t, r, t) on a uniform grid 1 -> 0 (MeanFlow; 1 step: z_0 = z_1 - u(z_1, 0, 1)).

  The network gets `objective.net_inputs(z, t, r)`; NFE = num_steps.
  """
  if not isinstance(objective, MeanFlowObjective):
    raise UserError("meanflow_sample needs a MeanFlowObjective; use heun_sample for flow models")
  x, g, _ = _start(rng, objective, objective.time_grid(num_steps), shape, x_T)
  b = x.shape[0]

  def body(i, x):
    t, r = jnp.full((b,), g[i]), jnp.full((b,), g[i + 1])
    u = model_fn(*objective.net_inputs(x, t, r))
    return x - obj.bcast(t - r, x) * u

  return jax.lax.fori_loop(0, num_steps, body, x), jnp.int32(num_steps)


SAMPLERS = {
  "euler": euler_sample,
  "heun": heun_sample,
  "edm": edm_sample,
  "euler_maruyama": euler_maruyama_sample,
}
