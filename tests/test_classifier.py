"""The in-domain digits classifier: it learns, its checkpoint loads as the "digits_classifier"
feature network, and a missing one fails with the command that trains it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from research.errors import UserError
from tests.run_helpers import tiny_classifier_config


@pytest.fixture(scope="module")
def classifier_workdir(trained_classifier):
  return trained_classifier("offline_digits")


@pytest.mark.slow
def test_classifier_reaches_high_held_out_accuracy(classifier_workdir, data_dir):
  from research.train import setup
  from tests.run_helpers import evaluation

  trained = setup.build_inference(tiny_classifier_config(data_dir), classifier_workdir)
  untrained = setup.build(tiny_classifier_config(data_dir), classifier_workdir + "_untrained")
  untrained.checkpointer.close()
  results = evaluation(trained).held_out_metrics(trained.variables)
  before = evaluation(untrained).held_out_metrics(untrained.state.variables(use_ema=True))
  assert results["num_examples"] == 359  # the held-out 8x8 digits
  assert before["accuracy"] < 0.3, before  # chance is 0.1: the accuracy comes from training
  assert results["accuracy"] > 0.85, results  # 0.92 after these 100 steps
  assert results["error_rate"] == pytest.approx(1 - results["accuracy"])
  assert results["cross_entropy_nats"] < 0.5 < before["cross_entropy_nats"]


@pytest.mark.slow
def test_checkpoint_loads_as_the_feature_network(classifier_workdir, data_dir):
  import ml_collections

  from research.eval import feature_nets
  from research.train import setup

  cfg = ml_collections.ConfigDict({"classifier_workdir": classifier_workdir})
  net = feature_nets.FEATURE_NETS.get("digits_classifier")(cfg)
  assert (net.input_size, net.feature_dim, net.num_classes, net.resize) == (8, 64, 10, "none")
  # Same logits as the trained task's EMA parameters (what sampling and eval use).
  exp = setup.build(tiny_classifier_config(data_dir), classifier_workdir)
  exp.checkpointer.close()
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
  ema = exp.state.variables(use_ema=True)["model"]["params"]
  want, _ = exp.task.logits_and_features(ema, images)
  out = jax.jit(net.apply)(net.params, images)
  assert out["features"].shape == (5, 64) and out["logits"].shape == (5, 10)
  np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)


def test_missing_classifier_names_the_command_that_trains_it(tmp_path, monkeypatch):
  import ml_collections

  from research.eval import feature_nets

  monkeypatch.delenv("RESEARCH_DIGITS_CLASSIFIER", raising=False)
  missing = str(tmp_path / "nowhere")
  cfg = ml_collections.ConfigDict({"classifier_workdir": missing})
  with pytest.raises(UserError) as e:
    feature_nets.FEATURE_NETS.get("digits_classifier")(cfg)
  text = str(e.value)
  assert "\n" not in text and missing in text
  assert "python -m research.main --config=experiments/digits_classifier.py" in text
  # The environment variable is the fallback when the config leaves the field empty.
  monkeypatch.setenv("RESEARCH_DIGITS_CLASSIFIER", missing + "_env")
  with pytest.raises(UserError, match="nowhere_env"):
    feature_nets.FEATURE_NETS.get("digits_classifier")(
      ml_collections.ConfigDict({"classifier_workdir": ""})
    )


def test_translation_augmentation_moves_digits_within_the_shift():
  import jax.numpy as jnp

  from research.models.classifier import DigitsCNN
  from research.tasks.classifier import ClassifierTask

  task = ClassifierTask(model=DigitsCNN(), shift=2)
  x = jnp.zeros((64, 8, 8, 1)).at[:, 3, 4, 0].set(1.0)  # one lit pixel per image
  moved = task._augment(x, jax.random.key(0))
  _, ys, xs = np.nonzero(np.asarray(moved[..., 0]))  # [64] positions of the lit pixels
  assert moved.shape == x.shape and float(moved.sum()) == 64  # nothing falls off an 8x8 image
  assert set(ys) == {1, 2, 3, 4, 5} and set(xs) == {2, 3, 4, 5, 6}  # every offset in [-2, 2]
