"""Likelihood of flow models through the probability-flow ODE, in bits/dim (FFJORD-style).

Along dx/dt = f(x, t) (f = `objective.drift`, the velocity for a flow), the log density changes by
d log p_t(x_t) / dt = -Tr(df/dx) (instantaneous change of variables; Chen et al. 2018, Thm. 1).
Integrating from the data (t = t_min, 0 for a flow) to the noise end (t_max) gives
  log p_0(x_0) = log N(x_T; 0, s(t_max)^2 I) + int_{t_min}^{t_max} Tr(df/dx)(x_t, t) dt,
with the prior exact for a flow (x_1 = eps). The trace is Hutchinson's estimate Tr A = E[e^T A e]
(Grathwohl et al. 2018): one `jax.jvp` per drift call, with a Rademacher (or Gaussian) probe e drawn
once per sample and kept fixed for the whole solve (as FFJORD and score-SDE do; SiT redraws it per
call, which makes the drift noisy). `exact=True` computes the full Jacobian trace instead (D jvps
per drift call, for tiny inputs and tests). The ODE is solved with fixed-step RK4 (4 drift calls a
step) or Heun (2) on a grid; `jax.lax.fori_loop`, so the whole computation jits.

Bits/dim of 8-bit images: uniform dequantisation y = (k + u) / 256, u ~ U[0, 1) (score-SDE's
datasets.py), scaled to x = 2 y - 1 in [-1, 1); then the discrete probability of the 256^D bins is
bounded by the density, and bpd = -log p(x) / (D ln 2) + 7, where 7 = 8 + log2 of the derivative of
the inverse scaler x -> (x + 1) / 2 (reference section 1.6; 8 for data in [0, 1]). Average over
several dequantisation keys for a lower-variance estimate.

Keys: `bits_per_dim` splits rng into (dequantisation key, probe key); `log_likelihood` draws its
probe from its key with `draw_probe`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import objectives as obj
from research.diffusion import ode_samplers
from research.errors import UserError

PROBES = ("rademacher", "gaussian")
METHODS = ("rk4", "heun")
VecFn = Callable[[jax.Array], jax.Array]  # x [B, ...] -> [B, ...], examples independent


def _sum_flat(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)  # [B, ...] -> [B]


def draw_probe(rng: jax.Array, shape: tuple[int, ...], kind: str = "rademacher") -> jax.Array:
  """A Hutchinson probe [*shape] with E[e e^T] = I: Rademacher (+-1) or standard Gaussian."""
  if kind == "rademacher":
    return jax.random.rademacher(rng, shape, jnp.float32)
  if kind == "gaussian":
    return jax.random.normal(rng, shape, jnp.float32)
  raise UserError(f"unknown trace probe {kind!r}: use one of {list(PROBES)}")


def hutchinson_trace(fn: VecFn, x: jax.Array, probe: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(fn(x), e^T (dfn/dx) e per example [B]) with one jvp; fn must act per example."""
  fx, jvp = jax.jvp(fn, (x,), (probe,))
  return fx, _sum_flat(probe * jvp)


