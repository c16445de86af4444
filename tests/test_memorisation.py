"""Data-copying (Meehan et al. 2020): the C_T test and copy fraction on synthetic features, the
Mann-Whitney Z against scipy, k-means and the chunked nearest neighbours, real digits through the
digits classifier (training images score as copies, held-out ones do not), the scorer's metrics,
and ``nearest_neighbours.png`` in sample mode."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
import scipy.stats

from research.eval import memorisation as mem
from tests.run_helpers import scored_vae_tiny

D = 8  # synthetic feature width


def _gaussian(seed: int, n: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(n, D))  # [n, D]


@pytest.fixture(scope="module")
def gaussian_reference() -> tuple[np.ndarray, mem.CopyingReference]:
  train = _gaussian(0, 2000)
  return train, mem.prepare(train, _gaussian(1, 1000), num_cells=5)


def test_copies_of_training_points_score_as_copying(gaussian_reference):
  train, reference = gaussian_reference
  rng = np.random.default_rng(2)
  copies = train[rng.choice(len(train), 1000, replace=False)] + 1e-3 * rng.normal(size=(1000, D))
  out = mem.copying_metrics(reference, copies)
  assert out["copying_z"] < -3 and out["copying_cells"] == 5, out
  assert out["copy_fraction"] > 0.99, out
  assert out["nn_train_distance_median"] < 0.01 * out["nn_train_distance_median_heldout"], out
  assert out["nn_train_n"] == 2000


def test_fresh_draws_do_not_score_as_copying(gaussian_reference):
  _, reference = gaussian_reference
  for seed in (3, 4, 5):
    out = mem.copying_metrics(reference, _gaussian(seed, 1000))
    assert abs(out["copying_z"]) < 2 and out["copying_cells"] == 5, out
    assert out["copy_fraction"] < 0.04, out  # about 0.01 by construction
    ratio = out["nn_train_distance_median"] / out["nn_train_distance_median_heldout"]
    assert 0.9 < ratio < 1.1, out
  # Samples spread wider than the data: far from every training point, Z >> 0 (underfitting).
  assert mem.copying_metrics(reference, 1.5 * _gaussian(6, 1000))["copying_z"] > 3
  # Half the samples copied: still clearly negative, and the copy fraction about halfway.
  half = np.concatenate([reference.train[:500] + reference.centre, _gaussian(7, 500)])
  out = mem.copying_metrics(reference, half)
  assert out["copying_z"] < -3 and 0.45 < out["copy_fraction"] < 0.55, out


def test_too_few_samples_give_no_cells_and_no_statistic(gaussian_reference):
  _, reference = gaussian_reference
  out = mem.copying_metrics(reference, _gaussian(8, 30))  # 5 cells, fewer than 20 in each
  assert out["copying_cells"] == 0 and "copying_z" not in out  # not NaN: eval.json stays JSON
  assert np.isfinite(out["copy_fraction"])


@pytest.mark.parametrize("ties", [False, True])
def test_mann_whitney_u_and_z_match_scipy(ties):
  rng = np.random.default_rng(0)
  samples, heldout = rng.normal(0.0, 1.0, 23), rng.normal(0.4, 1.0, 31)
  if ties:  # rounded: many ties, and exact copies' zero distances
    samples, heldout = np.round(np.abs(samples), 1), np.round(np.abs(heldout), 1)
    samples[:5] = 0.0
  u, z = mem.mann_whitney_z(samples, heldout)
  less = scipy.stats.mannwhitneyu(
    samples, heldout, alternative="less", use_continuity=False, method="asymptotic"
  )
  assert u == less.statistic
  assert z == pytest.approx(scipy.stats.norm.ppf(less.pvalue), rel=1e-9)
  two = scipy.stats.mannwhitneyu(samples, heldout, use_continuity=False, method="asymptotic")
  assert 2 * scipy.stats.norm.sf(abs(z)) == pytest.approx(two.pvalue, rel=1e-9)
  # The paper's formula without ties: (U - mn/2) / sqrt(mn (m + n + 1) / 12).
  if not ties:
    m, n = len(samples), len(heldout)
    assert z == pytest.approx((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))
  assert mem.mann_whitney_z(np.ones(3), np.ones(4)) == (6.0, 0.0)  # all tied: no evidence


def test_c_t_weights_kept_cells_by_held_out_share():
  rng = np.random.default_rng(0)
  # Cell 0: 60 held-out, 40 samples; cell 1: 20 held-out, 30 samples; cell 2: 20 held-out and
  # only 5 samples (dropped: fewer than min_cell = 20).
  p_cells = np.repeat([0, 1, 2], [60, 20, 20])
  q_cells = np.repeat([0, 1, 2], [40, 30, 5])
  p_dist, q_dist = rng.uniform(size=100), rng.uniform(size=75)
  q_dist[q_cells == 1] *= 0.2  # copying in cell 1 only
  stat, z, kept = mem.c_t(p_dist, p_cells, q_dist, q_cells, num_cells=3, min_cell=20)
  np.testing.assert_array_equal(kept, [True, True, False])
  for c in (0, 1):
    want = mem.mann_whitney_z(q_dist[q_cells == c], p_dist[p_cells == c])[1]
    assert z[c] == pytest.approx(want)
  assert z[1] < -3 and z[2] == 0
  assert stat == pytest.approx((0.6 * z[0] + 0.2 * z[1]) / 0.8)
  # A cell with too few held-out points is dropped too.
  assert not mem.c_t(p_dist, p_cells, q_dist, q_cells, 3, min_cell=21)[2][1]


def test_nearest_distances_and_indices_match_brute_force():
  rng = np.random.default_rng(0)
  train, queries = rng.normal(size=(300, 5)), rng.normal(size=(70, 5))
  train_cells, query_cells = rng.integers(0, 3, 300), rng.integers(0, 3, 70)
  full = np.linalg.norm(queries[:, None] - train[None], axis=-1)  # [70, 300]
  in_cell = np.where(query_cells[:, None] == train_cells[None], full, np.inf).min(axis=1)
  for block in (mem.BLOCK_BYTES, 8 * 300 * 7):  # one block; blocks of 3 or 7 rows
    nearest, cell = mem.nearest_distances(queries, train, query_cells, train_cells, block)
    np.testing.assert_allclose(nearest, full.min(axis=1), rtol=1e-10)
    np.testing.assert_allclose(cell, in_cell, rtol=1e-10)
    idx, dist = mem.nearest_indices(queries, train, 4, block)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :4], rtol=1e-10)
  assert mem.nearest_distances(queries, train)[1] is None
  # A query equal to a training point is at distance 0 (up to rounding).
  assert mem.nearest_distances(train[:3] * 1.0, train)[0].max() < 1e-6


def test_kmeans_is_deterministic_and_finds_separated_blobs():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  x = np.concatenate([c + rng.normal(size=(50, 2)) for c in centres])  # [150, 2]
  a, labels = mem.kmeans(x, 3, seed=0)
  b, again = mem.kmeans(x, 3, seed=0)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(labels, again)
  for blob in range(3):  # each blob is one cell
    assert len(set(labels[blob * 50 : (blob + 1) * 50])) == 1
  assert len(set(labels)) == 3
  np.testing.assert_array_equal(mem.assign_cells(x, a), labels)
  _, one = mem.kmeans(np.ones((4, 2)), 2)  # identical points: no crash, every point has a cell
  assert one.shape == (4,)


# ----- real digits through the tiny digits classifier -----


@pytest.fixture(scope="module")
def digits(tmp_path_factory, data_dir, trained_classifier):
  classifier = trained_classifier("offline_digits")
  return scored_vae_tiny(tmp_path_factory, data_dir, classifier, kid_subsets=5)


def test_digits_training_images_score_as_copies_held_out_ones_do_not(digits):
  from research.eval import reference_stats

  config, net, mesh = digits
  train = reference_stats.real_features(config, mesh, net, "train")  # [1438, D], split order
  test = reference_stats.real_features(config, mesh, net, "test")  # [359, D]
  seen, unseen = train[:1100], train[1100:]  # the model "trained" on the first 1,100 digits
  reference = mem.prepare(seen, test, num_cells=3)
  copies = mem.copying_metrics(reference, seen[:338])
  fresh = mem.copying_metrics(reference, unseen)  # 338 digits neither in `seen` nor in `test`
  assert copies["copying_z"] < -3 and copies["copy_fraction"] > 0.95, copies
  assert abs(fresh["copying_z"]) < 2.5 and fresh["copy_fraction"] < 0.05, fresh
  assert fresh["copying_cells"] == copies["copying_cells"] == 3
  assert copies["nn_train_distance_median"] < 1e-3 < fresh["nn_train_distance_median"]


@dataclasses.dataclass(frozen=True)
class ImagesTask:
  """A stand-in generator whose "samples" are a fixed set of real digits."""

  images: jax.Array  # uint8 [N, H, W, C]
  parts: tuple[str, ...] = ("model",)

  def sample(self, variables, rng, num):
    idx = jax.random.choice(rng, self.images.shape[0], (num,), replace=False)
    return {"images": self.images[idx]}


def _split_images(config, mesh, split: str) -> np.ndarray:
  from research import data
  from research.eval import reference_stats
  from research.train import sharding as shd

  images = []
  for b in data.eval_iterator(
    reference_stats._split_data_config(config, split),
    global_batch_size=128,
    sharding=shd.batch_sharding(mesh),
  ):
    images.append(np.asarray(b["image"])[np.asarray(b["mask"]) > 0])
  return np.concatenate(images)  # uint8 [N, 8, 8, 1]


def test_scorer_reports_copying_of_training_images(digits, capsys):
  import jax.numpy as jnp

  from research.eval import sample_and_score as sas

  config, net, mesh = digits
  results = {}
  for split in ("train", "test"):
    task = ImagesTask(jnp.asarray(_split_images(config, mesh, split)))
    scorer = sas.Scorer.create(config, task, mesh, "unused", (8, 8, 1))
    results[split] = scorer.score({}, jax.random.key(0), 320)
  copies, heldout = results["train"], results["test"]
  assert copies["copying_z"] < -3 and copies["copy_fraction"] > 0.95, copies
  assert copies["nn_train_n"] == 1438 and copies["nn_train_distance_median"] < 1e-3
  # The held-out "samples" are (most of) the reference's own held-out features: no copying.
  assert abs(heldout["copying_z"]) < 2 and heldout["copy_fraction"] < 0.05, heldout
  # A reference split that is the training split has no held-out set: skipped with a note.
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.eval.reference_split = "train"
  scorer = sas.Scorer.create(
    cfg, ImagesTask(jnp.zeros((64, 8, 8, 1), jnp.uint8)), mesh, "x", (8, 8, 1)
  )
  assert "copying_z" not in scorer.score({}, jax.random.key(0), 64) and "fid" in results["test"]
  assert "note: memorisation metrics skipped" in capsys.readouterr().err
  cfg.eval.reference_split, cfg.eval.memorisation_cells = "", 0  # switched off
  assert sas.Scorer.create(cfg, task, mesh, "x", (8, 8, 1)).copying_reference() is None


def test_nearest_training_images_of_training_images_are_themselves(digits):
  from research.eval import nearest_neighbours as nn

  config, net, mesh = digits
  train = _split_images(config, mesh, "train")
  queries = train[[0, 500, 1437]]
  images, dist = nn.nearest_training_images(config, mesh, net, queries, k=4)
  assert images.shape == (3, 4, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[:, 0], queries)  # the image itself, at distance ~0
  assert dist[:, 0].max() < 1e-3 and np.all(np.diff(dist, axis=1) >= 0)
  assert dist[:, 1].min() > 0  # the next ones are other digits
  pic = nn.picture(queries, images)
  assert pic.shape == (3 * 10 + 2, (8 + 4) + 4 + (4 * 10 + 2), 1)
  # No feature network: no picture.
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.eval.feature_net = ""
  assert nn.write(cfg, mesh, (8, 8, 1), queries, "unused") is None


@pytest.mark.slow
def test_sample_mode_writes_nearest_neighbours_png(digits, tmp_path, capsys):
  from PIL import Image

  from research.eval import run as eval_run
  from research.train import loop

  config, _, _ = digits
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.async_checkpoint = False
  workdir = str(tmp_path / "vae")
  loop.train(config, workdir)
  eval_run.run_sample(config, workdir)
  assert "nearest_neighbours.png" in capsys.readouterr().err  # in the "wrote ..." line
  with Image.open(tmp_path / "vae" / "nearest_neighbours.png") as png:
    # 16 rows of a sample, a gap and 4 training digits (8x8, 2-pixel padding), upscaled 3x.
    assert png.size == (3 * (12 + 4 + 42), 3 * (16 * 10 + 2))
  assert (tmp_path / "vae" / "samples.png").exists()
