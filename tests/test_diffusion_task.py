"""The diffusion family end to end: every config trains a step, training lowers the bound,
the bound's terms add up, both samplers and guidance run through the task."""

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research import data
from research.diffusion import samplers
from research.tasks.pixels import from_signed
from research.train import loop, setup
from tests.run_helpers import REPO, load_config

TINY = os.path.join(REPO, "tests", "configs", "ddpm_tiny.py")


@pytest.mark.parametrize(
  "arg",
  # Plain "runlocal" is covered by its two variants (CI time: each real step compiles a UNet);
  # the full-size configs are traced, not run, below.
  [
    "runlocal,conditional",
    pytest.param("runlocal,target=v,schedule=cosine", marks=pytest.mark.slow),
  ],
)
def test_one_train_step_of_each_mnist_config_on_mock_data(tmp_path, arg):
  config = load_config(os.path.join(REPO, "experiments", "ddpm_mnist.py"), arg)
  _one_step(config, "mnist", tmp_path, sample_every=1)


def test_one_train_step_of_the_cifar10_runlocal_config_on_mock_data(tmp_path):
  config = load_config(
    os.path.join(REPO, "experiments", "ddpm_cifar10.py"), "runlocal,bf16,conditional"
  )
  _one_step(config, "cifar10", tmp_path, sample_every=1)


@pytest.mark.parametrize(
  "name,shape,params",
  [("ddpm_mnist", (28, 28, 1), None), ("ddpm_cifar10", (32, 32, 3), 35_746_307)],
)
def test_the_full_size_configs_trace_their_train_step_and_sampler(name, shape, params):
  """The papers' UNets (35.7M parameters on CIFAR-10) with their optimizers, EMA and sampler fit
  the shared step (abstract evaluation: real sizes run in benchmarks/, not in tests)."""
  from research.train import state as state_lib
  from research.train.optim import make_optimizers
  from research.train.step import make_train_step

  config = load_config(os.path.join(REPO, "experiments", f"{name}.py"))
  task = setup.build_task(config, data.DatasetInfo(shape, 10, 1000, 100))
  opts = make_optimizers(config.optim, task.parts, config.train.num_steps)
  use_ema = config.train.ema_decay > 0
  state = jax.eval_shape(state_lib.state_factory(task, opts, shape, True, 0, use_ema))
  count = sum(x.size for x in jax.tree.leaves(state.parts["model"].params))
  assert params is None or count == params
  batch = {
    "image": jax.ShapeDtypeStruct((config.batch_size, *shape), jnp.uint8),
    "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }
  step = make_train_step(task, opts, loop.step_config(config))
  new_state, metrics = jax.eval_shape(step, state, batch)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
  assert "model/loss" in metrics
  samples = jax.eval_shape(lambda v: task.sample(v, jax.random.key(0), 4), state.variables())
  assert samples["images"].shape == (4, *shape) and samples["images"].dtype == jnp.uint8


def _one_step(config, dataset, workdir, sample_every):
  with config.unlocked():
    config.data.name = dataset
    config.batch_size = 8
    config.train.num_steps = 1
    config.train.sample_every = sample_every
    config.sample.grid_size = 8
    config.data.shuffle_buffer = 8
  with tfds.testing.mock_data(num_examples=16):
    state = loop.train(config, str(workdir))
  assert int(state.step) == 1
  leaves = jax.tree.leaves(jax.device_get(state.parts["model"].params))
  assert all(np.all(np.isfinite(x)) for x in leaves)
  if sample_every:
    assert os.path.exists(workdir / "samples" / "step_0000001.png")


def _train_and_evaluate(config, workdir: str, steps: int) -> dict:
  """`steps` of training (resumed in the workdir), then --mode=eval, in this process."""
  from research.eval import run as eval_run

  config.train.num_steps = steps
  loop.train(config, workdir)
  return eval_run.run_eval(config, workdir)


@pytest.mark.slow
def test_training_lowers_the_bound_and_its_terms_add_up(tmp_path, data_dir):
  from research.eval import run as eval_run

  workdir = str(tmp_path)
  config = load_config(TINY)
  config.data.data_dir = data_dir
  before = _train_and_evaluate(config, workdir, 1)
  after = _train_and_evaluate(config, workdir, 300)
  assert after["step"] == 300 and json.load(open(os.path.join(workdir, "eval.json")))["step"] == 300
  assert after["total_bpd"] < before["total_bpd"] - 0.5, (before, after)
  assert after["l_simple"] < before["l_simple"]
  for r in (before, after):
    parts = r["prior_bpd"] + r["terms_bpd"] + r["decoder_bpd"]
    assert r["total_bpd"] == pytest.approx(parts, rel=1e-5)
    assert r["prior_bpd"] < 1e-3  # q(x_T | x_0) is close to N(0, I) for T = 1000 linear betas
  # Both samplers through sample mode.
  for sampler in ("ddim", "ddpm"):
    config.sample.sampler = sampler
    eval_run.run_sample(config, workdir)
    with np.load(os.path.join(workdir, "samples.npz")) as f:
      assert f["images"].shape == (16, 8, 8, 1) and f["images"].dtype == np.uint8
      assert f["images"].std() > 10  # not a constant image


def test_guidance_scale_zero_is_the_conditional_model(data_dir):
  config = load_config(TINY, "conditional")
  with config.unlocked():
    config.data.data_dir = data_dir
  info = data.dataset_info(config.data)
  task = setup.build_task(config, info)
  batch = {"image": jnp.zeros((8, *info.image_shape), jnp.uint8), "label": jnp.arange(8) % 10}
  params = task.init(jax.random.key(0), batch)["model"]["params"]
  # Random weights everywhere (the paper's init makes a fresh UNet output ~0 for any label).
  keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(params)))
  leaves = [
    0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(params), strict=True)
  ]
  params = jax.tree.unflatten(jax.tree.structure(params), leaves)
  variables = {"model": {"params": params}}
  labels = jnp.arange(8, dtype=jnp.int32) % 10
  rng = jax.random.key(2)
  guided0 = task.sample(variables, rng, 8, labels)["images"]
  conditional = samplers.ddim_sample(
    jax.random.split(rng)[1],
    task.schedule,
    task._denoiser(params, labels),
    (8, 8, 8, 1),
    task.target,
    task.sampling.steps,
    task.sampling.eta,
    task.sampling.clip_x0,
  )
  np.testing.assert_array_equal(guided0, from_signed(conditional))
  strong = dataclasses.replace(task.sampling, guidance_scale=3.0)
  guided3 = dataclasses.replace(task, sampling=strong).sample(variables, rng, 8, labels)["images"]
  assert np.abs(guided3.astype(int) - guided0.astype(int)).mean() > 1


