"""Sample-and-score with the digits classifier's features: real digits beat noise and blur on every
metric, label agreement, the reference-statistics cache, and `--mode=eval` / training eval output."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from research.eval import sample_and_score as sas
from tests.run_helpers import run_main, scored_vae_tiny


@pytest.fixture(scope="module")
def setting(tmp_path_factory, data_dir, trained_classifier):
  classifier = trained_classifier("offline_digits")
  return scored_vae_tiny(tmp_path_factory, data_dir, classifier, kid_subsets=20)


def _split_images(config, mesh, split: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, 8, 8, 1] and labels [N] of a split, via the data pipeline."""
  from research import data
  from research.eval import reference_stats
  from research.train import sharding as shd

  images, labels = [], []
  for b in data.eval_iterator(
    reference_stats._split_data_config(config, split),
    global_batch_size=128,
    sharding=shd.batch_sharding(mesh),
  ):
    keep = np.asarray(b["mask"]) > 0
    images.append(np.asarray(b["image"])[keep])
    labels.append(np.asarray(b["label"])[keep])
  return np.concatenate(images), np.concatenate(labels)


def _features(net, images):
  out = jax.jit(net.apply)(net.params, images)
  return np.asarray(out["features"]), np.asarray(out["logits"])


@pytest.mark.slow
def test_real_digits_score_far_better_than_noise_and_blur(setting):
  from research.eval import reference_stats

  config, net, mesh = setting
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.reference_split = "train"  # 1,438 training digits as the reference
  reference = reference_stats.get_or_compute(config, mesh, net, "unused")
  held_out, _ = _split_images(config, mesh, "test")  # 359 digits the reference has not seen
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, held_out.shape, dtype=np.uint8)
  blurred = scipy.ndimage.uniform_filter(held_out.astype(np.float64), size=(1, 3, 3, 1))
  blurred = np.clip(np.round(blurred), 0, 255).astype(np.uint8)
  scores = {
    name: sas.feature_metrics(reference, *_features(net, x), None, config.eval)
    for name, x in (("real", held_out), ("noise", noise), ("blur", blurred))
  }
  real, noisy, blur = scores["real"], scores["noise"], scores["blur"]
  for bad in (noisy, blur):
    assert real["fid"] < 0.25 * bad["fid"], scores
    assert real["kid"] < 0.25 * bad["kid"], scores
    assert real["precision"] > bad["precision"] + 0.2, scores
    assert real["recall"] > bad["recall"] + 0.2, scores
    assert real["class_entropy_nats"] > bad["class_entropy_nats"], scores
  assert real["class_entropy_nats"] > 0.97 * np.log(10)  # every digit about equally often
  assert real["fid_n"] == 359 and real["fid_reference_n"] == 1438
  hist = [real[f"class_fraction/{k}"] for k in range(10)]
  assert sum(hist) == pytest.approx(1.0) and min(hist) > 0.05


def test_class_histogram_entropy_and_label_agreement_by_hand():
  logits = np.eye(10)[[0, 1, 2, 2]] * 5.0  # predicted classes 0, 1, 2, 2
  hist = sas.class_histogram(logits, 10)
  np.testing.assert_allclose(hist[:3], [0.25, 0.25, 0.5])
  assert sas.entropy_nats(hist) == pytest.approx(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)))
  assert sas.entropy_nats(np.full(10, 0.1)) == pytest.approx(np.log(10))
  assert sas.label_agreement(logits, np.array([0, 1, 2, 9])) == 0.75
  # Confidence: max softmax of [5, 0 x 9] is e^5 / (e^5 + 9) = 0.943 >= 0.9; of [2, 0 x 9], 0.45.
  assert sas.confident_fraction(logits) == 1.0
  mixed = np.concatenate([logits[:1], np.eye(10)[[3]] * 2.0, np.zeros((2, 10))])
  assert sas.confident_fraction(mixed) == 0.25
  assert sas.confident_fraction(mixed, threshold=0.4) == 0.5


@dataclasses.dataclass(frozen=True)
class RealDigitsTask:
  """A stand-in generator whose "samples" are real digits with their labels (shuffled or not)."""

  images: jax.Array  # uint8 [N, H, W, C]
  labels: jax.Array  # int32 [N]
  shuffle: bool = False
  parts: tuple[str, ...] = ("model",)

  def sample(self, variables, rng, num):
    idx = jax.random.choice(rng, self.images.shape[0], (num,), replace=False)
    labels = self.labels[idx]
    if self.shuffle:
      labels = jax.random.permutation(jax.random.fold_in(rng, 1), labels)
    return {"images": self.images[idx], "labels": labels}


@pytest.mark.slow
def test_conditional_label_agreement_through_the_sharded_scorer(setting):
  config, net, mesh = setting
  images, labels = _split_images(config, mesh, "test")
  logits = _features(net, images)[1]
  accuracy = float(np.mean(np.argmax(logits, 1) == labels))
  results = {}
  for shuffle in (False, True):
    task = RealDigitsTask(jnp.asarray(images), jnp.asarray(labels, jnp.int32), shuffle)
    scorer = sas.Scorer.create(config, task, mesh, "unused", (8, 8, 1))
    results[shuffle] = scorer.score({}, jax.random.key(0), 320)  # 5 batches of 64 on 8 devices
  assert results[False]["fid_n"] == 320
  assert (
    results[False]["label_agreement"] > 0.85
    and abs(results[False]["label_agreement"] - accuracy) < 0.06
  ), (results[False], accuracy)
  assert results[True]["label_agreement"] < 0.25, results[True]  # chance: about 0.1
  for key in ("fid", "kid", "precision", "recall", "inception_score", "class_entropy_nats"):
    assert np.isfinite(results[False][key])
  assert results[False]["inception_score"] > 3  # confident and diverse: 1 <= score <= 10


