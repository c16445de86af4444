"""Latent diffusion: a diffusion model on the latents of a frozen autoencoder of the project.

One tiny run of each stage on the offline digits: the first stage's parameters sit in the latent
run's state unchanged by training, and in its checkpoint (the one loader restores them from the
latent run alone); the latent scale is 1 / the std of the held-out latents; samples are pixels.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from research import data
from research.config import adam
from research.tasks.diffusion import FIRST_STAGE, LATENT_SCALE_IMAGES
from research.train import loop, restore
from tests.run_helpers import REPO, load_config

pytestmark = pytest.mark.slow  # two short training runs, a restore and a sampler: about a minute


def _same(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def test_latent_diffusion_on_a_frozen_autoencoder(tmp_path, data_dir):
  ae_dir, latent_dir = str(tmp_path / "autoencoder"), str(tmp_path / "latent")
  ae = load_config(os.path.join(REPO, "experiments", "autoencoder_mnist.py"), "runlocal,disc=false")
  ae.data.data_dir = data_dir
  ae.batch_size = 8
  ae.model.update({"block_out_channels": (8, 8, 16), "norm_num_groups": 4})
  ae.optim.model = adam(1e-3, b1=0.5, b2=0.9)
  ae.train.update({"num_steps": 2, "eval_every": 0, "checkpoint_every": 2, "sample_every": 0})
  loop.train(ae, ae_dir)
  first = restore.load_trained(ae_dir, task_name="autoencoder")

  c = load_config(
    os.path.join(REPO, "experiments", "latent_mnist.py"), f"runlocal,autoencoder={ae_dir},steps=2"
  )
  c.data.data_dir = data_dir
  c.batch_size = 8
  c.model.update({"hidden_size": 32, "depth": 1, "num_heads": 2})
  c.train.update({"checkpoint_every": 2, "sample_every": 0})
  c.sample.steps = 2
  c.eval.batch_size = 64
  state = loop.train(c, latent_dir)
  frozen = jax.device_get(state.parts["model"].collections[FIRST_STAGE])
  assert _same(frozen, jax.device_get(first.variables["model"]["params"]))  # trained, unchanged

  trained = restore.load_trained(latent_dir, task_name="diffusion")
  assert _same(jax.device_get(trained.variables["model"][FIRST_STAGE]), frozen)
  task = trained.task
  assert task.image_shape == (7, 7, 3)
  images = data.held_out_examples(c.data, LATENT_SCALE_IMAGES)["image"]
  z = np.asarray(first.task.encode(first.variables, images), np.float64)
  np.testing.assert_allclose(task.latent_scale, 1.0 / z.std(), rtol=1e-5)
  out = jax.jit(lambda v, r: task.sample(v, r, 8))(trained.variables, jax.random.key(0))
  assert out["images"].shape == (8, 28, 28, 1) and out["images"].dtype == np.uint8
