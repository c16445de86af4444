"""The in-domain digits classifier: it learns, its checkpoint loads as the "digits_classifier"
feature network, and a missing one is trained once into the shared cache."""

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


_LOAD = """
import sys, ml_collections
from research.eval import feature_nets
config = ml_collections.ConfigDict({"classifier_data": "offline_digits", "classifier_steps": 30})
net = feature_nets.FEATURE_NETS.get("digits_classifier")(config)
total = sum(float(abs(x).sum()) for x in __import__("jax").tree.leaves(net.params))
print(net.weights, net.input_size, total)
"""


@pytest.mark.slow
def test_a_missing_classifier_is_trained_into_the_cache_once_and_reused(
  tmp_path, data_dir, monkeypatch, capsys
):
  """Two processes start at once on an empty cache: one trains (one line says so, and where), the
  other waits for it and reads the finished classifier; a third load, here, trains nothing."""
  import os
  import subprocess
  import sys

  import ml_collections

  from research.eval import classifier_cache, feature_nets
  from tests.run_helpers import REPO, subprocess_env

  cache = tmp_path / "cache"
  monkeypatch.setenv("RESEARCH_DIGITS_CLASSIFIER", str(cache))
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  env = subprocess_env(data_dir, RESEARCH_DIGITS_CLASSIFIER=str(cache))
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _LOAD],
      cwd=REPO,
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for _ in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  entry = str(cache / "offline_digits-30steps")
  said = [x for _, err in outs for x in err.splitlines() if x.startswith("training the digits")]
  assert len(said) == 1 and entry in said[0], said
  assert outs[0][0] == outs[1][0] and outs[0][0].startswith(f"{entry} step 30 ")  # the same net
  assert sorted(os.listdir(cache)) == ["offline_digits-30steps", "offline_digits-30steps.lock"]
  config = ml_collections.ConfigDict({"classifier_data": "offline_digits", "classifier_steps": 30})
  assert classifier_cache.workdir(config) == entry
  net = feature_nets.FEATURE_NETS.get("digits_classifier")(config)
  assert net.input_size == 8 and "training" not in capsys.readouterr().err


def test_a_corrupt_or_foreign_cached_classifier_is_one_line_naming_the_folder_to_delete(
  tmp_path, monkeypatch, trained_classifier
):
  import shutil

  import ml_collections

  from research.eval import feature_nets

  monkeypatch.setenv("RESEARCH_DIGITS_CLASSIFIER", str(tmp_path))
  config = ml_collections.ConfigDict({"classifier_data": "offline_digits"})
  load = feature_nets.FEATURE_NETS.get("digits_classifier")
  entry = tmp_path / "offline_digits"

  def refused(*words: str) -> None:
    with pytest.raises(UserError) as e:
      load(config)
    text = str(e.value)
    assert "\n" not in text and f"delete {entry}" in text, text
    assert all(w in text for w in words), text

  entry.mkdir()  # a folder, but no run in it: never trained into, never overwritten
  refused("holds no trained digits classifier")
  shutil.rmtree(entry)
  shutil.copytree(trained_classifier("offline_digits"), entry)
  assert load(config).input_size == 8  # a good entry loads
  for config_json in entry.glob("checkpoints/*/config/*"):  # of another family
    config_json.write_text(config_json.read_text().replace('"classifier"', '"vae"'))
  refused("'vae' run, not 'classifier'")
  shutil.rmtree(entry)
  shutil.copytree(trained_classifier("offline_digits"), entry)
  for f in entry.glob("checkpoints/*/state/**/*"):  # its weights damaged
    if f.is_file():
      f.write_bytes(b"garbage")
  refused("cannot be used")


def test_no_feature_net_trains_no_classifier(tmp_path, monkeypatch):
  from research.config import base_config
  from research.eval import sample_and_score

  monkeypatch.setenv("RESEARCH_DIGITS_CLASSIFIER", str(tmp_path / "cache"))
  config = base_config()
  config.eval.feature_net = ""
  assert sample_and_score.load_feature_net(config) is None
  assert not (tmp_path / "cache").exists()


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
