"""VAE math against independent references (SciPy / NumPy in float64)."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats

from research.tasks import vae_math


def test_analytic_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 4))
  logvar = rng.normal(scale=0.5, size=(3, 4))
  analytic = np.asarray(vae_math.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
  z = mean + np.exp(0.5 * logvar) * rng.normal(size=(200_000, 3, 4))
  log_q = stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)
  log_p = stats.norm.logpdf(z).sum(-1)
  np.testing.assert_allclose(analytic, (log_q - log_p).mean(0), rtol=0.02)


def test_gaussian_log_prob_matches_scipy():
  z, mean, logvar = np.array([[0.3, -1.0]]), np.array([[0.1, 0.5]]), np.array([[0.2, -0.4]])
  expected = stats.multivariate_normal(mean[0], np.diag(np.exp(logvar[0]))).logpdf(z[0])
  got = vae_math.gaussian_log_prob(jnp.asarray(z), jnp.asarray(mean), jnp.asarray(logvar))
  np.testing.assert_allclose(got, [expected], rtol=1e-5)


def test_bernoulli_log_prob_matches_formula_and_is_stable():
  logits = np.array([-3.0, 0.0, 2.5, 1.5]).reshape(1, 2, 2, 1)
  x = np.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  p = special.expit(logits)
  expected = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))  # the textbook form, float64
  got = float(vae_math.bernoulli_log_prob(jnp.asarray(logits), jnp.asarray(x))[0])
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Saturated logits stay finite (log(1 - sigmoid(200)) = -200, not log(0)).
  big = vae_math.bernoulli_log_prob(jnp.full((1, 1, 1, 1), 200.0), jnp.zeros((1, 1, 1, 1)))
  np.testing.assert_allclose(float(big[0]), -200.0, rtol=1e-5)


def test_discretized_logistic_sums_to_one_over_the_256_levels():
  levels = jnp.arange(256) / 127.5 - 1.0
  for mean, log_scale in [(0.0, -2.0), (0.9, -4.0), (-0.7, -1.0), (0.2, -6.5)]:
    x = levels.reshape(256, 1, 1, 1)
    lp = vae_math.discretized_logistic_log_prob(
      jnp.full_like(x, mean), jnp.full_like(x, log_scale), x
    )
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(lp))), 1.0, atol=2e-4)
    # Each level's probability is the logistic CDF difference over its bin (float64 reference).
    s = np.exp(log_scale)
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1.0, [np.inf]])
    ref = np.diff(special.expit((edges - mean) / s))
    mask = ref > 1e-6
    np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64))[mask], ref[mask], rtol=2e-3)


def test_elbo_below_iwae_below_log_marginal_on_a_linear_gaussian_model():
  """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I): log p(x) = log N(x; b, WW^T + s^2 I) exactly."""
  rng = np.random.default_rng(1)
  dz, dx, s = 2, 5, 0.5
  w, b = rng.normal(size=(dx, dz)), rng.normal(size=dx)
  x = rng.normal(size=dx) * 2
  log_px = stats.multivariate_normal(b, w @ w.T + s**2 * np.eye(dx)).logpdf(x)
  # A deliberately imperfect q(z|x): the true posterior mean, a too-narrow diagonal variance.
  cov = np.linalg.inv(np.eye(dz) + w.T @ w / s**2)
  q_mean, q_logvar = cov @ w.T @ (x - b) / s**2, np.log(np.diag(cov) * 0.3)

  def bound(k, seed):
    key = jax.random.key(seed)
    z = q_mean + np.exp(0.5 * q_logvar) * np.asarray(jax.random.normal(key, (k, 400, dz)))
    log_lik = stats.norm.logpdf(x, z @ w.T + b, s).sum(-1)
    log_w = (
      log_lik
      + np.asarray(vae_math.gaussian_log_prob(jnp.asarray(z), 0.0, jnp.zeros(dz)))
      - np.asarray(vae_math.gaussian_log_prob(jnp.asarray(z), q_mean, q_logvar))
    )
    return float(np.mean(vae_math.iwae_bound(jnp.asarray(log_w))))

  elbo, l10, l100, l2000 = bound(1, 0), bound(10, 1), bound(100, 2), bound(2000, 3)
  assert elbo < l10 < l100 < l2000 <= log_px + 1e-3
  assert log_px - l2000 < 0.05 * (log_px - elbo)


def test_slerp_endpoints_and_norm():
  a, b = jnp.array([3.0, 0.0, 0.0]), jnp.array([0.0, 3.0, 0.0])
  path = vae_math.slerp(a, b, jnp.linspace(0, 1, 5))
  np.testing.assert_allclose(path[0], a, atol=1e-5)
  np.testing.assert_allclose(path[-1], b, atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(path, axis=-1), 3.0, rtol=1e-5)  # stays on the sphere
  # Parallel vectors fall back to linear interpolation instead of dividing by sin(0).
  same = vae_math.slerp(a, 2 * a, jnp.array([0.5]))
  np.testing.assert_allclose(same[0], 1.5 * a, rtol=1e-5)


def test_eval_binarisation_depends_on_the_image_alone():
  from research.tasks.vae import image_keys

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8))
  base = jax.random.key(3)
  whole = jax.random.key_data(image_keys(base, images))
  halves = jnp.concatenate(
    [
      jax.random.key_data(image_keys(base, images[3:])),
      jax.random.key_data(image_keys(base, images[:3])),
    ]
  )
  np.testing.assert_array_equal(whole, jnp.concatenate([halves[3:], halves[:3]]))
  assert len({tuple(k) for k in np.asarray(whole)}) == 6  # different images, different keys
