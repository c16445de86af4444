"""The VAE family end to end: every config trains a step, training lowers the held-out NLL."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.train import loop
from tests.run_helpers import REPO, load_config, run_main


def _load(name, arg=""):
  return load_config(os.path.join(REPO, "experiments", f"{name}.py"), arg)


@pytest.mark.parametrize(
  "name,arg,dataset",
  [
    ("vae_mnist", "runlocal", "mnist"),
    ("vae_mnist", "runlocal,model=mlp_vae", "mnist"),
    ("vae_mnist", "runlocal,likelihood=discretized_logistic", "mnist"),
    ("vae_cifar10", "runlocal", "cifar10"),
    pytest.param("vae_cifar10", "", "cifar10", marks=pytest.mark.slow),  # the full-size model
  ],
)
def test_one_train_step_of_each_config_on_mock_data(tmp_path, name, arg, dataset):
  config = _load(name, arg)
  with config.unlocked():
    config.data.name = dataset  # the offline MNIST config on TFDS's mnist spec
    config.batch_size = 8
    config.train.num_steps = 1
    config.train.sample_every = 1
    config.data.shuffle_buffer = 8
  with tfds.testing.mock_data(num_examples=16):
    state = loop.train(config, str(tmp_path))
  assert int(state.step) == 1
  assert np.isfinite(float(jax.device_get(state.parts["model"].params["dec_out"]["bias"]).sum()))
  assert os.path.exists(tmp_path / "samples" / "step_0000001.png")


def test_cifar10_config_is_the_documented_model():
  config = _load("vae_cifar10")
  assert config.task.likelihood == "discretized_logistic"
  assert tuple(config.model.channels) == (64, 128, 256)


@pytest.mark.slow
def test_training_lowers_the_held_out_nll(tmp_path, data_dir):
  workdir = str(tmp_path)
  flags = ["--config.train.checkpoint_every=100", "--config.task.iwae_k=16"]
  run_main(workdir, data_dir, "--config.train.num_steps=1", *flags)
  run_main(workdir, data_dir, "--mode=eval", *flags)
  before = json.load(open(os.path.join(workdir, "eval.json")))
  run_main(workdir, data_dir, "--config.train.num_steps=150", *flags)
  run_main(workdir, data_dir, "--mode=eval", *flags)
  after = json.load(open(os.path.join(workdir, "eval.json")))
  assert before["step"] == 1 and after["step"] == 150
  # 8x8 binarised digits: ~44 nats at initialisation (64 pixels x ln 2); training must cut it well.
  assert after["iwae16_nll_nats"] < before["iwae16_nll_nats"] - 5, (before, after)
  # The bounds are ordered: -ELBO >= IWAE NLL, both positive.
  assert after["neg_elbo_nats"] >= after["iwae16_nll_nats"] > 0
