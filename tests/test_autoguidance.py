"""Autoguidance (Karras et al. 2024): a diffusion model guided by a weaker run of the same task,
loaded through the one loader; the combination, its identities and its one-line errors."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import data
from research.diffusion import objectives as obj
from research.diffusion import schedules
from research.errors import UserError
from research.tasks import diffusion_sampling
from research.train import loop, setup
from tests.run_helpers import REPO, load_config

FLOW_TINY = os.path.join(REPO, "tests", "configs", "flow_tiny.py")


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, data_dir):
  """A tiny flow run with checkpoints at steps 1 and 2: step 1 guides step 2."""
  workdir = str(tmp_path_factory.mktemp("flow_run"))
  config = load_config(FLOW_TINY)
  with config.unlocked():
    config.data.data_dir = data_dir
    config.train.num_steps = 2
    config.train.checkpoint_every = 1
    config.optim.model.warmup_steps = 0  # step 1 moves the weights at full rate
  loop.train(config, workdir)
  return config, workdir


def _task(config, **sample):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.sample.update(sample)
  return setup.build_task(config, data.dataset_info(config.data))


def _variables(workdir: str, step: int):
  from research.train.restore import load_trained

  return load_trained(workdir, step=step).variables


def test_the_guided_output_is_one_plus_w_main_minus_w_guide(two_step_run):
  config, workdir = two_step_run
  task = _task(config, autoguidance=2.0, guide_workdir=workdir, guide_step=1)
  main, weak = _variables(workdir, 2), _variables(workdir, 1)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  c = jnp.full((4,), 500.0)
  out_main = task._net_fn(main["model"]["params"], None)(x, c)
  out_weak = task._net_fn(weak["model"]["params"], None)(x, c)
  assert float(jnp.max(jnp.abs(out_main - out_weak))) > 1e-4  # two different models
  guided = task.model_fn(main["model"]["params"], None)(x, c)
  np.testing.assert_allclose(guided, 3.0 * out_main - 2.0 * out_weak, rtol=1e-5, atol=1e-5)
  # Off (w = 0): nothing is loaded and the model is the main model alone.
  plain = _task(config, autoguidance=0.0, guide_workdir=workdir, guide_step=1)
  assert plain.guide is None
  np.testing.assert_array_equal(plain.model_fn(main["model"]["params"], None)(x, c), out_main)


def test_a_guide_equal_to_the_main_model_changes_no_sample(two_step_run):
  """(1 + w) D - w D = D: guided by itself, the sampler draws the unguided images."""
  config, workdir = two_step_run
  variables = _variables(workdir, 2)
  same = _task(config, autoguidance=3.0, guide_workdir=workdir, guide_step=2)
  plain = _task(config)
  rng = jax.random.key(3)
  a = np.asarray(jax.jit(lambda v: same.sample(v, rng, 8))(variables)["images"], np.int32)
  b = np.asarray(jax.jit(lambda v: plain.sample(v, rng, 8))(variables)["images"], np.int32)
  assert np.abs(a - b).max() <= 1  # float rounding at a uint8 boundary, at most


def test_a_guide_of_another_conditioning_or_none_is_a_one_line_error(two_step_run):
  config, workdir = two_step_run
  with pytest.raises(UserError, match="needs a guide") as e:
    _task(config, autoguidance=1.0)
  assert "\n" not in str(e.value)
  conditional = config.copy_and_resolve_references()
  with conditional.unlocked():
    conditional.task.conditional = True
  with pytest.raises(UserError, match="same data and conditioning") as e:
    _task(conditional, autoguidance=1.0, guide_workdir=workdir)
  assert "\n" not in str(e.value)
  edm = load_config(FLOW_TINY, "objective=edm")
  with edm.unlocked():
    edm.data.data_dir = config.data.data_dir
  with pytest.raises(UserError, match=r"\(objective: FlowObjective vs EDMObjective\)") as e:
    _task(edm, autoguidance=1.0, guide_workdir=workdir)
  assert "\n" not in str(e.value)


def test_only_fields_that_read_the_output_must_agree():
  flow = obj.FlowObjective()
  assert diffusion_sampling._differing_field(flow, obj.FlowObjective(loc=0.5, shift=3.0)) is None
  assert (
    diffusion_sampling._differing_field(flow, obj.FlowObjective(time_scale=1.0)) == "time_scale"
  )
  assert diffusion_sampling._differing_field(flow, obj.EDMObjective()) == "objective"
  edm = obj.EDMObjective()
  assert diffusion_sampling._differing_field(edm, obj.EDMObjective(p_mean=0.0)) is None
  assert diffusion_sampling._differing_field(edm, obj.EDMObjective(sigma_data=1.0)) == "sigma_data"
  linear = obj.DDPMObjective(schedules.make_schedule("linear", 1000))
  assert diffusion_sampling._differing_field(linear, dataclasses.replace(linear)) is None
  cosine = obj.DDPMObjective(schedules.make_schedule("cosine", 1000))
  assert diffusion_sampling._differing_field(linear, cosine) == "schedule"
  v = obj.DDPMObjective(schedules.make_schedule("linear", 1000), "v")
  assert diffusion_sampling._differing_field(linear, v) == "prediction"


def test_autoguidance_adds_one_network_pass_per_step():
  flow = obj.FlowObjective()
  heun = diffusion_sampling.SamplerConfig(sampler="heun", steps=4)  # 2N - 1 = 7 evaluations
  assert diffusion_sampling.evaluations(heun, flow, guided=False) == 7
  auto = dataclasses.replace(heun, autoguidance=2.0)
  assert diffusion_sampling.evaluations(auto, flow, guided=False) == 14
  assert diffusion_sampling.evaluations(auto, flow, guided=True) == 21


@pytest.mark.parametrize("name", ["flow_mnist", "edm_mnist", "ddpm_mnist"])
def test_the_guide_argument_takes_the_checkpoint_three_quarters_through(name):
  path = os.path.join(REPO, "experiments", f"{name}.py")
  quick = load_config(path, "runlocal,guide=workdirs/x")
  assert quick.sample.guide_workdir == "workdirs/x" and quick.sample.autoguidance > 0
  assert quick.sample.guide_step == 1_950 and quick.train.num_steps == 2_600
  kept = range(quick.train.num_steps, 0, -quick.train.checkpoint_every)[: quick.train.max_to_keep]
  assert quick.sample.guide_step in kept  # retention keeps the guide
  full = load_config(path, "guide=workdirs/x,autoguidance=2")
  every = full.train.checkpoint_every
  assert full.sample.autoguidance == 2.0
  assert full.sample.guide_step == int(0.75 * full.train.num_steps) // every * every
  assert "autoguidance" not in load_config(path, "runlocal").sample


def test_guidance_acts_only_inside_its_sigma_interval(two_step_run):
  """Kynkäänniemi et al. 2024: guided where sigma lies in the interval, the main model elsewhere."""
  config, workdir = two_step_run
  task = _task(config, autoguidance=2.0, guide_workdir=workdir, guide_step=1,
               guidance_interval=(0.5, 2.0))  # fmt: skip
  everywhere = _task(config, autoguidance=2.0, guide_workdir=workdir, guide_step=1)
  params = _variables(workdir, 2)["model"]["params"]
  t = jnp.array([0.1, 0.5, 0.6, 0.9])  # flow sigma = t / (1 - t): 0.11, 1, 1.5, 9
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  c = 1000.0 * t
  out = task.model_fn(params, None)(x, c)
  guided = everywhere.model_fn(params, None)(x, c)
  plain = task._net_fn(params, None)(x, c)
  np.testing.assert_allclose(out[1:3], guided[1:3], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out[::3], plain[::3])
  assert float(jnp.max(jnp.abs(guided[::3] - plain[::3]))) > 1e-4
  with pytest.raises(UserError, match="guidance_interval") as e:
    _task(config, guidance_interval=(2.0, 1.0))
  assert "\n" not in str(e.value)
