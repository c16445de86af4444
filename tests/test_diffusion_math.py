"""Diffusion math against independent float64 references and exactly solvable toys.

The toys: data x0 ~ N(m, s^2) per pixel (or a point mass, s = 0). Then x_t = a x0 + b eps with
a = sqrt(abar_t), b = sqrt(1 - abar_t) is jointly Gaussian with eps and x0, so the optimal
predictions are the conditional means E[eps | x_t] = b (x_t - a m) / (a^2 s^2 + b^2) and
E[x0 | x_t] = m + a s^2 (x_t - a m) / (a^2 s^2 + b^2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from research.diffusion import likelihood as lk
from research.diffusion import samplers as sp
from research.diffusion import schedules as sch
from research.errors import UserError

LN2 = np.log(2.0)


def gaussian_denoiser(schedule, m, s, target):
  """The exact model for data N(m, s^2), as a function of the ORIGINAL timestep index."""
  abar = jnp.asarray(schedule.numpy["alphas_cumprod"], jnp.float32)

  def fn(x, t):
    a = jnp.sqrt(abar[t]).reshape(-1, 1, 1, 1)
    b = jnp.sqrt(1.0 - abar[t]).reshape(-1, 1, 1, 1)
    var = a**2 * s**2 + b**2
    eps = b * (x - a * m) / var
    x0 = m + a * s**2 * (x - a * m) / var
    return eps if target == "eps" else a * eps - b * x0

  return fn


# ---------------------------------------------------------------- schedules


def test_linear_schedule_matches_closed_form():
  s = sch.linear_schedule(1000)
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.exp(np.cumsum(np.log1p(-betas)))  # the product, by another route
  np.testing.assert_allclose(s.numpy["alphas_cumprod"], abar, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod), abar, rtol=2e-5)
  assert s.alphas_cumprod.dtype == jnp.float32
  np.testing.assert_allclose(abar[-1], 4.036e-5, rtol=1e-3)  # abar_T of Ho et al.
  assert np.all(np.diff(s.numpy["betas"]) > 0) and np.all(np.diff(s.numpy["alphas_cumprod"]) < 0)
  # Rescaled by 1000/T (improved-diffusion), so T = 50 noises about as far.
  s50 = sch.linear_schedule(50)
  np.testing.assert_allclose(s50.numpy["betas"], np.linspace(2e-3, 0.4, 50), rtol=1e-12)
  assert s50.numpy["alphas_cumprod"][-1] < 1e-4
  unscaled = sch.linear_schedule(50, rescale=False)
  np.testing.assert_allclose(unscaled.numpy["betas"], np.linspace(1e-4, 0.02, 50), rtol=1e-12)


def test_cosine_schedule_matches_closed_form():
  T, s = 100, 0.008
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  abar = f(np.arange(1, T + 1) / T) / f(0.0)  # code index t is the paper's t + 1
  sched = sch.make_schedule("cosine", T)
  got = sched.numpy["alphas_cumprod"]
  # Only the last beta (1 - f(1)/f(1 - 1/T) = 1) is clipped to 0.999.
  np.testing.assert_allclose(got[:-1], abar[:-1], rtol=1e-10)
  np.testing.assert_allclose(got[-1], abar[-2] * 0.001, rtol=1e-10)
  assert sched.numpy["betas"][-1] == 0.999 and np.all(sched.numpy["betas"][:-1] < 0.999)
  assert np.all(np.diff(got) < 0) and got[-1] < 1e-5


def test_bad_schedule_names_and_betas_raise_user_errors():
  with pytest.raises(UserError, match="unknown noise schedule 'quadratic'"):
    sch.make_schedule("quadratic", 100)
  with pytest.raises(UserError, match=r"\(0, 1\)"):
    sch.linear_schedule(20)  # rescaled beta_end = 0.02 * 50 = 1
  with pytest.raises(UserError, match="target"):
    sch.predict_x0(sch.linear_schedule(50), jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32), 0, "x")
  with pytest.raises(UserError, match="spacing"):
    sch.timestep_subsequence(100, 10, "cubic")


def test_posterior_is_gaussian_conditioning():
  """q(x_{t-1} | x_t, x0) from the joint of x_{t-1} ~ q(. | x0) and x_t = sqrt(alpha) x_{t-1} + ..."""
  s = sch.linear_schedule(100)
  ab, betas = s.numpy["alphas_cumprod"], s.numpy["betas"]
  rng = np.random.default_rng(0)
  t = rng.integers(0, 100, size=16)
  t[:2] = [0, 1]
  x0, x_t = rng.uniform(-1, 1, (16, 2, 2, 1)), rng.normal(size=(16, 2, 2, 1))
  ab_prev = np.where(t > 0, ab[np.maximum(t - 1, 0)], 1.0)
  prior_mean, prior_var = np.sqrt(ab_prev), 1 - ab_prev  # x_{t-1} | x0, per unit x0
  alpha = 1 - betas[t]
  gain = np.sqrt(alpha) * prior_var / (alpha * prior_var + betas[t])
  var = prior_var - gain * np.sqrt(alpha) * prior_var
  bc = lambda v: v.reshape(-1, 1, 1, 1)
  mean = bc(prior_mean) * x0 + bc(gain) * (x_t - bc(np.sqrt(alpha) * prior_mean) * x0)
  got_mean, got_var, got_logvar = sch.q_posterior(
    s, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t)
  )
  np.testing.assert_allclose(np.asarray(got_mean), mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_var).ravel(), var, rtol=1e-5, atol=1e-10)
  # The clipped log variance: log beta~_t, with t = 0 (beta~ = 0) replaced by t = 1.
  np.testing.assert_allclose(np.asarray(got_logvar).ravel()[1:], np.log(var[1:]), rtol=1e-5)
  np.testing.assert_allclose(float(got_logvar.ravel()[0]), np.log(var[1]), rtol=1e-5)


def test_eps_and_v_predictions_round_trip():
  s = sch.cosine_schedule(100)
  key = jax.random.key(0)
  x0 = jax.random.uniform(key, (8, 4, 4, 3), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
  t = jnp.arange(0, 96, 12, dtype=jnp.int32)
  x_t = sch.q_sample(s, x0, t, noise)
  for target in ("eps", "v"):
    out = sch.training_target(s, x0, t, noise, target)
    np.testing.assert_allclose(sch.predict_x0(s, x_t, t, out, target), x0, atol=2e-4)
    np.testing.assert_allclose(sch.predict_eps(s, x_t, t, out, target), noise, atol=2e-4)
  a = np.sqrt(s.numpy["alphas_cumprod"][np.asarray(t)]).reshape(-1, 1, 1, 1)
  v = sch.training_target(s, x0, t, noise, "v")
  np.testing.assert_allclose(v, a * noise - np.sqrt(1 - a**2) * x0, atol=1e-5)
  np.testing.assert_allclose(sch.eps_from_x0(s, x_t, t, x0), noise, atol=2e-3)


def test_learned_range_variance_interpolates_between_beta_and_beta_tilde():
  s = sch.linear_schedule(50)
  t = jnp.arange(50, dtype=jnp.int32)
  x = jnp.zeros((50, 1, 1, 1))
  ends = [sch.model_log_variance(s, x, t, "learned_range", jnp.full_like(x, v)) for v in (1, -1)]
  np.testing.assert_allclose(np.ravel(ends[0]), np.log(s.numpy["betas"]), rtol=1e-5)
  small = sch.model_log_variance(s, x, t, "beta_tilde", None)
  np.testing.assert_allclose(ends[1], small, rtol=1e-6)
  # fixedlarge: log beta_t except the first entry, log beta~_1.
  large = np.ravel(sch.model_log_variance(s, x, t, "beta", None))
  np.testing.assert_allclose(large[1:], np.log(s.numpy["betas"][1:]), rtol=1e-5)
  np.testing.assert_allclose(large[0], np.log(s.numpy["posterior_variance"][1]), rtol=1e-5)


# ---------------------------------------------------------------- guidance and samplers


def test_cfg_combine_conventions_and_v_space_equals_eps_space():
  key = jax.random.key(3)
  c, u = jax.random.normal(key, (2, 4, 3, 3, 2))
  np.testing.assert_array_equal(sp.cfg_combine(c, u, 0.0), c)
  np.testing.assert_allclose(sp.cfg_combine(c, u, 1.0), 2 * c - u, rtol=1e-6)
  # Guiding v predictions and converting equals converting and guiding eps predictions.
  s = sch.linear_schedule(100)
  x_t = jax.random.normal(jax.random.fold_in(key, 1), c.shape)
  t = jnp.array([0, 10, 50, 99], jnp.int32)
  w = 2.5
  eps_of = lambda v: sch.predict_eps(s, x_t, t, v, "v")
  np.testing.assert_allclose(
    eps_of(sp.cfg_combine(c, u, w)), sp.cfg_combine(eps_of(c), eps_of(u), w), atol=1e-5
  )
  # learned_range: only the target half is guided; the variance half is the conditional one.
  fn = sp.guided(
    lambda x, t: jnp.concatenate([c, c + 7], -1), lambda x, t: jnp.concatenate([u, u], -1), w, True
  )
  out = fn(x_t, t)
  np.testing.assert_allclose(out[..., :2], sp.cfg_combine(c, u, w), rtol=1e-6)
  np.testing.assert_array_equal(out[..., 2:], c + 7)


def test_ddim_sigma_is_eq16_on_a_subsequence_and_sqrt_beta_tilde_at_eta_1():
  base = sch.linear_schedule(100)
  tau = sch.timestep_subsequence(100, 10, "uniform")
  np.testing.assert_array_equal(tau, np.arange(0, 100, 10))
  ab = base.numpy["alphas_cumprod"][tau]
  ab_prev = np.append(1.0, ab[:-1])
  eq16 = 0.5 * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
  respaced = sch.respace(base, tau)
  np.testing.assert_allclose(sp.ddim_sigmas(respaced, 0.5), eq16, rtol=1e-10, atol=1e-15)
  np.testing.assert_array_equal(respaced.numpy["timesteps"], tau)
  np.testing.assert_allclose(respaced.numpy["alphas_cumprod"], ab, rtol=1e-12)
  np.testing.assert_allclose(
    sp.ddim_sigmas(base, 1.0), np.sqrt(base.numpy["posterior_variance"]), rtol=1e-12
  )


@pytest.mark.parametrize("target", ["eps", "v"])
def test_ddim_eta_1_step_is_the_ancestral_beta_tilde_step(target):
  s = sch.linear_schedule(100)
  n, t_idx, x_val = 20_000, 40, 0.7
  den = gaussian_denoiser(s, 0.2, 0.3, target)
  x_t = jnp.full((n, 1, 1, 1), x_val)
  t = jnp.full((n,), t_idx, jnp.int32)
  out = den(x_t, t)
  z1, z2 = jax.random.normal(jax.random.key(5), (2, n, 1, 1, 1))
  ddim = sp.ddim_step(s, x_t, t, out, z1, target, eta=1.0, clip_x0=False)
  ddpm = sp.ddpm_step(s, x_t, t, out, z2, target, "beta_tilde", clip_x0=False)
  # The independent reference: the posterior mean at the exact x0_hat, std sqrt(beta~).
  ab, b = s.numpy["alphas_cumprod"], s.numpy["betas"]
  a_t, a_p = ab[t_idx], ab[t_idx - 1]
  x0_hat = 0.2 + np.sqrt(a_t) * 0.09 * (x_val - np.sqrt(a_t) * 0.2) / (a_t * 0.09 + 1 - a_t)
  mean = (np.sqrt(a_p) * b[t_idx] * x0_hat + (1 - a_p) * np.sqrt(1 - b[t_idx]) * x_val) / (1 - a_t)
  std = np.sqrt(b[t_idx] * (1 - a_p) / (1 - a_t))
  for x in (ddim, ddpm):
    np.testing.assert_allclose(float(jnp.mean(x)), mean, atol=4 * std / np.sqrt(n))
    np.testing.assert_allclose(float(jnp.std(x)), std, rtol=0.02)
  zero = jnp.zeros_like(z1)
  np.testing.assert_allclose(
    sp.ddim_step(s, x_t, t, out, zero, target, 1.0, False)[0, 0, 0, 0], mean, rtol=1e-5
  )


def test_the_last_step_adds_no_noise_and_returns_x0_hat():
  s = sch.linear_schedule(50)
  key = jax.random.key(8)
  x_t, out, z = jax.random.normal(key, (3, 8, 2, 2, 1))
  t0 = jnp.zeros((8,), jnp.int32)
  x0_hat = sch.predict_x0(s, x_t, t0, out, "eps")
  for variance in ("beta", "beta_tilde"):
    np.testing.assert_allclose(
      sp.ddpm_step(s, x_t, t0, out, z, "eps", variance, False), x0_hat, atol=1e-5
    )
  np.testing.assert_allclose(sp.ddim_step(s, x_t, t0, out, z, "eps", 1.0, False), x0_hat, atol=1e-5)
  # One step earlier the noise enters with std sqrt(beta_1) ("beta").
  t1 = t0 + 1
  step = lambda noise: sp.ddpm_step(s, x_t, t1, out, noise, "eps", "beta", False)
  np.testing.assert_allclose(
    step(z) - step(0 * z), np.sqrt(s.numpy["betas"][1]) * z, rtol=1e-4, atol=1e-6
  )


def test_ddim_eta_0_is_deterministic_given_x_T():
  s = sch.linear_schedule(100)
  den = gaussian_denoiser(s, 0.2, 0.3, "eps")
  x_T = jax.random.normal(jax.random.key(0), (16, 2, 2, 1))
  run = lambda seed, x: sp.ddim_sample(jax.random.key(seed), s, den, x.shape, "eps", 10, x_T=x)
  a, b = run(1, x_T), run(2, x_T)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, run(1, x_T + 0.5))
  noisy = [
    sp.ddim_sample(jax.random.key(k), s, den, x_T.shape, "eps", 10, 1.0, x_T=x_T) for k in (1, 2)
  ]
  assert not np.allclose(*noisy)


def predicted_moments(abar, tau, m, s, kind, eta=0.0):
  """Mean and std of x_0 from the exact denoiser run on the subsequence tau, in closed form.

  With the exact denoiser every step is affine in u = x_t - sqrt(abar_t) m:
  u_{t-1} = k u_t + sigma z, so the moments follow a scalar recursion from u_T = x_T - a_T m.
  DDIM (eq. 12): k = (a' a s^2 + d b) / V with d = sqrt(1 - a'^2 - sigma^2), V = a^2 s^2 + b^2;
  DDPM: k = c1 a s^2 / V + c2 with the posterior coefficients of the chain on tau (eq. 7).
  """
  ab = abar[tau]
  ab_prev = np.append(1.0, ab[:-1])
  mean_u, var_u = -np.sqrt(ab[-1]) * m, 1.0
  for i in reversed(range(len(tau))):
    a, b, a_p = np.sqrt(ab[i]), np.sqrt(1 - ab[i]), np.sqrt(ab_prev[i])
    v = a**2 * s**2 + b**2
    beta = 1 - ab[i] / ab_prev[i]
    beta_tilde = beta * (1 - ab_prev[i]) / (1 - ab[i])
    if kind == "ddim":
      sig2 = eta**2 * beta_tilde
      k = (a_p * a * s**2 + np.sqrt(1 - ab_prev[i] - sig2) * b) / v
    else:
      c1, c2 = beta * a_p / (1 - ab[i]), (1 - ab_prev[i]) * np.sqrt(1 - beta) / (1 - ab[i])
      k = c1 * a * s**2 / v + c2
      sig2 = 0.0 if i == 0 else (beta if kind == "ddpm_beta" else beta_tilde)
    mean_u, var_u = k * mean_u, k**2 * var_u + sig2
  return m + mean_u, np.sqrt(var_u)


@pytest.mark.parametrize(
  "sampler",
  ["ddpm_beta", "ddpm_beta_tilde_v", "ddpm_respaced_100", "ddim_50", "ddim_50_v", "ddim_50_eta1"],
)
def test_samplers_with_the_exact_denoiser_recover_the_data_distribution(sampler):
  m, sd, n = 0.2, 0.5, 20_000
  s = sch.linear_schedule(1000)
  abar = np.exp(np.cumsum(np.log1p(-np.linspace(1e-4, 0.02, 1000))))
  target = "v" if sampler.endswith("_v") else "eps"
  den = gaussian_denoiser(s, m, sd, target)
  key, shape = jax.random.key(7), (n, 1, 1, 1)
  if sampler.startswith("ddpm"):
    variance = "beta" if sampler == "ddpm_beta" else "beta_tilde"
    steps = 100 if "respaced" in sampler else None
    x = sp.ddpm_sample(key, s, den, shape, target, variance, clip_x0=False, num_steps=steps)
    tau = np.arange(1000) if steps is None else np.round(np.linspace(0, 999, 100)).astype(int)
    ref = predicted_moments(abar, tau, m, sd, "ddpm_" + variance)
  else:
    eta = 1.0 if sampler.endswith("eta1") else 0.0
    x = sp.ddim_sample(key, s, den, shape, target, 50, eta=eta, clip_x0=False)
    ref = predicted_moments(abar, np.arange(0, 1000, 20), m, sd, "ddim", eta)
  assert x.shape == shape and x.dtype == jnp.float32
  mean, std = float(jnp.mean(x)), float(jnp.std(x))
  print(f"{sampler}: mean {mean:.4f} (exact chain {ref[0]:.4f}), std {std:.4f} ({ref[1]:.4f})")
  # The exact moments of this discretization, to sampling error (std error ~ 0.5% at n = 20k) ...
  np.testing.assert_allclose(mean, ref[0], atol=4 * ref[1] / np.sqrt(n))
  np.testing.assert_allclose(std, ref[1], rtol=0.02)
  # ... which are the data's for the full chains. Few-step chains under-disperse (each step shrinks
  # the std by a Cauchy-Schwarz factor on this toy): DDIM-50 by ~6%, DDIM-50 eta=1 by ~11%.
  np.testing.assert_allclose(mean, m, atol=0.01)
  if sampler.startswith("ddpm_beta"):
    np.testing.assert_allclose(std, sd, rtol=0.015)
  else:
    assert 0.85 * sd < std < sd


def test_samplers_jit_with_the_schedule_as_an_argument_and_clip_to_the_data_range():
  s = sch.linear_schedule(50)
  den = gaussian_denoiser(s, 0.9, 0.5, "eps")  # much of the mass beyond 1: clipping shows
  key = jax.random.key(2)
  ddim = jax.jit(sp.ddim_sample, static_argnums=(2, 3, 4, 5))
  x = ddim(key, s, den, (512, 1, 1, 1), "eps", 10)
  np.testing.assert_allclose(x, sp.ddim_sample(key, s, den, (512, 1, 1, 1), "eps", 10), atol=1e-6)
  ddpm = jax.jit(sp.ddpm_sample, static_argnums=(2, 3, 4))
  y = ddpm(key, s, den, (512, 1, 1, 1), "eps")
  for v in (x, y):
    assert float(jnp.max(v)) <= 1.0 and float(jnp.min(v)) >= -1.0
    assert float(jnp.mean(v == 1.0)) > 0.1  # the clip is active, not a no-op


# ---------------------------------------------------------------- likelihood


def test_discretized_gaussian_sums_to_one_and_matches_the_normal_bin_mass():
  levels = jnp.arange(256, dtype=jnp.float32) / 127.5 - 1.0
  for mean, log_scale in [(0.0, -2.0), (0.9, -4.0), (-0.7, -1.0), (0.3, -5.5)]:
    lp = lk.discretized_gaussian_log_likelihood(levels, mean, log_scale)
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(lp))), 1.0, atol=1e-4)
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1.0, [np.inf]])
    ref = np.diff(stats.norm.cdf(edges, mean, np.exp(log_scale)))
    big = ref > 1e-2
    # The tanh approximation of Phi is off by up to 1.8e-4 (official code's choice).
    np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64))[big], ref[big], atol=4e-4)


def test_normal_kl_matches_the_closed_form_in_standard_deviations():
  rng = np.random.default_rng(1)
  m1, m2, s1, s2 = (
    rng.normal(size=10),
    rng.normal(size=10),
    rng.uniform(0.1, 2, 10),
    rng.uniform(0.1, 2, 10),
  )
  ref = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
  got = lk.normal_kl(m1, 2 * np.log(s1), m2, 2 * np.log(s2))
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_bound_of_a_point_mass_with_the_exact_denoiser_has_closed_form_terms():
  """x0 = c: x0_hat = c exactly, so each KL compares only variances; the decoder is a bin mass."""
  s = sch.linear_schedule(50)
  c = 51 / 127.5 - 1.0  # a pixel level
  x0 = jnp.full((4, 2, 2, 1), c, jnp.float32)
  den = gaussian_denoiser(s, c, 0.0, "eps")
  betas, post = s.numpy["betas"], s.numpy["posterior_variance"]
  sigma0 = np.sqrt(post[1])  # decoder scale: beta~_1 for both fixed variances
  decoder = -np.log(np.diff(stats.norm.cdf([-1 / 255, 1 / 255], 0, sigma0)))[0] / LN2
  ab_T = s.numpy["alphas_cumprod"][-1]
  prior = 0.5 * (-1 - np.log(1 - ab_T) + (1 - ab_T) + ab_T * c**2) / LN2
  kl_large = 0.5 * (-1 + np.log(betas[1:] / post[1:]) + post[1:] / betas[1:]) / LN2
  for variance, kls in [("beta_tilde", np.zeros(49)), ("beta", kl_large)]:
    res = lk.calc_bpd_loop(jax.random.key(0), s, den, x0, "eps", variance, clip_x0=False)
    assert res["vb_bpd"].shape == (4, 50) and res["mse"].shape == (4, 50)
    np.testing.assert_allclose(res["vb_bpd"][:, 1:], np.broadcast_to(kls, (4, 49)), atol=1e-4)
    np.testing.assert_allclose(res["decoder_bpd"], decoder, rtol=5e-3)
    np.testing.assert_allclose(res["prior_bpd"], prior, rtol=1e-3, atol=1e-7)
    total = res["prior_bpd"] + res["decoder_bpd"] + jnp.sum(res["vb_bpd"][:, 1:], axis=1)
    np.testing.assert_allclose(res["total_bpd"], total, rtol=1e-6)
    np.testing.assert_allclose(res["mse"], 0.0, atol=1e-8)


def test_bound_on_gaussian_data_beats_a_bad_denoiser_and_stays_above_the_entropy():
  m, sd, n = 0.1, 0.3, 4000
  s = sch.linear_schedule(50)
  z = np.random.default_rng(0).normal(size=(n, 1, 1, 1))
  x0 = jnp.asarray(np.clip(np.round((m + sd * z + 1) * 127.5), 0, 255) / 127.5 - 1, jnp.float32)
  key = jax.random.key(1)
  good = lk.calc_bpd_loop(key, s, gaussian_denoiser(s, m, sd, "eps"), x0, "eps")
  bad = lk.calc_bpd_loop(key, s, lambda x, t: jnp.zeros_like(x), x0, "eps")
  # Cross-entropy >= entropy: the bound of any model is above H(data) on average.
  edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1.0, [np.inf]])
  p = np.diff(stats.norm.cdf(edges, m, sd))
  entropy = -np.sum(p[p > 0] * np.log2(p[p > 0]))
  g, b = float(jnp.mean(good["total_bpd"])), float(jnp.mean(bad["total_bpd"]))
  print(f"entropy {entropy:.3f} bits, exact denoiser {g:.3f}, eps=0 {b:.3f}")
  assert entropy < g < b
  assert float(jnp.mean(good["mse"][:, 25])) < float(jnp.mean(bad["mse"][:, 25]))


def test_vb_terms_stop_grad_mean_trains_only_the_variance():
  s = sch.linear_schedule(50)
  key = jax.random.key(4)
  x0 = jax.random.uniform(key, (3, 2, 2, 1), minval=-1, maxval=1)
  t = jnp.array([0, 10, 30], jnp.int32)
  x_t = sch.q_sample(s, x0, t, jax.random.normal(key, x0.shape))
  out = jax.random.normal(jax.random.fold_in(key, 1), (3, 2, 2, 2)) * 0.5

  def loss(o, stop):
    return jnp.sum(lk.vb_terms_bpd(s, o, x0, x_t, t, "eps", "learned_range", False, stop)[0])

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_stop, g_full = grad(out, True), grad(out, False)
  np.testing.assert_array_equal(g_stop[..., :1], 0.0)
  assert float(jnp.min(jnp.abs(g_full[..., :1]))) > 0
  np.testing.assert_allclose(g_stop[..., 1:], g_full[..., 1:], rtol=1e-6)
  assert float(jnp.min(jnp.abs(g_stop[..., 1:]))) > 0


def test_learned_range_samplers_at_the_upper_end_equal_the_fixed_large_variance():
  """v_var = +1 means log sigma^2 = log beta_t, the 'beta' variance at every step with noise."""
  s = sch.linear_schedule(50)
  den = gaussian_denoiser(s, 0.2, 0.3, "eps")
  den2 = lambda x, t: jnp.concatenate([den(x, t), jnp.ones_like(x)], axis=-1)
  key, shape = jax.random.key(9), (64, 2, 2, 1)
  fixed = sp.ddpm_sample(key, s, den, shape, "eps", "beta", num_steps=25)
  learned = sp.ddpm_sample(key, s, den2, shape, "eps", "learned_range", num_steps=25)
  np.testing.assert_allclose(learned, fixed, atol=1e-5)
  ddim = sp.ddim_sample(key, s, den, shape, "eps", 10, eta=0.5)
  ddim2 = sp.ddim_sample(key, s, den2, shape, "eps", 10, eta=0.5, learned_range=True)
  np.testing.assert_allclose(ddim2, ddim, atol=1e-6)
  with pytest.raises(UserError, match="variance"):
    sp.ddpm_sample(key, s, den, shape, "eps", "learned")


def test_stratified_bound_is_exact_at_T_terms_and_unbiased_with_fewer():
  m, sd, n = 0.1, 0.3, 4000
  s = sch.linear_schedule(50)
  z = np.random.default_rng(2).normal(size=(n, 1, 1, 1))
  x0 = jnp.asarray(np.clip(np.round((m + sd * z + 1) * 127.5), 0, 255) / 127.5 - 1, jnp.float32)
  den, key = gaussian_denoiser(s, m, sd, "eps"), jax.random.key(3)
  full = lk.calc_bpd_loop(key, s, den, x0, "eps", "beta")
  every = lk.bound_bpd(key, s, den, x0, "eps", "beta", num_terms=50)
  # (float32: the decoder's CDF difference cancels in a few tail examples, so not bitwise.)
  np.testing.assert_allclose(every["total_bpd"], full["total_bpd"], rtol=3e-4)
  np.testing.assert_allclose(every["decoder_bpd"], full["decoder_bpd"], rtol=3e-4)
  few = lk.bound_bpd(key, s, den, x0, "eps", "beta", num_terms=6)
  for k in few:
    assert few[k].shape == (n,)
  exact_terms = float(jnp.mean(jnp.sum(full["vb_bpd"][:, 1:], axis=1)))
  est = few["terms_bpd"]
  stderr = float(jnp.std(est)) / np.sqrt(n)
  print(
    f"KL terms: all T {exact_terms:.4f}, 6-call estimate {float(jnp.mean(est)):.4f} +- {stderr:.4f}"
  )
  np.testing.assert_allclose(float(jnp.mean(est)), exact_terms, atol=4 * stderr + 1e-3)
  with pytest.raises(UserError, match="num_terms"):
    lk.bound_bpd(key, s, den, x0, "eps", "beta", num_terms=1)
