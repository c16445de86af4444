"""The dVAE's math: logit-Laplace density, pixel map, Gumbel-softmax, KL to uniform, schedules."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from research.tasks import dvae_math
from research.train.optim import make_schedule
from tests.run_helpers import REPO, load_config


@pytest.mark.parametrize("mu,b", [(0.0, 1.0), (1.5, 0.3), (-2.0, 0.05), (0.3, 2.0)])
def test_logit_laplace_integrates_to_one_over_the_unit_interval(mu, b):
  # float64, since for b > 1 the density has integrable y**(1/b - 1) singularities at 0 and 1.
  with jax.enable_x64(True):
    f = jax.jit(lambda y: jnp.exp(dvae_math.logit_laplace_log_prob(y, mu, jnp.log(b))))
    density = lambda y: float(f(jnp.float64(y)))
    # The mass concentrates around sigmoid(mu); split the interval there so quad sees the peak.
    peak = 1.0 / (1.0 + math.exp(-mu))
    total = sum(integrate.quad(density, a, c, limit=400)[0] for a, c in ((0, peak), (peak, 1)))
  assert total == pytest.approx(1.0, abs=1e-4)


def test_logit_laplace_matches_the_change_of_variables_of_a_laplace():
  rng = np.random.default_rng(0)
  y = rng.uniform(0.01, 0.99, 200)
  mu, b = rng.normal(size=200), rng.uniform(0.05, 3.0, 200)
  ours = np.asarray(dvae_math.logit_laplace_log_prob(jnp.asarray(y), jnp.asarray(mu), np.log(b)))
  # logit(y) ~ Laplace(mu, b); |d logit(y) / dy| = 1 / (y (1 - y)).
  logit = np.log(y) - np.log1p(-y)
  expected = stats.laplace.logpdf(logit, loc=mu, scale=b) - np.log(y) - np.log1p(-y)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
  # And the paper's per-pixel NLL form: ln(2b) + ln y + ln(1 - y) + |logit(y) - mu| / b.
  paper_nll = np.log(2 * b) + np.log(y) + np.log(1 - y) + np.abs(logit - mu) / b
  np.testing.assert_allclose(-ours, paper_nll, rtol=1e-4, atol=1e-4)


def test_pixel_map_round_trips_and_stays_inside_eps():
  levels = jnp.arange(256, dtype=jnp.float32) / 255.0
  y = dvae_math.map_pixels(levels)
  assert float(y.min()) == pytest.approx(0.1) and float(y.max()) == pytest.approx(0.9)
  back = np.round(np.asarray(dvae_math.unmap_pixels(y)) * 255.0).astype(np.int64)
  np.testing.assert_array_equal(back, np.arange(256))
  # Values outside (eps, 1 - eps), as a decoder mean can produce, clip into [0, 1].
  np.testing.assert_allclose(dvae_math.unmap_pixels(jnp.array([0.0, 1.0])), [0.0, 1.0])


def test_gumbel_softmax_approaches_one_hot_as_the_temperature_falls():
  logits = jnp.array([1.0, 0.5, -0.3, 0.0, 2.0])
  draws = 4000
  keys = jax.random.split(jax.random.key(0), draws)
  sharpness = []
  for tau in (2.0, 1.0, 0.3, 0.05, 0.01):
    z = jax.vmap(lambda k, t=tau: dvae_math.gumbel_softmax(k, logits, t))(keys)  # [N, K]
    np.testing.assert_allclose(np.asarray(z.sum(-1)), 1.0, rtol=1e-5)
    sharpness.append(float(jnp.mean(jnp.max(z, axis=-1))))
  assert all(a < b for a, b in zip(sharpness, sharpness[1:], strict=False)), sharpness
  assert sharpness[-1] > 0.99


def test_gumbel_softmax_mean_matches_the_softmax_only_as_tau_goes_to_zero():
  """argmax(logits + g) ~ Categorical(softmax(logits)) (Gumbel-max), so at small tau the mean of
  the relaxed samples is the softmax; at tau = 1 it is not (it is flatter)."""
  logits = jnp.array([1.0, 0.5, -0.3, 0.0, 2.0])
  p = np.asarray(jax.nn.softmax(logits))
  keys = jax.random.split(jax.random.key(1), 40_000)
  mean_at = lambda t: np.asarray(
    jnp.mean(jax.vmap(lambda k: dvae_math.gumbel_softmax(k, logits, t))(keys), axis=0)
  )
  se = np.sqrt(p * (1 - p) / len(keys))
  assert np.all(np.abs(mean_at(0.01) - p) < 5 * se + 1e-3), (mean_at(0.01), p)
  assert np.max(np.abs(mean_at(1.0) - p)) > 10 * se.max()  # the relaxation biases the mean
  hard = np.asarray(jax.vmap(lambda k: dvae_math.categorical_sample(k, logits))(keys)).mean(0)
  assert np.all(np.abs(hard - p) < 5 * se + 1e-3)


def test_kl_to_uniform_against_an_independent_computation():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 7, 16)) * 3.0
  q = np.exp(logits - logits.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  expected = np.sum(q * (np.log(q) - np.log(1.0 / 16)), axis=-1)  # KL(q || U) by definition
  ours = np.asarray(dvae_math.kl_to_uniform(jnp.asarray(logits, jnp.float32)))
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
  assert float(dvae_math.kl_to_uniform(jnp.zeros(16))) == pytest.approx(0.0, abs=1e-6)
  peaked = jnp.zeros(16).at[3].set(100.0)
  assert float(dvae_math.kl_to_uniform(peaked)) == pytest.approx(math.log(16), abs=1e-4)


def test_perplexity_of_code_counts():
  assert float(dvae_math.perplexity(jnp.ones(64))) == pytest.approx(64.0, rel=1e-5)
  assert float(dvae_math.perplexity(jnp.zeros(64).at[5].set(30.0))) == pytest.approx(1.0)
  two = dvae_math.perplexity(jnp.zeros(8).at[0].set(1.0).at[1].set(1.0))
  assert float(two) == pytest.approx(2.0, rel=1e-5)


def test_paper_schedules_hit_their_end_points():
  config = load_config(os.path.join(REPO, "experiments", "dvae_imagenet64.py"))
  t = config.task
  for as_step in (int, jnp.int32):  # host float64, and float32 as in the jitted step

    def beta(s, as_step=as_step):
      return float(dvae_math.cosine_schedule(as_step(s), 0.0, t.kl_weight, t.kl_warmup_steps))

    def tau(s, as_step=as_step):
      return float(dvae_math.cosine_schedule(as_step(s), t.tau_start, t.tau_end, t.tau_steps))

    assert beta(0) == 0.0 and beta(5_000) == pytest.approx(6.6, rel=1e-6)
    assert beta(2_500) == pytest.approx(3.3, rel=1e-5)  # half way along the cosine
    assert beta(1_000_000) == pytest.approx(6.6, rel=1e-6)
    assert tau(0) == pytest.approx(1.0) and tau(150_000) == pytest.approx(1 / 16, rel=1e-6)
    assert tau(3_000_000) == pytest.approx(1 / 16, rel=1e-6)
    assert tau(75_000) == pytest.approx((1 + 1 / 16) / 2, rel=1e-5)
  lr = make_schedule(config.optim.model, config.train.num_steps)
  assert float(lr(0)) == pytest.approx(1e-4)
  assert float(lr(600_000)) == pytest.approx((1e-4 + 1.25e-6) / 2, rel=1e-4)
  assert float(lr(1_200_000)) == pytest.approx(1.25e-6, rel=1e-4)
  assert config.optim.model.name == "adamw" and config.optim.model.weight_decay == 1e-4
  assert config.train.ema_decay == 0.999
  # Inside jit, from the int32 step the train step passes.
  tau_jit = jax.jit(lambda s: dvae_math.cosine_schedule(s, 1.0, 1 / 16, 150_000))
  assert float(tau_jit(jnp.int32(150_000))) == pytest.approx(1 / 16, rel=1e-6)
  assert float(dvae_math.cosine_schedule(7, 0.0, 6.6, 0)) == 6.6  # no ramp: the end value
