"""The GAN runlocal configs, unshrunk, take real training steps through the real loop and data
pipeline on 8 fake devices: DCGAN on TFDS mock CIFAR-10 (then sample mode, with labels), and the
small TransGAN on the offline 8x8 digits. Compilation dominates their runtime."""

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.eval import run as eval_run
from research.train import loop, setup
from tests.run_helpers import REPO, load_config


def _config(name, arg, **train):
  config = load_config(os.path.join(REPO, "experiments", f"{name}.py"), arg)
  with config.unlocked():
    config.train.update(train)
    config.train.async_checkpoint = False
  return config


def _finite_and_moved(state, before):
  after = jax.device_get({p: s.params for p, s in state.parts.items()})
  for part in ("disc", "gen"):
    leaves = jax.tree.leaves(after[part])
    assert all(np.isfinite(x).all() for x in leaves), part
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before[part], after[part])
    assert min(jax.tree.leaves(moved)) > 0, part  # every parameter got a gradient


@pytest.mark.slow
def test_dcgan_cifar10_runlocal_conditional_steps_on_mock_data_and_samples_with_labels(tmp_path):
  """The runlocal config as shipped (batch 64, projection D with spectral norm), one step through
  `loop.train` on mock cifar10, a sample grid, then `--mode=sample`: samples.npz with labels."""
  config = _config(
    "dcgan_cifar10", "runlocal,conditional", num_steps=1, sample_every=1, checkpoint_every=1
  )
  with config.unlocked():
    config.data.shuffle_buffer = 64
    config.sample.num_samples = 16
    config.eval.batch_size = 64
  with tfds.testing.mock_data(num_examples=128):
    init = setup.build(config, str(tmp_path / "init"))
    init.checkpointer.close()
    before = jax.device_get({p: s.params for p, s in init.state.parts.items()})
    state = loop.train(config, str(tmp_path))
    assert int(state.step) == 1
    _finite_and_moved(state, before)
    assert os.path.exists(tmp_path / "samples" / "step_0000001.png")
    eval_run.run_sample(config, str(tmp_path))
  samples = np.load(tmp_path / "samples.npz")
  assert samples["images"].shape == (16, 32, 32, 3) and samples["images"].dtype == np.uint8
  np.testing.assert_array_equal(samples["labels"], np.arange(16) % 10)
  assert os.path.exists(tmp_path / "samples.png") and os.path.exists(tmp_path / "class_grid.png")


@pytest.mark.slow
def test_transgan_digits_runlocal_steps_on_the_offline_digits(tmp_path, data_dir):
  """The runlocal TransGAN recipe as shipped (WGAN-GP + drift, 2 critic updates on their own 32
  real digits each, 64 fakes for G, DiffAugment, G EMA): two real steps."""
  config = _config(
    "transgan_digits", "runlocal", num_steps=2, log_every=1, checkpoint_every=2, sample_every=0
  )
  with config.unlocked():
    config.data.data_dir = data_dir
  init = setup.build(config, str(tmp_path / "init"))
  init.checkpointer.close()
  before = jax.device_get({p: s.params for p, s in init.state.parts.items()})
  state = loop.train(config, str(tmp_path))
  assert int(state.step) == 2
  _finite_and_moved(state, before)
  counts = jax.device_get({p: s.opt_state[0][0].count for p, s in state.parts.items()})
  assert counts == {"disc": 4, "gen": 2}
  assert state.parts["disc"].ema_params == {}  # only G keeps an EMA
  used = state.variables(use_ema=True)  # what sample grids, sample and eval modes get
  assert used["gen"]["params"] is state.parts["gen"].ema_params
  assert used["disc"]["params"] is state.parts["disc"].params
  ema = jax.device_get(state.parts["gen"].ema_params)
  assert (
    max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ema, before["gen"])))
    > 0
  )
