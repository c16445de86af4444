"""Exact networks for Gaussian data N(m, S) in R^d, for the objectives' samplers and likelihood.

On a path x_t = a x0 + s eps, x_t ~ N(a m, a^2 S + s^2 I) jointly Gaussian with x0, so
E[x0 | x_t] = m + a S (a^2 S + s^2 I)^-1 (x_t - a m) and E[eps | x_t] = (x_t - a E[x0 | x_t]) / s;
every objective's optimal raw output follows from these. Examples are rows of x [B, d].
"""

import jax.numpy as jnp
import numpy as np

from research.diffusion import objectives as obj
from research.diffusion.meanflow import MeanFlowObjective


def posterior_mean(m: np.ndarray, cov: np.ndarray, a: jnp.ndarray, s: jnp.ndarray, x: jnp.ndarray):
  """E[x0 | x_t] [B, d] for per-row coefficients a, s [B]."""
  d = len(m)
  m, cov = jnp.asarray(m, jnp.float32), jnp.asarray(cov, jnp.float32)
  var = a[:, None, None] ** 2 * cov + s[:, None, None] ** 2 * jnp.eye(d)  # [B, d, d]
  resid = jnp.linalg.solve(var, (x - a[:, None] * m)[..., None])[..., 0]  # [B, d]
  return m + a[:, None] * resid @ cov.T


def flow_velocity(m: np.ndarray, cov: np.ndarray, t: jnp.ndarray, x: jnp.ndarray):
  """E[eps - x0 | x_t] = -m + (t I - (1 - t) S) V_t^-1 (x - (1 - t) m), V_t = (1 - t)^2 S + t^2 I.

  (Cov(eps - x0, x_t) = t I - (1 - t) S.) Finite at t = 0, where it is -x.
  """
  d = len(m)
  m, cov, eye = jnp.asarray(m, jnp.float32), jnp.asarray(cov, jnp.float32), jnp.eye(d)
  tb = t[:, None, None]
  var = (1.0 - tb) ** 2 * cov + tb**2 * eye  # [B, d, d]
  gain = tb * eye - (1.0 - tb) * cov  # commutes with var
  resid = jnp.linalg.solve(var, (x - (1.0 - t[:, None]) * m)[..., None])  # [B, d, 1]
  return -m + (gain @ resid)[..., 0]


def model_fn(objective, m, cov):
  """The exact `model_fn(x_in, c_noise) -> net_out` of a flow, MeanFlow (r = t) or EDM objective."""

  def fn(x_in, c):
    if isinstance(objective, obj.EDMObjective):
      sigma = jnp.exp(4.0 * c)
      x = x_in * jnp.sqrt(sigma**2 + objective.sigma_data**2)[:, None]
      a, s = objective.coefficients(sigma)
      x0 = posterior_mean(m, cov, a, s, x)
      c_skip, c_out, _, _ = objective.preconditioning(sigma)
      return (x0 - c_skip[:, None] * x) / c_out[:, None]
    if isinstance(objective, MeanFlowObjective):
      c = c[:, 0]  # h = 0 is all the ODE samplers use
    return flow_velocity(m, cov, c / objective.time_scale, x_in)

  return fn


def flow_sigma(c: float, t):
  """Marginal std of one coordinate of the flow path for data std c: sqrt((1-t)^2 c^2 + t^2)."""
  return jnp.sqrt((1.0 - t) ** 2 * c**2 + t**2)


def average_velocity(m: float, c: float):
  """u(z, t, r) of 1-D data N(m, c^2) per coordinate: x_t = (1 - t) m + sigma_t xi along the ODE.

  (The PF-ODE of a 1-D Gaussian family keeps xi = (x_t - (1 - t) m) / sigma_t fixed.) For t > r:
  u = (x_t - x_r) / (t - r) = -m + (sigma_t - sigma_r) / (t - r) xi.
  """

  def u(z, t, r):
    tb, rb = t[:, None], r[:, None]
    xi = (z - (1.0 - tb) * m) / flow_sigma(c, tb)
    return -m + (flow_sigma(c, tb) - flow_sigma(c, rb)) / (tb - rb) * xi

  return u


def velocity(m: float, c: float):
  """v(z, t) = -m + d sigma_t/dt xi, the instantaneous velocity (1-D data N(m, c^2))."""

  def v(z, t):
    tb = t[:, None]
    sig = flow_sigma(c, tb)
    return -m + (tb - (1.0 - tb) * c**2) / sig**2 * (z - (1.0 - tb) * m)

  return v
