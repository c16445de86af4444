"""The shared step on a fake 8-device mesh: DP/FSDP equal one device, two parts, accumulation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.train import sharding as shd
from research.train import state as state_lib
from research.train.step import StepConfig, make_train_step
from tests.toy_tasks import LinearTask, RecorderTask, RegressionTask, TwoPlayerTask


def _batches(n_steps, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      "image": rng.integers(0, 256, (batch, 2, 2, 1), dtype=np.uint8),
      "label": rng.integers(0, 10, (batch,), dtype=np.int32),
      "point": rng.normal([3.0, -2.0], 0.5, (batch, 2)).astype(np.float32),
    }
    for _ in range(n_steps)
  ]


def _run(task, mesh, batches, config=StepConfig(), lr=1e-2, seed=0, opt=optax.sgd):
  # SGD by default: Adam's first step divides by |g| and turns float noise in gradients that are 0
  # in exact arithmetic (a bias before BatchNorm) into full-size updates.
  opts = {p: opt(lr) for p in task.parts}
  make = state_lib.state_factory(task, opts, (2, 2, 1), True, seed, config.ema_decay > 0)
  state, shardings = state_lib.init_sharded(make, mesh, fsdp_min_size=1)
  bs = shd.batch_sharding(mesh)
  step = jax.jit(
    make_train_step(task, opts, config, mesh),
    donate_argnums=0,
    in_shardings=(shardings, bs),
    out_shardings=(shardings, shd.replicated(mesh)),
  )
  losses = []
  for b in batches:
    state, metrics = step(state, jax.device_put(b, bs))
    # Wait for each step: XLA:CPU's in-process collectives can deadlock with many 8-device
    # programs in flight on 2 cores (the training loop bounds its dispatch-ahead the same way).
    losses.append(jax.block_until_ready(metrics))
  return state, losses


def _params(state):
  return jax.device_get({p: s.params for p, s in state.parts.items()})


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize(
  "layout", [dict(data=8, fsdp=1), dict(data=1, fsdp=8), dict(data=2, fsdp=4)]
)
def test_sharded_step_equals_one_device(layout):
  task, batches = RegressionTask(), _batches(4)
  one, one_m = _run(task, shd.make_mesh(devices=jax.devices()[:1]), batches)
  many, many_m = _run(task, shd.make_mesh(**layout), batches)
  np.testing.assert_allclose(
    [m["model/loss"] for m in one_m], [m["model/loss"] for m in many_m], rtol=1e-5
  )
  chex.assert_trees_all_close(_params(one), _params(many), rtol=1e-5, atol=1e-6)
  # BatchNorm statistics (a non-parameter collection) moved and agree too.
  stats = jax.device_get(many.parts["model"].collections["batch_stats"])
  assert np.abs(stats["BatchNorm_0"]["mean"]).sum() > 0
  chex.assert_trees_all_close(
    jax.device_get(one.parts["model"].collections["batch_stats"]), stats, rtol=1e-5, atol=1e-6
  )


def test_fsdp_actually_shards_parameters():
  task = RegressionTask()
  opts = {"model": optax.adam(1e-2)}
  make = state_lib.state_factory(task, opts, (2, 2, 1), True, 0, False)
  state, _ = state_lib.init_sharded(make, shd.make_mesh(data=1, fsdp=8), fsdp_min_size=1)
  kernel = state.parts["model"].params["Dense_0"]["kernel"]  # [4, 16]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert kernel.addressable_shards[0].data.shape == (4, 2)


def test_no_recompilation_across_steps():
  task, mesh = RegressionTask(), shd.make_mesh()
  opts = {"model": optax.adam(1e-2)}
  make = state_lib.state_factory(task, opts, (2, 2, 1), True, 0, False)
  state, shardings = state_lib.init_sharded(make, mesh)
  fn = chex.assert_max_traces(make_train_step(task, opts, StepConfig(), mesh), n=1)
  step = jax.jit(fn, donate_argnums=0, in_shardings=(shardings, shd.batch_sharding(mesh)))
  for b in _batches(5):
    state, _ = step(state, b)
  assert int(state.step) == 5


def test_two_part_task_trains_through_the_same_step():
  task, mesh = TwoPlayerTask(), shd.make_mesh()
  batches = _batches(300, batch=64)
  init, _ = _run(task, mesh, batches[:0])
  state, metrics = _run(task, mesh, batches, lr=3e-3, opt=optax.adam)
  assert set(metrics[-1]) >= {"disc/loss", "gen/loss", "disc/grad_norm", "gen/update_norm"}
  before, after = _params(init), _params(state)
  for part in ("disc", "gen"):
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), before[part], after[part])
    assert max(jax.tree.leaves(moved)) > 1e-3, part
  fake = task._fake(state.variables(), jax.random.key(1), 2000)
  # The generator found the real data (mean (3, -2)), starting near 0.
  np.testing.assert_allclose(np.mean(np.asarray(fake), axis=0), [3.0, -2.0], atol=0.75)


def test_each_part_updates_only_its_own_parameters():
  """One step of 'disc' alone must leave 'gen' untouched, and vice versa."""
  task, mesh = TwoPlayerTask(), shd.make_mesh()
  init, _ = _run(task, mesh, [])
  for only, frozen in (("disc", "gen"), ("gen", "disc")):
    cfg = StepConfig(part_steps=((frozen, 0),))
    state, _ = _run(task, mesh, _batches(2), config=cfg)
    chex.assert_trees_all_equal(_params(init)[frozen], _params(state)[frozen])
    assert not np.allclose(
      jax.tree.leaves(_params(init)[only])[0], jax.tree.leaves(_params(state)[only])[0]
    )


def test_part_steps_repeat_updates():
  task, mesh = TwoPlayerTask(), shd.make_mesh()
  config = StepConfig(part_steps=(("disc", 3),))
  state, _ = _run(task, mesh, _batches(2), config=config, opt=optax.adam)
  counts = {p: int(state.parts[p].opt_state[0].count) for p in task.parts}
  assert counts == {"disc": 6, "gen": 2}  # 2 steps: the critic updated 3 times in each


def test_gradient_accumulation_equals_full_batch():
  task, mesh, batches = LinearTask(), shd.make_mesh(), _batches(2, batch=64)
  full, full_m = _run(task, mesh, batches)
  acc, acc_m = _run(task, mesh, batches, config=StepConfig(grad_accum=4))
  np.testing.assert_allclose(full_m[-1]["model/loss"], acc_m[-1]["model/loss"], rtol=1e-5)
  np.testing.assert_allclose(full_m[-1]["model/mse"], acc_m[-1]["model/mse"], rtol=1e-5)
  chex.assert_trees_all_close(_params(full), _params(acc), rtol=1e-5, atol=1e-6)


def test_ema_follows_the_parameters():
  task, mesh = RegressionTask(), shd.make_mesh()
  init, _ = _run(task, mesh, [], config=StepConfig(ema_decay=0.9))
  state, _ = _run(task, mesh, _batches(1), config=StepConfig(ema_decay=0.9))
  expected = jax.tree.map(
    lambda e, p: 0.9 * e + 0.1 * p, _params(init)["model"], _params(state)["model"]
  )
  chex.assert_trees_all_close(jax.device_get(state.parts["model"].ema_params), expected, rtol=1e-6)


def test_nonfinite_loss_is_recorded_with_its_step():
  class Explodes(RegressionTask):
    def loss(self, part, variables, batch, rng, *, train, step=None):
      loss, m, u = super().loss(part, variables, batch, rng, train=train, step=step)
      return jnp.where(batch["label"][0] == 99, jnp.nan, loss), m, u

  batches = _batches(5)
  batches[3]["label"][0] = 99
  state, _ = _run(Explodes(), shd.make_mesh(), batches)
  assert int(state.nonfinite_step) == 3
  names = state_lib.nonfinite_metric_names(("model",))
  assert names[int(state.nonfinite_metric)] == "model/loss"


@pytest.mark.parametrize("split,accum", [(True, 1), (True, 2), (False, 1)])
def test_split_repeats_give_each_critic_update_its_own_rows(split, accum):
  """With split_repeats, update i of a 4-update part sees rows i, i + 4, ... of the global batch
  (micro-batch j of it: every accum-th of those); the one-update part sees the whole batch. On 8
  devices, so every chunk spans all of them. Without it every repetition sees all 64 rows."""
  n, b = 4, 64
  per_update = b // n if split else b
  task = RecorderTask(calls=(n * accum, accum), rows=(per_update // accum, b // accum))
  config = StepConfig(part_steps=(("critic", n),), split_repeats=split, grad_accum=accum)
  batches = _batches(1, batch=b)
  batches[0]["label"] = np.arange(b, dtype=np.int32)  # row i has label i
  state, _ = _run(task, shd.make_mesh(), batches, config=config)
  seen = {
    p: np.asarray(jax.device_get(state.parts[p].collections["record"]["seen"])) for p in task.parts
  }
  labels = np.arange(b)
  chunks = [labels[i::n] for i in range(n)] if split else [labels] * n
  expected = [c[j::accum] for c in chunks for j in range(accum)]
  np.testing.assert_array_equal(seen["critic"], np.stack(expected))
  np.testing.assert_array_equal(np.sort(seen["gen"].ravel()), labels)  # all 64 rows, once
  if split:  # disjoint chunks that together are the batch
    assert len(np.unique(seen["critic"])) == b


def test_split_repeats_batch_must_divide_into_chunks_and_devices():
  from research.config import base_config
  from research.errors import UserError
  from research.train import setup

  config = base_config()
  config.batch_size = 48
  config.train.part_steps = {"disc": 4}
  config.train.split_repeats = True
  mesh = shd.make_mesh()  # 8 devices: 48 / 4 = 12 rows per update do not divide by 8
  with pytest.raises(UserError, match="use a multiple of 32"):
    setup.validate(config, mesh)
  config.batch_size = 64
  setup.validate(config, mesh)
  config.train.grad_accum = 4
  with pytest.raises(UserError, match="use a multiple of 128"):
    setup.validate(config, mesh)