@pytest.mark.slow
def test_non_uint8_samples_are_a_user_error(setting):
  from research.errors import UserError

  config, net, mesh = setting

  class FloatTask(RealDigitsTask):
    def sample(self, variables, rng, num):
      return {"images": jnp.zeros((num, 8, 8, 1), jnp.float32)}

  scorer = sas.Scorer.create(config, FloatTask(jnp.zeros(1), jnp.zeros(1)), mesh, "x", (8, 8, 1))
  with pytest.raises(UserError, match="uint8"):
    scorer.score({}, jax.random.key(0), 64)


@pytest.mark.slow
def test_reference_stats_cache_hit_miss_and_conventions(setting, tmp_path, monkeypatch):
  from research.eval import metrics, reference_stats

  config, net, mesh = setting
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.reference_cache_dir = ""
  monkeypatch.setenv("RESEARCH_REFERENCE_CACHE", str(tmp_path / "shared"))
  first = reference_stats.get_or_compute(config, mesh, net, str(tmp_path / "workdir"))
  again = reference_stats.get_or_compute(config, mesh, net, str(tmp_path / "workdir"))
  assert (first.cache_hit, again.cache_hit) == (False, True)
  assert first.path.startswith(str(tmp_path / "shared"))
  np.testing.assert_array_equal(first.sigma, again.sigma)
  recorded = json.load(open(first.path + ".json"))
  assert recorded["num_images"] == 359 and recorded["split"] == "test"
  assert recorded["dataset"] == "offline_digits"
  assert recorded["pipeline_resize"] == "none (native size)"
  assert recorded["feature_net"] == "digits_classifier"
  assert recorded["feature_net_input_size"] == 8 and recorded["feature_net_resize"] == "none"
  assert "uint8" in recorded["quantization"]
  assert recorded["feature_net_weights_sha256"] == reference_stats.fingerprint(net.params)
  # The cached statistics are those of the split's features.
  images, _ = _split_images(config, mesh, "test")
  mu, sigma = metrics.gaussian_stats(_features(net, images)[0])
  np.testing.assert_allclose(again.mu, mu, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(again.sigma, sigma, rtol=1e-3, atol=1e-4)
  # Another split, another cap on kept features, or other weights: other entries (misses).
  config.eval.reference_split = "train"
  train = reference_stats.get_or_compute(config, mesh, net, "unused")
  assert not train.cache_hit and train.num_images == 1438 and train.path != first.path
  config.eval.reference_split = ""
  config.eval.reference_max_features = 100
  capped = reference_stats.get_or_compute(config, mesh, net, "unused")
  assert not capped.cache_hit and capped.features.shape == (100, net.feature_dim)
  np.testing.assert_allclose(capped.mu, first.mu)  # mu and sigma always use every image
  other = dataclasses.replace(net, params=jax.tree.map(lambda p: p * 1.01, net.params))
  assert not reference_stats.get_or_compute(config, mesh, other, "unused").cache_hit
  # Explicit cache folder in the config wins over the environment.
  config.eval.reference_cache_dir = str(tmp_path / "configured")
  assert reference_stats.get_or_compute(config, mesh, net, "x").path.startswith(
    str(tmp_path / "configured")
  )


@pytest.mark.slow
def test_eval_mode_and_training_eval_write_sample_metrics(tmp_path, setting, data_dir, capsys):
  config, _, _ = setting
  workdir = str(tmp_path / "vae")
  flags = [
    "--config.eval.feature_net=digits_classifier",
    f"--config.eval.classifier_workdir={config.eval.classifier_workdir}",
    "--config.eval.num_samples=96",
    "--config.eval.train_num_samples=32",
    "--config.eval.sample_batch_size=32",
    "--config.eval.kid_subsets=10",
  ]
  proc = run_main(workdir, data_dir, "--config.train.eval_every=6", *flags)
  assert "eval step 12: " in proc.stdout and "fid=" in proc.stdout
  tags = _event_tags(os.path.join(workdir, "tensorboard"))
  assert {"eval/fid", "eval/kid", "eval/precision", "eval/iwae8_nll_nats"} <= tags
  run_main(workdir, data_dir, "--mode=eval", *flags)
  results = json.load(open(os.path.join(workdir, "eval.json")))
  assert (
    results["fid_n"] == 96 and results["fid"] > 0 and results["feature_net"] == "digits_classifier"
  )
  for key in ("kid", "precision", "recall", "inception_score", "class_entropy_nats"):
    assert key in results, results
  assert results["iwae8_nll_nats"] > 0  # the task's own metrics are still there
  assert json.load(open(results["reference_stats"]))["num_images"] == 359
  # An unusable classifier (a folder without a run): the likelihood metrics are still written,
  # with a note naming the folder to delete (in this process: what research.main runs for eval).
  from research.eval import run as eval_run

  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.eval.classifier_workdir = str(tmp_path / "empty")
  os.mkdir(cfg.eval.classifier_workdir)
  eval_run.run_eval(cfg, workdir)
  assert "note: sample metrics skipped" in capsys.readouterr().err
  results = json.load(open(os.path.join(workdir, "eval.json")))
  assert "fid" not in results and "iwae8_nll_nats" in results
  assert f"delete {tmp_path / 'empty'}" in results["sample_metrics_skipped"]


def _event_tags(folder: str) -> set[str]:
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

  tags = set()
  for name in os.listdir(folder):
    for event in EventFileLoader(os.path.join(folder, name)).Load():
      tags.update(v.tag for v in event.summary.value)
  return tags