# ---- flow matching, EDM and MeanFlow on the same task ------------------------------------------
FLOW_TINY = os.path.join(REPO, "tests", "configs", "flow_tiny.py")


@pytest.mark.parametrize("objective", ["flow", "edm", "meanflow"])
def test_each_objective_trains_samples_and_evaluates_on_the_shared_step(
  tmp_path, data_dir, objective
):
  from research.eval.heldout import HeldOut

  config = load_config(FLOW_TINY, f"objective={objective},conditional")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.train.num_steps = 2
    config.sample.guidance_scale = 1.0
  state = loop.train(config, str(tmp_path))
  assert int(state.step) == 2
  exp = setup.build(config, str(tmp_path))
  exp.checkpointer.close()
  task = exp.task
  out = jax.jit(lambda v, r: task.sample(v, r, 8))(state.variables(), jax.random.key(0))
  assert out["images"].shape == (8, 8, 8, 1) and out["images"].dtype == jnp.uint8
  np.testing.assert_array_equal(out["labels"], np.arange(8) % 10)
  batches = [
    dict(b, mask=np.ones(32, np.float32))
    for b in [{"image": np.asarray(out["images"]).repeat(4, 0), "label": np.arange(32) % 10}]
  ]
  results = HeldOut(task)(state.variables(), batches, jax.random.key(1))
  assert results["num_examples"] == 32 and np.isfinite(results["loss"])
  assert ("ode_bpd" in results) == (objective == "flow")


def test_a_sampler_the_objective_cannot_run_is_a_one_line_error(data_dir):
  from research.errors import UserError

  config = load_config(FLOW_TINY, "objective=flow")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.sample.sampler = "ddim"
  info = data.dataset_info(config.data)
  with pytest.raises(UserError, match="does not sample the FlowObjective") as e:
    setup.build_task(config, info)
  assert "\n" not in str(e.value) and "heun" in str(e.value)
  config.sample.sampler = "heun"
  config.task.shfit = 2.0
  with pytest.raises(UserError, match="unknown config keys \\['shfit'\\]"):
    setup.build_task(config, info)


@pytest.mark.slow
def test_a_short_flow_run_lowers_held_out_bits_per_dim(tmp_path, data_dir):
  """Bits/dim through the probability-flow ODE (Hutchinson) falls as a tiny flow model trains."""
  workdir = str(tmp_path)
  config = load_config(FLOW_TINY)
  config.data.data_dir = data_dir
  before = _train_and_evaluate(config, workdir, 1)
  after = _train_and_evaluate(config, workdir, 300)
  assert after["ode_bpd"] < before["ode_bpd"] - 0.5, (before, after)
  assert after["loss"] < before["loss"]
  assert after["ode_bpd_steps"] == 4
