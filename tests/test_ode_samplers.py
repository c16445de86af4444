"""The samplers of `ode_samplers` on exactly solvable problems, and the DDIM spacings of diffusers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.diffusion import meanflow as mf
from research.diffusion import objectives as obj
from research.diffusion import ode_samplers as osp
from research.diffusion import samplers as sp
from research.diffusion import schedules as sch
from research.errors import UserError
from tests import gaussian_toys as toys

MEAN = np.array([0.5, -0.3])
COV = np.array([[0.5, 0.2], [0.2, 0.3]])  # a correlated 2-D Gaussian dataset
FLOW, EDM = obj.FlowObjective(), obj.EDMObjective()


def _linear_ode_error(sampler, n: int) -> float:
  """dx/dt = 2 t x from t = 1 to 0 (x(0) = x(1) / e) as a flow model: the velocity is 2 t x."""
  model = lambda x, c: 2.0 * (c / 1000.0)[:, None] * x
  x1 = jnp.ones((1, 1))
  x0, _ = sampler(jax.random.key(0), FLOW, model, FLOW.time_grid(n), (1, 1), x_T=x1)
  return abs(float(x0[0, 0]) - np.exp(-1.0))


def test_euler_is_first_order_and_heun_second_order():
  euler = [_linear_ode_error(osp.euler_sample, n) for n in (8, 16, 32)]
  heun = [_linear_ode_error(osp.heun_sample, n) for n in (8, 16, 32)]
  for e in (euler[0] / euler[1], euler[1] / euler[2]):
    assert 1.8 < e < 2.2
  for h in (heun[0] / heun[1], heun[1] / heun[2]):
    assert 3.5 < h < 4.5
  assert heun[-1] < euler[-1] / 10


def test_heun_on_the_edm_grid_makes_35_network_calls():
  calls = []

  def model(x, c):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.zeros_like(x)

  _, nfe = jax.jit(lambda k: osp.heun_sample(k, EDM, model, EDM.time_grid(18), (2, 2)))(
    jax.random.key(0)
  )
  jax.effects_barrier()
  assert int(nfe) == 35 and len(calls) == 35
  _, nfe = osp.euler_sample(jax.random.key(0), EDM, model, EDM.time_grid(18), (2, 2))
  assert int(nfe) == 18


def test_prior_sample_scales_by_the_noise_level():
  x = osp.prior_sample(jax.random.key(1), EDM, EDM.time_grid(18), (4000, 2))
  assert abs(float(jnp.std(x)) - 80.0) < 3.0
  x = osp.prior_sample(jax.random.key(1), FLOW, FLOW.time_grid(4), (4000, 2))
  assert abs(float(jnp.std(x)) - 1.0) < 0.04


CASES = {
  "euler/flow": (osp.euler_sample, FLOW, FLOW.time_grid(100), {}),
  "heun/flow": (osp.heun_sample, FLOW, FLOW.time_grid(16), {}),
  # The shift leaves a long last (Euler) step, t = 3/(N + 2) -> 0: more steps than unshifted.
  "heun/flow_shifted": (osp.heun_sample, FLOW, FLOW.time_grid(48, shift=3.0), {}),
  # 18 steps overestimate this Gaussian's variance by ~11% (see the next test): 64 steps.
  "heun/edm": (osp.heun_sample, EDM, EDM.time_grid(64), {}),
  # Churn lengthens every step (from sigma_hat = 1.3 sigma): at 32 steps the variance is ~10% off.
  "edm_churn": (
    osp.edm_sample,
    EDM,
    EDM.time_grid(128),
    dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0),
  ),
  "euler_maruyama/flow": (osp.euler_maruyama_sample, FLOW, FLOW.time_grid(200), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_samplers_with_the_exact_model_recover_the_gaussian(case):
  sampler, objective, grid, kw = CASES[case]
  n = 8192
  model = toys.model_fn(objective, MEAN, COV)
  run = jax.jit(lambda k: sampler(k, objective, model, grid, (n, 2), **kw)[0])
  x = np.asarray(run(jax.random.key(2)), np.float64)
  se = np.sqrt(np.diag(COV) / n)
  np.testing.assert_allclose(x.mean(0), MEAN, atol=5 * se.max())
  np.testing.assert_allclose(np.cov(x.T), COV, atol=0.03)


def test_heun_on_the_edm_grid_is_exactly_the_float64_scalar_heun_per_eigendirection():
  """For Gaussian data y = x - m obeys dy/dsigma = sigma (S + sigma^2 I)^-1 y: linear, so Heun
  scales each eigendirection of S by a factor, computed here in float64 (last step Euler)."""
  lam, q = np.linalg.eigh(COV)
  grid = EDM.time_grid(18)
  factors = []
  for lv in lam:
    a = lambda s, lv=lv: s / (lv + s * s)  # dy/dsigma = a(sigma) y
    y = 1.0
    for s, s_next in zip(grid[:-1], grid[1:], strict=True):
      d = a(s) * y
      y_euler = y + (s_next - s) * d
      y = y + (s_next - s) * 0.5 * (d + a(s_next) * y_euler) if s_next > 0 else y_euler
    factors.append(y)
  x_T = 80.0 * jax.random.normal(jax.random.key(9), (64, 2))
  model = toys.model_fn(EDM, MEAN, COV)
  x0, _ = osp.heun_sample(jax.random.key(0), EDM, model, grid, x_T.shape, x_T=x_T)
  want = MEAN + ((np.asarray(x_T, np.float64) - MEAN) @ q) * np.array(factors) @ q.T
  np.testing.assert_allclose(x0, want, rtol=1e-4, atol=1e-4)
  # The exact flow map scales by sqrt(lam / (lam + 80^2)); 18 steps end ~5% wide in std.
  ratio = np.array(factors) / np.sqrt(lam / (lam + 80.0**2))
  assert np.all((1.03 < ratio) & (ratio < 1.08))


def test_stochastic_samplers_inject_noise():
  """With churn / diffusion on, a different key gives a different sample from the same x_T."""
  model = toys.model_fn(EDM, MEAN, COV)
  x_T = 80.0 * jax.random.normal(jax.random.key(3), (4, 2))
  a, _ = osp.edm_sample(jax.random.key(4), EDM, model, EDM.time_grid(8), (4, 2), 40.0, x_T=x_T)
  b, _ = osp.edm_sample(jax.random.key(5), EDM, model, EDM.time_grid(8), (4, 2), 40.0, x_T=x_T)
  c, _ = osp.edm_sample(jax.random.key(5), EDM, model, EDM.time_grid(8), (4, 2), 0.0, x_T=x_T)
  d, _ = osp.heun_sample(jax.random.key(6), EDM, model, EDM.time_grid(8), (4, 2), x_T=x_T)
  assert float(jnp.abs(a - b).max()) > 1e-3
  np.testing.assert_allclose(c, d, atol=1e-5)  # no churn is Algorithm 1


def _samplers(fns, m_obj):
  """Every sampler run with one key on fns["flow"], fns["edm"] or fns["meanflow"]."""
  key, shape = jax.random.key(7), (16, 2)
  return [
    osp.euler_sample(key, FLOW, fns["flow"], FLOW.time_grid(4), shape)[0],
    osp.heun_sample(key, FLOW, fns["flow"], FLOW.time_grid(4), shape)[0],
    osp.edm_sample(key, EDM, fns["edm"], EDM.time_grid(4), shape, s_churn=20.0)[0],
    osp.euler_maruyama_sample(key, FLOW, fns["flow"], FLOW.time_grid(4), shape)[0],
    osp.meanflow_sample(key, m_obj, fns["meanflow"], shape, num_steps=2)[0],
  ]


def test_guidance_scale_zero_is_the_conditional_model_under_every_sampler():
  m_obj = mf.MeanFlowObjective()
  cond_fn = lambda x, c: 0.5 * x + 0.1 + 1e-4 * c.reshape(c.shape[0], -1)[:, -1:]
  uncond_fn = lambda x, c: -0.3 * x
  cond = dict.fromkeys(("flow", "edm", "meanflow"), cond_fn)
  guided = dict.fromkeys(cond, osp.guided(cond_fn, uncond_fn, 0.0))
  for want, got in zip(_samplers(cond, m_obj), _samplers(guided, m_obj), strict=True):
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # The exact velocity is affine in the data mean, so w = 2 with means m and -m is exactly the
  # flow of data with mean 3 m - 2 (-m) = 5 m.
  strong = osp.guided(toys.model_fn(FLOW, MEAN, COV), toys.model_fn(FLOW, -MEAN, COV), 2.0)
  x, _ = osp.heun_sample(jax.random.key(7), FLOW, strong, FLOW.time_grid(16), (4096, 2))
  np.testing.assert_allclose(jnp.mean(x, 0), 5 * MEAN, atol=0.06)


def test_meanflow_one_step_is_one_call_and_exact_with_the_exact_average_velocity():
  """1-D Gaussian N(m, c^2): u(z, 0, 1) = -m + (1 - c) z, so z_1 - u is exactly m + c z_1."""
  m, c = 0.3, 0.4
  m_obj = mf.MeanFlowObjective()
  calls = []
  u = toys.average_velocity(m, c)

  def model(x_in, times):
    jax.debug.callback(lambda: calls.append(1))
    t, h = times[:, 0] / 1000.0, times[:, 1] / 1000.0
    return u(x_in, t, t - h)

  z = jax.random.normal(jax.random.key(8), (512, 3))
  for steps in (1, 2, 4):
    calls.clear()
    x, nfe = jax.jit(lambda k, s=steps: osp.meanflow_sample(k, m_obj, model, z.shape, s, x_T=z))(
      jax.random.key(0)
    )
    jax.effects_barrier()
    assert int(nfe) == steps and len(calls) == steps
    # The average velocity is exact on every sub-interval too, so k steps land on the same point.
    np.testing.assert_allclose(x, m + c * z, atol=2e-5)


def test_sampler_errors_are_user_errors():
  model = lambda x, c: x
  with pytest.raises(UserError, match="EDMObjective"):
    osp.edm_sample(jax.random.key(0), FLOW, model, FLOW.time_grid(4), (2, 2))
  with pytest.raises(UserError, match="diffusion_form"):
    osp.euler_maruyama_sample(
      jax.random.key(0), FLOW, model, FLOW.time_grid(4), (2, 2), diffusion_form="linear"
    )
  with pytest.raises(UserError, match="MeanFlowObjective"):
    osp.meanflow_sample(jax.random.key(0), FLOW, model, (2, 2))
  with pytest.raises(UserError, match="at least 2"):
    osp.heun_sample(jax.random.key(0), FLOW, model, np.array([1.0]), (2, 2))


# ---------------------------------------------------------------- DDIM spacings (diffusers)

# diffusers 0.42.1 DDIMScheduler(num_train_timesteps=T, timestep_spacing=..., steps_offset=...)
# .set_timesteps(n).timesteps, recorded (they are listed in decreasing order).
DIFFUSERS = {
  (1000, 10, "leading", 1): [901, 801, 701, 601, 501, 401, 301, 201, 101, 1],
  (1000, 3, "leading", 0): [666, 333, 0],
  (50, 7, "leading", 0): [42, 35, 28, 21, 14, 7, 0],
  (1000, 10, "trailing", 0): [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
  (1000, 7, "trailing", 0): [999, 856, 713, 570, 428, 285, 142],
  (100, 30, "trailing", 0): [99, 96, 92, 89, 86, 82, 79, 76, 72, 69, 66, 62, 59, 56, 52]
  + [49, 46, 42, 39, 36, 32, 29, 26, 22, 19, 16, 12, 9, 6, 2],
  (1000, 10, "linspace", 0): [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
}


@pytest.mark.parametrize("setting", list(DIFFUSERS))
def test_ddim_spacings_give_the_recorded_diffusers_timesteps(setting):
  T, n, spacing, offset = setting
  got = sch.timestep_subsequence(T, n, spacing, steps_offset=offset)
  np.testing.assert_array_equal(got[::-1], DIFFUSERS[setting])


def test_trailing_drops_the_spurious_entry_of_diffusers_float_arange():
  # diffusers gives [16, 14, 11, 9, 6, 4, 1, -1] for (17, 7): 8 entries, one of them -1.
  np.testing.assert_array_equal(
    sch.timestep_subsequence(17, 7, "trailing"), [1, 4, 6, 9, 11, 14, 16]
  )


@functools.cache
def _diffusers_timesteps(T, n, spacing, offset):
  diffusers = pytest.importorskip("diffusers")
  s = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
  s.set_timesteps(n)
  return s.timesteps.numpy()


def test_ddim_spacings_match_installed_diffusers():
  pytest.importorskip("diffusers")
  settings = [(1000, n, "leading", o) for n in (1, 4, 10, 25, 50, 999) for o in (0, 1)]
  settings += [(T, n, "trailing", 0) for T in (1000, 100, 50) for n in (1, 3, 8, 20, 49)]
  settings += [(T, n, "linspace", 0) for T in (1000, 64) for n in (2, 10, 33)]
  for T, n, spacing, offset in settings:
    want = _diffusers_timesteps(T, n, spacing, offset)
    got = sch.timestep_subsequence(T, n, spacing, steps_offset=offset)
    np.testing.assert_array_equal(got[::-1], want, err_msg=str((T, n, spacing, offset)))
  for setting in DIFFUSERS:  # the recorded table is what this diffusers gives
    np.testing.assert_array_equal(_diffusers_timesteps(*setting), DIFFUSERS[setting])


def test_ddim_sample_runs_on_the_new_spacings_and_rejects_bad_offsets():
  s = sch.linear_schedule(100)
  den = lambda x, t: jnp.zeros_like(x)  # eps = 0: x0_hat = x / sqrt(abar)
  x_T = jnp.full((2, 1, 1, 1), 0.5)
  for spacing, off in (("trailing", 0), ("leading", 1)):
    kw = dict(x_T=x_T, spacing=spacing, steps_offset=off, clip_x0=False)
    x = sp.ddim_sample(jax.random.key(0), s, den, x_T.shape, "eps", 10, **kw)
    first = sch.timestep_subsequence(100, 10, spacing, off)[-1]  # the largest index
    want = 0.5 / np.sqrt(s.numpy["alphas_cumprod"][first])  # eps = 0 carries x0_hat through
    np.testing.assert_allclose(x, want, rtol=1e-5)
  with pytest.raises(UserError, match="steps_offset"):
    sch.timestep_subsequence(100, 10, "trailing", steps_offset=1)
  with pytest.raises(UserError, match="outside"):
    sch.timestep_subsequence(100, 100, "leading", steps_offset=1)
