"""Flow-model likelihood by the PF-ODE: the trace estimators, and bits/dim of Gaussian data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from research.diffusion import flow_likelihood as fl
from research.diffusion import objectives as obj
from research.errors import UserError
from tests import gaussian_toys as toys

FLOW = obj.FlowObjective()
MEAN = np.array([0.2, -0.4])
COV = np.array([[0.3, 0.1], [0.1, 0.2]])


def _tiny_net(seed: int = 0):
  """A 2-layer tanh MLP acting per example on [B, 3]: Jacobian entries all nonzero."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  w1, w2 = jax.random.normal(k1, (3, 8)), jax.random.normal(k2, (8, 3)) / 3
  return lambda x: jnp.tanh(x @ w1) @ w2


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_estimate_averages_to_the_exact_trace(kind):
  f = _tiny_net()
  x = jax.random.normal(jax.random.key(1), (4, 3))
  _, exact = fl.exact_trace(f, x)
  jac = jax.vmap(jax.jacfwd(lambda v: f(v[None])[0]))(x)  # [B, 3, 3]
  np.testing.assert_allclose(exact, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-5)
  probes = fl.draw_probe(jax.random.key(2), (4000, 4, 3), kind)
  fx, est = jax.vmap(lambda e: fl.hutchinson_trace(f, x, e))(probes)  # est [4000, B]
  np.testing.assert_allclose(fx[0], f(x), rtol=1e-6)
  se = np.asarray(jnp.std(est, 0)) / math.sqrt(4000)
  assert np.all(np.abs(np.asarray(jnp.mean(est, 0) - exact)) < 4 * se + 1e-6)
  if kind == "rademacher":  # e_i^2 = 1: the diagonal is exact, only off-diagonal terms vary
    assert set(np.unique(np.asarray(probes))) == {-1.0, 1.0}


def test_exact_log_likelihood_of_a_gaussian_matches_its_density():
  """Data N(m, S) in 2-D under its exact velocity: log p by the ODE equals the log density."""
  model = toys.model_fn(FLOW, MEAN, COV)
  x = jnp.asarray(stats.multivariate_normal(MEAN, COV).rvs(64, random_state=0), jnp.float32)
  grid = fl.likelihood_grid(FLOW, 24)
  run = jax.jit(lambda x: fl.log_likelihood(jax.random.key(0), FLOW, model, x, grid, exact=True))
  logp, aux = run(x)
  want = stats.multivariate_normal(MEAN, COV).logpdf(np.asarray(x, np.float64))
  np.testing.assert_allclose(logp, want, atol=2e-3)
  assert int(aux["nfe"]) == 96
  # At t = 1 the flow has carried x to a standard normal point with the prior's log density.
  prior = stats.multivariate_normal(np.zeros(2)).logpdf(np.asarray(aux["z"], np.float64))
  np.testing.assert_allclose(aux["prior_logp"], prior, rtol=1e-5)
  logp_heun, _ = fl.log_likelihood(jax.random.key(0), FLOW, model, x, grid, "heun", exact=True)
  np.testing.assert_allclose(logp_heun, want, atol=3e-2)


def test_hutchinson_bits_per_dim_of_a_gaussian_match_its_entropy():
  """E[-log p] over data = the entropy 0.5 log det(2 pi e S); one fixed probe per sample."""
  model = toys.model_fn(FLOW, MEAN, COV)
  n = 4096
  x = jnp.asarray(stats.multivariate_normal(MEAN, COV).rvs(n, random_state=1), jnp.float32)
  grid = fl.likelihood_grid(FLOW, 12)
  logp, _ = jax.jit(lambda k: fl.log_likelihood(k, FLOW, model, x, grid))(jax.random.key(3))
  bpd = fl.bpd_from_log_likelihood(logp, 2, offset=0.0)
  entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * COV))
  want = entropy / (2 * np.log(2))
  se = float(jnp.std(bpd)) / math.sqrt(n)
  assert abs(float(jnp.mean(bpd)) - want) < 4 * se


def test_the_probe_is_drawn_once_from_the_key_and_kept_for_the_whole_solve():
  """A linear velocity has dv/dx = A(t) = (t I - (1-t) S) V_t^-1: with the documented probe e,
  the trace integral is int_0^1 e^T A(t) e dt exactly (a probe redrawn per call would not be)."""
  model = toys.model_fn(FLOW, MEAN, COV)
  x = jnp.asarray(stats.multivariate_normal(MEAN, COV).rvs(4, random_state=2), jnp.float32)
  key = jax.random.key(6)
  _, aux = fl.log_likelihood(key, FLOW, model, x, fl.likelihood_grid(FLOW, 16))
  e = np.asarray(fl.draw_probe(key, x.shape), np.float64)  # [B, 2]
  ts = np.linspace(0.0, 1.0, 2001)
  quad = []
  for t in ts:
    a = (t * np.eye(2) - (1 - t) * COV) @ np.linalg.inv((1 - t) ** 2 * COV + t**2 * np.eye(2))
    quad.append(np.einsum("bi,ij,bj->b", e, a, e))
  np.testing.assert_allclose(aux["delta_logp"], np.trapezoid(quad, ts, axis=0), atol=1e-3)


def test_bits_per_dim_dequantizes_uint8_and_adds_7():
  """Per-pixel data N(m, c^2) on [-1, 1]: bpd = -log2 N(x)/D + 7 at the dequantized x itself."""
  m, c = 0.1, 0.5
  images = jax.random.randint(jax.random.key(4), (16, 2, 2, 1), 0, 256).astype(jnp.uint8)

  def model(x_in, t):  # the exact per-pixel flow velocity of N(m, c^2), images [B, 2, 2, 1]
    v = toys.velocity(m, c)(x_in.reshape(x_in.shape[0], -1), t / 1000.0)
    return v.reshape(x_in.shape)

  rng = jax.random.key(5)
  bpd, aux = jax.jit(lambda r: fl.bits_per_dim(r, FLOW, model, images, num_steps=16, exact=True))(
    rng
  )
  x = np.asarray(aux["x"], np.float64)
  dequant_key, _ = jax.random.split(rng)
  np.testing.assert_allclose(x, fl.dequantize(dequant_key, images), rtol=0, atol=0)
  k = np.asarray(images, np.float64)
  assert np.all(x >= 2 * k / 256 - 1) and np.all(x < 2 * (k + 1) / 256 - 1)  # in its own bin
  logp = stats.norm(m, c).logpdf(x).reshape(16, -1).sum(1)
  np.testing.assert_allclose(bpd, -logp / (4 * np.log(2)) + 7.0, atol=2e-3)


def test_likelihood_errors_are_user_errors():
  with pytest.raises(UserError, match="uint8"):
    fl.bits_per_dim(jax.random.key(0), FLOW, lambda x, c: x, jnp.zeros((1, 2, 2, 1)))
  with pytest.raises(UserError, match="t_min > 0"):
    fl.likelihood_grid(obj.EDMObjective(), 8)
  with pytest.raises(UserError, match="probe"):
    fl.draw_probe(jax.random.key(0), (2,), "sphere")
  with pytest.raises(UserError, match="method"):
    fl.log_likelihood(jax.random.key(0), FLOW, lambda x, c: x, jnp.zeros((1, 2)), [0, 1], "rk45")
  np.testing.assert_allclose(fl.likelihood_grid(obj.EDMObjective(), 2, 1e-5), [1e-5, 40.000005, 80])
