"""The objectives (DDPM, flow matching, EDM, MeanFlow) against float64 closed forms and exact toys,
and the UNet's two-time conditioning."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.diffusion import meanflow as mf
from research.diffusion import objectives as obj
from research.diffusion import schedules as sch
from research.errors import UserError
from research.models.unet import DDPMUNet
from tests import gaussian_toys as toys

RNG = np.random.default_rng(0)


def _data(shape=(6, 3, 2, 1)):
  x0 = RNG.uniform(-1, 1, shape)
  noise = RNG.normal(size=shape)
  return x0, noise, jnp.asarray(x0, jnp.float32), jnp.asarray(noise, jnp.float32)


def _bc(v):
  return np.asarray(v, np.float64).reshape(-1, 1, 1, 1)


def test_flow_corruption_target_and_conversions_match_closed_forms():
  f = obj.FlowObjective()
  x0, noise, x0j, nj = _data()
  t = np.array([0.0, 0.1, 0.35, 0.5, 0.9, 1.0])
  tj = jnp.asarray(t, jnp.float32)
  x_t = (1 - _bc(t)) * x0 + _bc(t) * noise
  np.testing.assert_allclose(f.corrupt(x0j, tj, nj), x_t, atol=1e-6)
  np.testing.assert_allclose(f.target(x0j, nj, tj), noise - x0, atol=1e-6)
  x_in, c = f.net_inputs(jnp.asarray(x_t, jnp.float32), tj)
  np.testing.assert_allclose(c, 1000.0 * t, rtol=1e-6)
  x_tj, vj = jnp.asarray(x_t, jnp.float32), jnp.asarray(noise - x0, jnp.float32)
  x0_hat, eps_hat = f.predictions(vj, x_tj, tj)  # the exact v recovers both
  np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
  np.testing.assert_allclose(eps_hat, noise, atol=1e-5)
  np.testing.assert_array_equal(f.drift(vj, x_tj, tj), vj)
  score = f.score(vj, x_tj, tj)  # -eps / t, where t > 0
  np.testing.assert_allclose(score[1:], -noise[1:] / _bc(t[1:]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(f.time_grid(4), [1.0, 0.75, 0.5, 0.25, 0.0])
  assert f.time_grid(4).dtype == np.float64


def test_flow_time_sampling_logit_normal_and_shift():
  key = jax.random.key(1)
  ln = obj.FlowObjective(time_sampling="logit_normal", loc=0.5, scale=0.8)
  t = np.asarray(ln.sample_time(key, 20000), np.float64)
  logit = np.log(t / (1 - t))
  assert abs(logit.mean() - 0.5) < 0.03 and abs(logit.std() - 0.8) < 0.03
  shifted = obj.FlowObjective(time_sampling="logit_normal", loc=0.5, scale=0.8, shift=3.0)
  ts = np.asarray(shifted.sample_time(key, 20000), np.float64)  # same draws, then shifted
  np.testing.assert_allclose(ts, 3 * t / (1 + 2 * t), rtol=1e-5)
  grid = shifted.time_grid(4)
  u = np.linspace(1, 0, 5)
  np.testing.assert_allclose(grid, 3 * u / (1 + 2 * u), rtol=1e-15)
  assert grid[0] == 1.0 and grid[-1] == 0.0 and np.all(np.diff(grid) < 0)
  uni = np.asarray(obj.FlowObjective().sample_time(key, 20000))
  assert (
    uni.dtype == np.float32 and 0 <= uni.min() and uni.max() < 1 and abs(uni.mean() - 0.5) < 0.01
  )
  assert obj.shift_for_resolution(1024**2, 256**2) == 4.0


def test_edm_preconditioning_matches_table1_and_its_grid_is_the_rho7_grid():
  e = obj.EDMObjective()
  sigma = np.array([0.002, 0.1, 0.5, 1.0, 10.0, 80.0])
  sd = 0.5
  c_skip, c_out, c_in, c_noise = (np.asarray(c) for c in e.preconditioning(jnp.asarray(sigma)))
  np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-5)
  np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-5)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-5)
  np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-5)
  np.testing.assert_allclose(e.loss_weight(jnp.asarray(sigma)), 1.0, rtol=1e-5)  # lambda c_out^2
  grid = e.time_grid(18)
  assert grid.shape == (19,) and grid.dtype == np.float64 and grid[-1] == 0.0
  np.testing.assert_allclose(grid[:4], [80.0, 57.59, 40.79, 28.37], atol=6e-3)
  np.testing.assert_allclose(grid[-4:-1], [0.0229, 0.0075, 0.002], rtol=6e-3)
  np.testing.assert_allclose(grid[-2], 0.002, rtol=1e-12)
  # Conversions: with the exact F, D = x0 and eps_hat = noise; drift (x - D)/sigma; score.
  x0, noise, x0j, nj = _data()
  sj = jnp.asarray(sigma, jnp.float32)
  x_t = x0 + _bc(sigma) * noise
  np.testing.assert_allclose(e.corrupt(x0j, sj, nj), x_t, rtol=1e-6, atol=1e-6)
  target = (x0 - _bc(c_skip) * x_t) / _bc(c_out)
  np.testing.assert_allclose(e.target(x0j, nj, sj), target, rtol=1e-4, atol=1e-4)
  x_tj = jnp.asarray(x_t, jnp.float32)
  x_in, c = e.net_inputs(x_tj, sj)
  np.testing.assert_allclose(x_in, _bc(c_in) * x_t, rtol=1e-5, atol=1e-6)
  x0_hat, eps_hat = e.predictions(e.target(x0j, nj, sj), x_tj, sj)
  np.testing.assert_allclose(x0_hat, x0, atol=1e-4)
  np.testing.assert_allclose(eps_hat[1:], noise[1:], atol=1e-4)  # sigma = 0.002 loses digits
  drift = e.drift(e.target(x0j, nj, sj), x_tj, sj)
  np.testing.assert_allclose(drift[1:], noise[1:], atol=1e-4)
  score = e.score(e.target(x0j, nj, sj), x_tj, sj)
  np.testing.assert_allclose(score[1:], (x0 - x_t)[1:] / _bc(sigma[1:]) ** 2, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_edm_network_input_and_effective_target_have_unit_variance(sigma):
  """For data of std sigma_data, Var(c_in x) = 1 and Var((x0 - c_skip x) / c_out) = 1 (EDM B.6)."""
  e = obj.EDMObjective()
  k1, k2 = jax.random.split(jax.random.key(2))
  x0 = 0.5 * jax.random.normal(k1, (40000, 1))
  noise = jax.random.normal(k2, x0.shape)
  s = jnp.full((40000,), sigma)
  x_in, _ = e.net_inputs(e.corrupt(x0, s, noise), s)
  assert abs(float(jnp.var(x_in)) - 1.0) < 0.03
  assert abs(float(jnp.var(e.target(x0, noise, s))) - 1.0) < 0.03


def _toy_net(x, c):  # a fixed "network" that depends on both inputs
  return 0.3 * x + 0.1 * jnp.tanh(c.reshape(c.shape[:1] + (1,) * (x.ndim - 1)))


def test_edm_loss_equals_the_lambda_weighted_denoiser_loss():
  e = obj.EDMObjective()
  x0 = jax.random.uniform(jax.random.key(3), (8, 2, 2, 1), minval=-1, maxval=1)
  rng = jax.random.key(4)
  loss, aux = e.loss(_toy_net, x0, rng)
  t_key, noise_key, _ = jax.random.split(rng, 3)
  sigma = np.exp(-1.2 + 1.2 * np.asarray(jax.random.normal(t_key, (8,)), np.float64))
  np.testing.assert_allclose(aux["t"], sigma, rtol=1e-5)
  noise = np.asarray(jax.random.normal(noise_key, x0.shape), np.float64)
  x = np.asarray(x0, np.float64) + _bc(sigma) * noise
  sd2 = 0.25
  c_in = 1 / np.sqrt(sigma**2 + sd2)
  f = np.asarray(_toy_net(jnp.asarray(_bc(c_in) * x), jnp.asarray(np.log(sigma) / 4)), np.float64)
  d = _bc(sd2 / (sigma**2 + sd2)) * x + _bc(sigma * 0.5 / np.sqrt(sigma**2 + sd2)) * f
  lam = (sigma**2 + sd2) / (sigma * 0.5) ** 2
  expected = lam * np.mean((d - np.asarray(x0)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(loss, expected, rtol=2e-4)


def test_ddpm_objective_reproduces_simple_loss_bit_for_bit():
  """The numbers of `DiffusionTask.simple_loss`, whose lines are copied here as the reference."""
  schedule = sch.linear_schedule(100)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, t, *, train):
      h = nn.Dense(1)(x) * (1.0 + t[:, None, None, None] / 100.0)
      return nn.Dropout(0.5)(h, deterministic=not train)

  net = Net()
  x0 = jax.random.uniform(jax.random.key(5), (8, 4, 4, 1), minval=-1, maxval=1)
  params = net.init(jax.random.key(0), x0, jnp.zeros(8, jnp.int32), train=False)["params"]
  rng = jax.random.key(6)
  apply = lambda x, t, k: net.apply({"params": params}, x, t, train=True, rngs={"dropout": k})
  for target in ("eps", "v"):
    # DiffusionTask.simple_loss, verbatim in substance:
    t_key, noise_key, dropout_key = jax.random.split(rng, 3)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, 100)
    noise = jax.random.normal(noise_key, x0.shape)
    x_t = sch.q_sample(schedule, x0, t, noise)
    out = apply(x_t, t, dropout_key)
    want = jnp.mean(
      jnp.square(out - sch.training_target(schedule, x0, t, noise, target)), (1, 2, 3)
    )
    ddpm = obj.DDPMObjective(schedule, target)
    got, aux = ddpm.loss(lambda x, c, apply=apply: apply(x, c, obj.caller_key(rng)), x0, rng)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(aux["t"], t)
    assert aux["t"].dtype == jnp.int32


def test_the_diffusion_task_gives_the_numbers_of_its_former_simple_loss():
  """DiffusionTask.objective_loss (the task's training loss since the objectives landed) draws
  exactly what the task's simple_loss drew before: these lines are that method's."""
  from research.tasks.diffusion import DiffusionTask

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, t, label, *, train):
      h = nn.Dense(1)(x) * (1.0 + t[:, None, None, None] / 100.0)
      return nn.Dropout(0.5)(h, deterministic=not train)

  schedule = sch.cosine_schedule(100)
  task = DiffusionTask(
    net=Net(), objective=obj.DDPMObjective(schedule, "eps"), image_shape=(4, 4, 1), num_classes=None
  )
  x0 = jax.random.uniform(jax.random.key(5), (8, 4, 4, 1), minval=-1, maxval=1)
  params = Net().init(jax.random.key(0), x0, jnp.zeros(8, jnp.int32), None, train=False)
  params, rng = params["params"], jax.random.key(6)
  # The former DiffusionTask.simple_loss(params, x0, None, rng, train=True):
  t_key, noise_key, dropout_key = jax.random.split(rng, 3)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, task.timesteps)
  noise = jax.random.normal(noise_key, x0.shape)
  x_t = sch.q_sample(schedule, x0, t, noise)
  out = Net().apply({"params": params}, x_t, t, None, train=True, rngs={"dropout": dropout_key})
  want = jnp.mean(jnp.square(out - sch.training_target(schedule, x0, t, noise, "eps")), (1, 2, 3))
  got, got_t = task.objective_loss(params, x0, None, rng, True)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_t, t)


def test_ddpm_objective_conversions_match_schedules():
  s = sch.cosine_schedule(50)
  d = obj.DDPMObjective(s, "v")
  x0, noise, x0j, nj = _data()
  t = jnp.array([0, 5, 17, 30, 42, 49], jnp.int32)
  abar = s.numpy["alphas_cumprod"][np.asarray(t)]
  a, sd = np.sqrt(abar), np.sqrt(1 - abar)
  x_t = _bc(a) * x0 + _bc(sd) * noise
  np.testing.assert_allclose(d.corrupt(x0j, t, nj), x_t, atol=1e-5)
  v = _bc(a) * noise - _bc(sd) * x0
  np.testing.assert_allclose(d.target(x0j, nj, t), v, atol=1e-5)
  x0_hat, eps_hat = d.predictions(jnp.asarray(v, jnp.float32), jnp.asarray(x_t, jnp.float32), t)
  np.testing.assert_allclose(x0_hat, x0, atol=1e-4)
  np.testing.assert_allclose(eps_hat, noise, atol=1e-4)
  score = d.score(jnp.asarray(v, jnp.float32), jnp.asarray(x_t, jnp.float32), t)
  np.testing.assert_allclose(score, -noise / _bc(sd), rtol=1e-3, atol=1e-3)
  with pytest.raises(UserError, match="ddim_sample"):
    d.time_grid(10)


def test_optimal_flow_velocity_on_two_points_carries_noise_to_them():
  """E[eps - x0 | x_t] for data {p, q} (equal weights) in closed form; 400 Euler steps from noise."""
  f = obj.FlowObjective()
  pts = jnp.array([[1.0, 0.5], [-0.5, -1.0]])  # [2, d]

  def v(x, t):  # x [B, d], t [B]
    tb = t[:, None, None]
    logits = -jnp.sum((x[:, None, :] - (1 - tb) * pts) ** 2, -1) / (2 * tb[..., 0] ** 2)
    x0_hat = jax.nn.softmax(logits, axis=-1) @ pts  # posterior mean of x0
    return (x - x0_hat) / t[:, None]  # v = eps - x0 = (x_t - x0) / t

  @jax.jit
  def run(z):
    def body(i, x):
      t, t_next = 1.0 - i / 400, 1.0 - (i + 1) / 400
      return x + (t_next - t) * f.drift(v(x, jnp.full((x.shape[0],), t)), x, None)

    return jax.lax.fori_loop(0, 400, body, z)

  x = np.asarray(run(jax.random.normal(jax.random.key(7), (256, 2))))
  dist = np.linalg.norm(x[:, None, :] - np.asarray(pts)[None], axis=-1).min(axis=1)
  assert dist.max() < 1e-2
  near_p = np.linalg.norm(x - np.asarray(pts[0]), axis=-1) < 1e-2
  assert 0.35 < near_p.mean() < 0.65


# ---------------------------------------------------------------- MeanFlow


def test_meanflow_time_pairs_and_inputs():
  m = mf.MeanFlowObjective()
  t, r = m.sample_tr(jax.random.key(8), 1000)
  t, r = np.asarray(t), np.asarray(r)
  assert np.all(r <= t) and np.all(r[:750] == t[:750]) and np.all(r[750:] < t[750:])
  _, c = m.net_inputs(jnp.zeros((3, 2)), jnp.array([0.2, 0.5, 1.0]), jnp.array([0.1, 0.5, 0.0]))
  np.testing.assert_allclose(c, [[200, 100], [500, 0], [1000, 1000]], rtol=1e-6)
  _, c = m.net_inputs(jnp.zeros((1, 2)), jnp.array([0.3]))  # r = None: r = t
  np.testing.assert_allclose(c, [[300, 0]], rtol=1e-6)


def test_meanflow_target_is_v_when_r_equals_t():
  u_fn = lambda z, t, r: jnp.sin(z) * (1 + t[:, None] ** 2) + r[:, None]  # any network
  z = jax.random.normal(jax.random.key(9), (5, 3))
  v = jax.random.normal(jax.random.key(10), (5, 3))
  t = jnp.linspace(0.1, 0.9, 5)
  u, u_tgt = mf.meanflow_target(u_fn, z, t, t, v)
  np.testing.assert_array_equal(u_tgt, v)
  np.testing.assert_allclose(u, u_fn(z, t, t), rtol=1e-6)


def test_meanflow_identity_holds_for_the_exact_average_velocity():
  """1-D Gaussian data: u in closed form; with the marginal v as tangent, u_tgt = u itself."""
  m, c = 0.4, 0.6
  u_fn, v_fn = toys.average_velocity(m, c), toys.velocity(m, c)
  t = jnp.array([0.3, 0.5, 0.8, 1.0, 0.95])
  r = jnp.array([0.0, 0.2, 0.1, 0.0, 0.9])
  z = jax.random.normal(jax.random.key(11), (5, 4))
  u, u_tgt = mf.meanflow_target(u_fn, z, t, r, v_fn(z, t))
  np.testing.assert_allclose(u_tgt, u, rtol=1e-4, atol=1e-5)
  # As r -> t, u tends to v.
  np.testing.assert_allclose(u_fn(z, t, t - 1e-3), v_fn(z, t), atol=1e-2)  # O(h) apart


def test_meanflow_gradient_flows_only_through_the_primal_u():
  """u = w g(z, t, r): d loss / d w = sum 2 (u - u_tgt) g with u_tgt held fixed (stop_gradient)."""
  g = lambda z, t, r: jnp.cos(z) * (t - 0.5 * r)[:, None]
  z = jax.random.normal(jax.random.key(12), (4, 3))
  v = jax.random.normal(jax.random.key(13), (4, 3))
  t, r = jnp.array([0.9, 0.7, 0.5, 0.3]), jnp.array([0.1, 0.7, 0.2, 0.0])

  def loss(w):
    u, u_tgt = mf.meanflow_target(lambda z, t, r: w * g(z, t, r), z, t, r, v)
    return jnp.sum(jnp.square(u - u_tgt))

  w = 1.7
  u, u_tgt = mf.meanflow_target(lambda z, t, r: w * g(z, t, r), z, t, r, v)
  want = jnp.sum(2 * (u - u_tgt) * g(z, t, r))
  np.testing.assert_allclose(jax.grad(loss)(w), want, rtol=1e-5)


def test_meanflow_loss_is_adaptively_weighted_sum_over_pixels():
  m = mf.MeanFlowObjective()
  x0 = jax.random.uniform(jax.random.key(14), (8, 2, 2, 1), minval=-1, maxval=1)
  net = lambda x, c: 0.5 * x + 1e-3 * c[:, :1, None, None] - 2e-3 * c[:, 1:, None, None]
  loss, aux = m.loss(net, x0, jax.random.key(15))
  sq = np.asarray(aux["sq_sum"], np.float64)
  np.testing.assert_allclose(loss, sq / (sq + 0.01), rtol=1e-5)
  # r = t rows are plain flow matching, summed over pixels.
  t_key, noise_key, _ = jax.random.split(jax.random.key(15), 3)
  t, _ = m.sample_tr(t_key, 8)
  noise = jax.random.normal(noise_key, x0.shape)
  z = m.corrupt(x0, t, noise)
  fm = jnp.sum(jnp.square(net(*m.net_inputs(z, t)) - (noise - x0)), axis=(1, 2, 3))
  np.testing.assert_allclose(sq[:6], fm[:6], rtol=1e-5)


def _random_params(shapes, seed=1):
  """Every leaf drawn (NumPy, no compiles): kernels N(0, 1/fan_in), 1-D leaves N(0, 0.3^2)."""
  rng = np.random.default_rng(seed)
  draw = lambda s: (
    rng.normal(size=s.shape) * (math.prod(s.shape[:-1]) ** -0.5 if len(s.shape) > 1 else 0.3)
  )
  return jax.tree.map(lambda s: jnp.asarray(draw(s), jnp.float32), shapes)


UNET = dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4, dropout=0.0)


def test_unet_with_two_times_has_one_more_embedder_and_uses_both_columns():
  one, two = DDPMUNet(**UNET), DDPMUNet(**UNET, num_times=2)
  x = jax.random.normal(jax.random.key(16), (2, 4, 4, 1))
  t1 = jnp.array([3.0, 917.0])
  shapes = lambda m, t: jax.eval_shape(lambda: m.init(jax.random.key(0), x, t, train=False))
  p1, p2 = shapes(one, t1)["params"], shapes(two, jnp.stack([t1, t1], -1))["params"]
  # One more embedder; everything else (names and shapes) as the one-time UNet.
  assert set(p2) - set(p1) == {"temb1_dense0", "temb1_dense1"}
  assert jax.tree.map(jnp.shape, p1) == jax.tree.map(jnp.shape, {k: p2[k] for k in p1})
  p2 = _random_params(p2)
  f = jax.jit(lambda p, x, c: two.apply({"params": p}, x, c, train=False))
  base = f(p2, x, jnp.array([[300.0, 0.0], [500.0, 100.0]]))
  for other in ([[300.0, 50.0], [500.0, 100.0]], [[310.0, 0.0], [500.0, 100.0]]):
    out = f(p2, x, jnp.array(other))
    assert float(jnp.abs(out[0] - base[0]).max()) > 1e-3  # row 0 changed
    np.testing.assert_allclose(out[1], base[1], atol=1e-6)  # row 1 did not
  with pytest.raises(UserError, match=r"\[B, 2\]"):
    two.apply({"params": p2}, x, t1, train=False)


@pytest.mark.slow  # ~5 s: compiles a jvp and its gradient through a (tiny) UNet
def test_meanflow_loss_differentiates_through_the_unet_jvp():
  two = DDPMUNet(**UNET, num_times=2)
  x = jax.random.normal(jax.random.key(16), (2, 4, 4, 1))
  shapes = jax.eval_shape(lambda: two.init(jax.random.key(0), x, jnp.ones((2, 2)), train=False))
  params = _random_params(shapes["params"])
  m = mf.MeanFlowObjective()
  net_fn = lambda p: lambda x_in, c: two.apply({"params": p}, x_in, c, train=False)
  loss = lambda p: jnp.mean(m.loss(net_fn(p), x, jax.random.key(17))[0])
  grads = jax.jit(jax.grad(loss))(params)  # attention and GroupNorm under jvp, then reverse
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["temb1_dense0"]["kernel"]).max()) > 0


def test_bad_objective_settings_raise_user_errors():
  with pytest.raises(UserError, match="time_sampling"):
    obj.FlowObjective(time_sampling="cosmap")
  with pytest.raises(UserError, match="shift"):
    obj.FlowObjective(shift=0.0)
  with pytest.raises(UserError, match="r_equals_t"):
    mf.MeanFlowObjective(r_equals_t=1.5)
  import ml_collections

  from research.tasks.diffusion import make_objective

  with pytest.raises(UserError, match="unknown config.task.objective"):
    make_objective(ml_collections.ConfigDict({"objective": "score"}))
  with pytest.raises(UserError, match="target"):
    obj.DDPMObjective(sch.linear_schedule(100), "x0")
  with pytest.raises(UserError, match="num_steps"):
    obj.EDMObjective().time_grid(0)
  meanflow, _ = make_objective(ml_collections.ConfigDict({"objective": "meanflow"}))
  assert isinstance(meanflow, mf.MeanFlowObjective)
  edm, consumed = make_objective(ml_collections.ConfigDict({"objective": "edm", "sigma_data": 1.0}))
  assert edm.sigma_data == 1.0 and "sigma_data" in consumed


def test_noise_to_signal_reads_edm_sigma_back_from_every_objectives_network_input():
  """time_of inverts net_inputs, and sigma = s(t) / a(t) in float64 (the guidance-interval scale)."""
  x = jnp.zeros((4, 2, 2, 1))
  t = np.array([0.05, 0.3, 0.5, 0.9])
  for objective in (obj.FlowObjective(), mf.MeanFlowObjective()):
    _, c = objective.net_inputs(x, jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(objective.time_of(c), t, rtol=1e-6)
    np.testing.assert_allclose(objective.noise_to_signal(c), t / (1 - t), rtol=1e-5)
  edm = obj.EDMObjective()
  sigma = np.array([0.002, 0.5, 5.42, 80.0])
  _, c = edm.net_inputs(x, jnp.asarray(sigma, jnp.float32))
  np.testing.assert_allclose(edm.noise_to_signal(c), sigma, rtol=1e-5)
  schedule = sch.make_schedule("linear", 1000)
  ddpm = obj.DDPMObjective(schedule)
  steps = np.array([0, 10, 500, 999])
  _, c = ddpm.net_inputs(x, jnp.asarray(steps))
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[steps]
  np.testing.assert_allclose(ddpm.noise_to_signal(c), np.sqrt((1 - abar) / abar), rtol=1e-5)
