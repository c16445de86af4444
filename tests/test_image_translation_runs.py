"""pix2pix and CycleGAN through the trainer, the eval and the sample modes, on sketched digits.

- A short pix2pix run (16x16, tiny networks) brings the held-out L1 below the constant image of
  the mean target (an untrained G's grey is about 5x above it; beating copying the sketch too
  takes the quick start's longer run); sample mode writes the translations with their
  inputs, targets and labels, and translation.png.
- A short CycleGAN run keeps each discriminator's history of generated images in its checkpoint:
  the one loader restores it exactly as training left it.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from PIL import Image

from research.eval import run as eval_run
from research.train import loop, restore
from tests.run_helpers import REPO, load_config

pytestmark = pytest.mark.slow


def _tiny(data_dir: str, steps: int):
  c = load_config(os.path.join(REPO, "experiments", "pix2pix_digits.py"), "runlocal")
  c.data.data_dir = data_dir
  c.data.image_size = 16
  c.batch_size = 16
  c.model.generator.update({"features": 8, "max_features": 32})
  c.model.discriminator.update({"features": 8, "n_layers": 1})
  for part in ("disc", "gen"):
    c.optim[part].learning_rate = 1e-3
    c.optim[part].hold_steps = steps // 2
  c.train.update({"num_steps": steps, "log_every": steps, "sample_every": 0})
  c.train.checkpoint_every = steps
  c.sample.num_samples = 16
  c.eval.update({"batch_size": 128, "num_samples": 64, "feature_net": ""})
  return c


def test_pix2pix_beats_the_constant_and_the_sketch_then_samples(tmp_path, data_dir):
  config, workdir = _tiny(data_dir, steps=300), str(tmp_path)
  loop.train(config, workdir)
  results = eval_run.run_eval(config, workdir)
  assert results["l1"] < results["l1_mean_target"], results
  assert results["ssim"] > 0.3 and results["psnr"] > 12.0, results

  out = eval_run.run_sample(config, workdir)
  assert set(out) == {"images", "inputs", "targets", "labels"}
  assert out["images"].shape == out["targets"].shape == (16, 16, 16, 1)
  assert out["images"].dtype == np.uint8
  with np.load(os.path.join(workdir, "samples.npz")) as saved:
    np.testing.assert_array_equal(saved["inputs"], out["inputs"])
  picture = np.asarray(Image.open(os.path.join(workdir, "translation.png")))
  assert picture.shape[1] == 2 * 3 * (16 + 1)  # input | output | target, drawn at scale 2


def test_cyclegan_history_is_saved_with_the_state(tmp_path, data_dir):
  c = load_config(os.path.join(REPO, "experiments", "cyclegan_horse2zebra.py"))
  steps = 3
  c.data.update(
    {
      "name": "offline_sketched_digits",
      "data_dir": data_dir,
      "split": "train",
      "unpaired_split": "train",
      "eval_split": "test",
      "unpaired_eval_split": "test",
      "image_size": 16,
      "jitter_size": 18,
      "shuffle_buffer": 100,
    }
  )
  c.batch_size = 8
  c.model.generator.update({"features": 4, "n_blocks": 1})
  c.model.discriminator.update({"features": 4, "n_layers": 1})
  c.train.update({"num_steps": steps, "checkpoint_every": steps, "log_every": steps})
  c.train.sample_every = 0
  c.eval.update({"batch_size": 16, "num_samples": 8, "sample_batch_size": 8, "feature_net": ""})
  for part in c.optim:
    c.optim[part].hold_steps = 0
  state = loop.train(c, str(tmp_path))
  trained = restore.load_trained(str(tmp_path), task_name="cyclegan")
  for disc in ("disc_a", "disc_b"):
    history = jax.device_get(state.parts[disc].collections["history"])
    assert int(history["count"]) == steps * c.batch_size
    restored = jax.device_get(trained.variables[disc]["history"])
    np.testing.assert_array_equal(restored["images"], history["images"])
    assert int(restored["count"]) == int(history["count"])
  out = eval_run.run_sample(c, str(tmp_path))
  assert out["images"].shape == out["inputs"].shape == (c.sample.num_samples, 16, 16, 1)
  assert os.path.exists(os.path.join(str(tmp_path), "translation.png"))