def exact_trace(fn: VecFn, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(fn(x), Tr(dfn/dx) per example [B]) from D jvps with the basis vectors (D = x[0].size)."""
  b, d = x.shape[0], math.prod(x.shape[1:])
  basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1, *x.shape[1:]))  # e_j, shared by the batch
  fx = fn(x)
  columns = jax.vmap(lambda e: jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))[1])(basis)
  diag = jnp.diagonal(columns.reshape(d, b, d), axis1=0, axis2=2)  # [B, D]: (J e_j)_j
  return fx, jnp.sum(diag, axis=-1)


def dequantize(rng: jax.Array, images: jax.Array) -> jax.Array:
  """uint8 [B, ...] -> x = 2 (k + u) / 256 - 1 in [-1, 1), u ~ U[0, 1) per element (float32)."""
  u = jax.random.uniform(rng, images.shape, jnp.float32)
  return 2.0 * (images.astype(jnp.float32) + u) / 256.0 - 1.0


def likelihood_grid(objective: obj.Objective, num_steps: int, t_min: float = 0.0) -> np.ndarray:
  """Uniform t_min -> t_max in float64 [num_steps + 1], data to noise (EDM needs t_min > 0)."""
  if int(num_steps) < 1:
    raise UserError(f"num_steps={num_steps} must be at least 1")
  if isinstance(objective, obj.EDMObjective) and t_min <= 0:
    raise UserError("EDM's drift is undefined at sigma = 0: pass t_min > 0, e.g. 1e-5")
  return np.linspace(t_min, objective.t_max, int(num_steps) + 1, dtype=np.float64)


def log_likelihood(
  rng: jax.Array,
  objective: obj.Objective,
  model_fn: ode_samplers.ModelFn,
  x: jax.Array,
  grid: np.ndarray | jax.Array,
  method: str = "rk4",
  exact: bool = False,
  probe: str = "rademacher",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """log p(x) in nats [B] of continuous x [B, ...] by the PF-ODE from grid[0] (data) to grid[-1].

  Returns (logp, {"prior_logp" [B], "delta_logp" [B] (the trace integral), "z" [B, ...] (the
  noise end), "nfe"}); nfe counts drift calls (each one jvp; D of them when exact).
  """
  if method not in METHODS:
    raise UserError(f"unknown ODE method {method!r} for the likelihood: use one of {list(METHODS)}")
  g = jnp.asarray(grid, jnp.float32)  # [N + 1]
  e = None if exact else draw_probe(rng, x.shape, probe)  # fixed for the whole solve

  def aug(y: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    f = lambda z: ode_samplers.drift_at(objective, model_fn, z, t)
    return exact_trace(f, y) if exact else hutchinson_trace(f, y, e)

  def rk4(i, state):
    y, ell = state
    t, h = g[i], g[i + 1] - g[i]
    k1, l1 = aug(y, t)
    k2, l2 = aug(y + 0.5 * h * k1, t + 0.5 * h)
    k3, l3 = aug(y + 0.5 * h * k2, t + 0.5 * h)
    k4, l4 = aug(y + h * k3, t + h)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), ell + h / 6 * (l1 + 2 * l2 + 2 * l3 + l4)

  def heun(i, state):
    y, ell = state
    t, h = g[i], g[i + 1] - g[i]
    k1, l1 = aug(y, t)
    k2, l2 = aug(y + h * k1, t + h)
    return y + 0.5 * h * (k1 + k2), ell + 0.5 * h * (l1 + l2)

  n = g.shape[0] - 1
  state = (x.astype(jnp.float32), jnp.zeros((x.shape[0],), jnp.float32))
  z, delta = jax.lax.fori_loop(0, n, rk4 if method == "rk4" else heun, state)
  s = objective.coefficients(g[-1:])[1][0]  # prior N(0, s(t_max)^2 I)
  d = math.prod(x.shape[1:])
  prior = -0.5 * d * jnp.log(2 * jnp.pi * s**2) - 0.5 * _sum_flat(jnp.square(z)) / s**2
  nfe = n * (4 if method == "rk4" else 2)
  return prior + delta, {"prior_logp": prior, "delta_logp": delta, "z": z, "nfe": jnp.int32(nfe)}


def bpd_from_log_likelihood(logp: jax.Array, dims: int, offset: float = 7.0) -> jax.Array:
  """-log p / (D ln 2) + offset: offset 7 for densities on [-1, 1]-scaled 8-bit data."""
  return -logp / (dims * math.log(2.0)) + offset


def bits_per_dim(
  rng: jax.Array,
  objective: obj.Objective,
  model_fn: ode_samplers.ModelFn,
  images: jax.Array,
  num_steps: int = 32,
  t_min: float = 0.0,
  method: str = "rk4",
  exact: bool = False,
  probe: str = "rademacher",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Bits/dim [B] of uint8 images [B, ...] (dequantised, scaled to [-1, 1]); aux adds "x"."""
  if images.dtype != jnp.uint8:
    raise UserError(f"bits_per_dim takes uint8 images, got {images.dtype}: pass the raw pixels")
  dequant_key, probe_key = jax.random.split(rng)
  x = dequantize(dequant_key, images)
  grid = likelihood_grid(objective, num_steps, t_min)
  logp, aux = log_likelihood(probe_key, objective, model_fn, x, grid, method, exact, probe)
  bpd = bpd_from_log_likelihood(logp, math.prod(images.shape[1:]))
  return bpd, {**aux, "logp": logp, "x": x}
