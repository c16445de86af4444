"""The in-domain digits classifier: it learns, its checkpoint loads as the "digits_classifier"
feature network, and a missing one fails with the command that trains it."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from research.errors import UserError
from tests.run_helpers import REPO, load_config

EXPERIMENT = os.path.join(REPO, "experiments", "digits_classifier.py")
_TRAINED: dict[tuple[str, str], str] = {}  # (data_dir, dataset) -> workdir, once per session


def tiny_classifier_config(data_dir: str, steps: int = 100, dataset: str = "offline_digits"):
  """experiments/digits_classifier.py on the 8x8 offline digits (or `dataset`), shrunk to seconds."""
  c = load_config(EXPERIMENT, f"data={dataset}")
  c.data.data_dir = data_dir
  c.data.shuffle_buffer = 2_000
  c.batch_size = 64
  c.model.channels = (16, 32)
  c.model.convs_per_stage = 1
  c.model.hidden = 64
  c.model.dropout = 0.1
  c.task.shift = 0
  c.optim.model.learning_rate = 3e-3
  c.optim.model.warmup_steps = 10
  c.train.ema_decay = 0.9  # a short run: the EMA must forget the initial weights
  c.train.num_steps = steps
  c.train.log_every = steps
  c.train.checkpoint_every = steps
  c.eval.batch_size = 128
  return c


def trained_classifier(tmp_path_factory, data_dir: str, dataset: str = "offline_digits") -> str:
  """The workdir of a tiny classifier of `dataset` trained in this process (once per session)."""
  if (data_dir, dataset) not in _TRAINED:
    from research.train import loop

    workdir = str(tmp_path_factory.mktemp("digits_classifier"))
    loop.train(tiny_classifier_config(data_dir, dataset=dataset), workdir)
    _TRAINED[data_dir, dataset] = workdir
  return _TRAINED[data_dir, dataset]


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory, data_dir):
  return trained_classifier(tmp_path_factory, data_dir)


def test_classifier_reaches_high_held_out_accuracy(classifier_workdir, data_dir):
  from research.eval import run as eval_run
  from research.train import setup

  exp = setup.build(tiny_classifier_config(data_dir), classifier_workdir, require_checkpoint=True)
  exp.checkpointer.close()
  untrained = setup.build(tiny_classifier_config(data_dir), classifier_workdir + "_untrained")
  untrained.checkpointer.close()
  results = eval_run.evaluate_state(exp, exp.state)
  before = eval_run.evaluate_state(untrained, untrained.state)
  assert results["num_examples"] == 359  # the held-out 8x8 digits
  assert before["accuracy"] < 0.3, before  # chance is 0.1: the accuracy comes from training
  assert results["accuracy"] > 0.85, results  # 0.92 after these 100 steps
  assert results["error_rate"] == pytest.approx(1 - results["accuracy"])
  assert results["cross_entropy_nats"] < 0.5 < before["cross_entropy_nats"]


def test_checkpoint_loads_as_the_feature_network(classifier_workdir, data_dir):
  import ml_collections

  from research.eval import feature_nets
  from research.train import setup

  cfg = ml_collections.ConfigDict({"classifier_workdir": classifier_workdir})
  net = feature_nets.FEATURE_NETS.get("digits_classifier")(cfg)
  assert (net.input_size, net.feature_dim, net.num_classes, net.resize) == (8, 64, 10, "none")
  # Same logits as the trained task's EMA parameters (what sampling and eval use).
  exp = setup.build(tiny_classifier_config(data_dir), classifier_workdir, require_checkpoint=True)
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
