"""Image-to-image data: sketches, offline_sketched_digits, joint flip/jitter, pix2pix, cycle_gan.

The paired batches carry 'input' (the condition) beside 'image'; unpaired mode (CycleGAN) zips two
splits. Needs 8 host devices (tests/conftest.py). Builds offline_sketched_digits once per session
in conftest's data_dir; pix2pix is built from a fake tarball, cycle_gan only mocked.
"""

import io
import os
import tarfile
import time
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import data
from research.errors import UserError

SKETCHED = "offline_sketched_digits"


@pytest.fixture(scope="module")
def sharding() -> NamedSharding:
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))


@pytest.fixture(scope="session")
def sketched_dir(data_dir) -> str:
  """conftest's session data_dir with offline_sketched_digits built (once per session)."""
  data.prepare(_config(SKETCHED, data_dir))
  return data_dir


def _config(name: str, data_dir: str, **overrides) -> types.SimpleNamespace:
  fields = {
    "name": name,
    "split": "train",
    "eval_split": "test",
    "data_dir": data_dir,
    "download": False,
    "shuffle_buffer": 1000,
    "random_flip": False,
    "image_size": None,
    "jitter_size": 0,
    "unpaired_split": None,
    "unpaired_eval_split": None,
    "prefetch": 2,
  }
  fields.update(overrides)
  return types.SimpleNamespace(**fields)


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
  out = [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]
  it.close()
  return out


def _load(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
  """The whole split in file order, as numpy arrays."""
  import tensorflow_datasets as tfds

  from research.data import tfds_source

  tfds_source.offline_builder_classes()  # Registers the builders.
  ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False)
  return next(iter(tfds.as_numpy(ds.batch(100_000))))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """Square dilation of a bool stack [N, H, W] by `radius` pixels."""
  n, h, w = mask.shape
  padded = np.pad(mask, ((0, 0), (radius, radius), (radius, radius)))
  out = np.zeros_like(mask)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      out |= padded[:, dy : dy + h, dx : dx + w]
  return out


def _outside(sketch: np.ndarray, digit: np.ndarray, radius: int = 2) -> np.ndarray:
  """Per example [N]: the sketch's on-pixels (> 127) that are not near the digit's (> 0)."""
  near = _dilate(digit[..., 0] > 0, radius)
  return ((sketch[..., 0] > 127) & ~near).sum(axis=(1, 2))


def test_sketches():
  from research.data import offline_sources, sketches

  images, _ = offline_sources.load_mnist_5k()
  images = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  rows = np.arange(len(images))
  out = sketches.sketch(images, rows)
  assert out.shape == images.shape and out.dtype == np.uint8
  assert set(np.unique(out)) == {0, 255}
  mask = images[..., 0] >= sketches.THRESHOLD
  on = out[..., 0] > 0
  assert not (on & ~_dilate(mask, 1)).any()  # Every stroke pixel is within 1 px of the ink.
  assert on.sum(axis=(1, 2)).min() > 0
  styles = np.array([sketches.row_style(r) for r in rows])
  for kind in (sketches.CONTOUR, sketches.SKELETON):
    for width in (1, 2):
      assert ((styles[:, 0] == kind) & (styles[:, 1] == width)).mean() > 0.2  # All four occur.
  # Thin lines: the outline and the skeleton have fewer pixels than the filled digit.
  for lines, at_most in ((sketches.contour(mask), 0.8), (sketches.thin(mask), 0.5)):
    counts, filled = lines.sum(axis=(1, 2)), mask.sum(axis=(1, 2))
    assert (lines & ~mask).sum() == 0 and (counts <= filled).all()
    assert (counts < filled).mean() > 0.95 and counts.sum() < at_most * filled.sum()
  one_px = (styles[:, 1] == 1) & (styles[:, 0] == sketches.CONTOUR)
  np.testing.assert_array_equal(on[one_px], sketches.contour(mask)[one_px])
  # A filled bar thins to a one-pixel line; a row's sketch does not depend on the other rows.
  bar = np.zeros((1, 9, 16), bool)
  bar[0, 3:6, 2:14] = True
  skeleton = sketches.thin(bar)[0]
  assert skeleton[4, 4:12].all() and skeleton.sum(axis=0).max() == 1
  some = np.array([7, 3, 4000])
  np.testing.assert_array_equal(sketches.sketch(images[some], some), out[some])


def test_offline_sketched_digits(sketched_dir):
  from research.data import offline_builders

  info = data.dataset_info(_config(SKETCHED, sketched_dir))
  assert info == data.DatasetInfo(
    (32, 32, 1), 10, 4000, 1000, input_shape=(32, 32, 1), num_eval_input=1000, num_train_input=4000
  )
  data.prepare(_config("offline_mnist", sketched_dir))
  mnist = _load("offline_mnist", "test", sketched_dir)
  test = _load(SKETCHED, "test", sketched_dir)
  assert test["image"].shape == test["input"].shape == (1000, 32, 32, 1)
  # The test rows are offline_mnist's, in the same order, padded by 2 px of zeros.
  np.testing.assert_array_equal(test["image"][:, 2:-2, 2:-2], mnist["image"])
  np.testing.assert_array_equal(test["label"], mnist["label"])
  assert not test["image"][:, :2].any() and not test["image"][:, :, -2:].any()
  # Each 'input' is the sketch of its own row.
  images, inputs, _ = offline_builders.sketched_digits()
  row = {im.tobytes(): i for i, im in enumerate(images)}
  rows = np.array([row[im.tobytes()] for im in test["image"]])
  np.testing.assert_array_equal(test["input"], inputs[rows])


def test_flip_and_jitter_are_joint(sketched_dir, sharding):
  config = _config(SKETCHED, sketched_dir, random_flip=True, image_size=32, jitter_size=40)
  (batch,) = _take(data.train_iterator(config, global_batch_size=64, sharding=sharding, seed=3), 1)
  assert set(batch) == {"image", "input", "label"}
  assert batch["input"].shape == batch["image"].shape == (64, 32, 32, 1)
  assert batch["input"].dtype == np.uint8
  assert _outside(batch["input"], batch["image"]).sum() == 0  # Still drawn on its digit.
  # The check has teeth: the sketch flipped alone, or cropped 3 px apart, leaves its digit.
  assert (_outside(batch["input"][:, :, ::-1], batch["image"]) > 0).mean() > 0.8
  shifted = np.roll(batch["input"], 3, axis=(1, 2))
  assert (_outside(shifted, batch["image"]) > 0).mean() > 0.5
  # Jitter and flips happen: the same examples (same order) differ from the plain stream.
  config.random_flip, config.jitter_size = False, 0
  (plain,) = _take(data.train_iterator(config, global_batch_size=64, sharding=sharding, seed=3), 1)
  np.testing.assert_array_equal(batch["label"], plain["label"])
  assert (batch["image"] != plain["image"]).any(axis=(1, 2, 3)).mean() > 0.9


def test_paired_resume_with_jitter(sketched_dir, sharding):
  config = _config(
    SKETCHED,
    sketched_dir,
    split="train[:40]",
    shuffle_buffer=40,
    random_flip=True,
    image_size=24,
    jitter_size=30,
  )
  kwargs = {"global_batch_size": 16, "sharding": sharding, "seed": 5}
  full = _take(data.train_iterator(config, **kwargs), 6)
  resumed = _take(data.train_iterator(config, start_step=4, **kwargs), 2)
  for want, got in zip(full[4:], resumed, strict=True):
    for key in ("image", "input", "label"):
      np.testing.assert_array_equal(got[key], want[key])
  assert full[0]["image"].shape == (16, 24, 24, 1)


def test_paired_eval_is_not_jittered(sketched_dir, sharding):
  config = _config(SKETCHED, sketched_dir, eval_split="test[:20]", image_size=32, jitter_size=40)
  batches = _take(data.eval_iterator(config, global_batch_size=16, sharding=sharding), 2)
  assert set(batches[0]) == {"image", "input", "label", "mask"}
  test = _load(SKETCHED, "test[:20]", sketched_dir)
  for key in ("image", "input"):
    np.testing.assert_array_equal(np.concatenate([b[key] for b in batches])[:20], test[key])
  np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 20 + [0] * 12)
  # The tasks' fixed held-out rows: the start of the eval split, on the host.
  rows = data.held_out_examples(config, 5)
  assert set(rows) == {"image", "input", "label"} and isinstance(rows["image"], np.ndarray)
  for key in rows:
    np.testing.assert_array_equal(rows[key], test[key][:5])
  assert len(data.held_out_examples(config, 50)["image"]) == 20


def _pair_jpeg(path: str, size: int = 32) -> None:
  """An A|B JPEG: left half red, right half blue."""
  from PIL import Image

  pair = np.zeros((size, 2 * size, 3), np.uint8)
  pair[:, :size, 0] = 255
  pair[:, size:, 2] = 255
  Image.fromarray(pair).save(path, quality=95)


def _colour(image: np.ndarray) -> str:
  r, _, b = image.reshape(-1, 3).mean(axis=0)
  return "red" if r > 200 > 50 > b else "blue" if b > 200 > 50 > r else "mixed"


def test_pix2pix_splits_halves(tmp_path):
  from PIL import Image

  from research.data import pix2pix_builder

  _pair_jpeg(str(tmp_path / "1.jpg"), size=256)
  (tmp_path / "notes.txt").write_text("not an image")
  configs = {c.name: c for c in pix2pix_builder.CONFIGS}
  want = {"facades": "blue", "cityscapes": "blue", "edges2shoes": "red", "maps": "red"}
  for name, input_colour in want.items():
    c = configs[name]
    (key, example), *rest = pix2pix_builder.generate_examples(
      tmp_path, input_side=c.input_side, size=c.size
    )
    assert key == "1.jpg" and not rest
    halves = {k: np.asarray(Image.open(io.BytesIO(v))) for k, v in example.items()}
    assert halves["input"].shape == halves["image"].shape == (c.size, c.size, 3)
    image_colour = "red" if input_colour == "blue" else "blue"
    assert (_colour(halves["input"]), _colour(halves["image"])) == (input_colour, image_colour)
  with pytest.raises(UserError, match="not two halves"):
    pix2pix_builder.split_pair(np.zeros((4, 7, 3), np.uint8), input_side="left", size=4)


def _fake_tarball(tmp_path, name: str, splits: dict[str, int]) -> str:
  """<name>.tar.gz holding <name>/<split>/<i>.jpg A|B images, like the authors' tarballs."""
  src = tmp_path / "src"
  for split, count in splits.items():
    os.makedirs(src / name / split)
    for i in range(count):
      _pair_jpeg(str(src / name / split / f"{i}.jpg"))
  path = str(tmp_path / f"{name}.tar.gz")
  with tarfile.open(path, "w:gz") as tar:
    tar.add(src / name, arcname=name)
  return path


def test_pix2pix_builds_from_a_tarball(tmp_path, sharding, monkeypatch):
  import tensorflow_datasets as tfds

  from research.data import pix2pix_builder

  tarball = _fake_tarball(tmp_path, "facades", {"train": 8, "val": 3, "test": 2})
  fetched = []

  def download_and_extract(self, url):
    fetched.append(url)
    out = tmp_path / "extracted"
    with tarfile.open(tarball) as tar:
      tar.extractall(out, filter="data")
    return out

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
  monkeypatch.setattr(pix2pix_builder, "check_reachable", lambda *a, **k: None)
  data_dir = str(tmp_path / "tfds")
  config = _config("pix2pix/facades", data_dir, eval_split="val", image_size=32, jitter_size=36)
  with pytest.raises(UserError, match="not prepared"):  # download=False never fetches.
    data.dataset_info(config)
  config.download = True
  data.prepare(config)
  assert fetched == ["http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz"]
  info = data.dataset_info(config)
  assert (info.image_shape, info.input_shape, info.num_classes) == ((32, 32, 3), (32, 32, 3), None)
  assert (info.num_train, info.num_eval, info.num_eval_input) == (8, 3, 3)
  config.random_flip = True
  (batch,) = _take(data.train_iterator(config, global_batch_size=8, sharding=sharding, seed=0), 1)
  assert set(batch) == {"image", "input"}
  # facades: the label map (right half) is the input, the photo (left) the target.
  assert {_colour(x) for x in batch["input"]} == {"blue"}
  assert {_colour(x) for x in batch["image"]} == {"red"}


def test_pix2pix_without_internet_or_manual_data(tmp_path, monkeypatch):
  from research.data import pix2pix_builder

  monkeypatch.setattr(pix2pix_builder, "HOST", "efrosgans.invalid")  # Never resolves.
  for name, match in (
    ("pix2pix/facades", "cannot reach efrosgans.invalid"),
    ("pix2pix/cityscapes", "prepare_cityscapes_dataset.py"),
  ):
    start = time.monotonic()
    with pytest.raises(UserError, match=match) as error:
      data.prepare(_config(name, str(tmp_path / "tfds"), download=True))
    assert time.monotonic() - start < 15 and "\n" not in str(error.value)
  # A download that fails after the probe is a one-line UserError too.
  import requests
  import tensorflow_datasets as tfds

  def unreachable(self, url):
    raise requests.exceptions.ConnectionError(f"no route to {url}\nretries exhausted")

  monkeypatch.setattr(pix2pix_builder, "check_reachable", lambda *a, **k: None)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", unreachable)
  with pytest.raises(UserError, match="downloading 'pix2pix' failed .no route") as error:
    data.prepare(_config("pix2pix/maps", str(tmp_path / "tfds"), download=True))
  assert "\n" not in str(error.value) and "--name=pix2pix/maps" in str(error.value)
  # Cityscapes from the manual dir: the script's train/ and test/ (its name for val).
  manual = tmp_path / "tfds" / "downloads" / "manual" / "cityscapes"
  for split, count in (("train", 2), ("test", 1)):
    os.makedirs(manual / split)
    for i in range(count):
      _pair_jpeg(str(manual / split / f"{i}.jpg"), size=256)
  config = _config("pix2pix/cityscapes", str(tmp_path / "tfds"), download=True, eval_split="val")
  info = data.dataset_info(config)
  assert (info.image_shape, info.num_train, info.num_eval) == ((256, 256, 3), 2, 1)


def test_pix2pix_mocked(tmp_path, sharding):
  import tensorflow_datasets as tfds

  config = _config(
    "pix2pix/edges2shoes", str(tmp_path), eval_split="val", image_size=16, jitter_size=20
  )
  config.random_flip = True
  with tfds.testing.mock_data(num_examples=12):
    assert data.dataset_info(config).input_shape == (16, 16, 3)
    (batch,) = _take(data.train_iterator(config, global_batch_size=8, sharding=sharding, seed=0), 1)
    evals = _take(data.eval_iterator(config, global_batch_size=8, sharding=sharding), 2)
  assert set(batch) == {"image", "input"} and batch["input"].shape == (8, 16, 16, 3)
  assert set(evals[0]) == {"image", "input", "mask"}


def _cycle_gan(data_dir: str, **overrides) -> types.SimpleNamespace:
  fields = {
    "split": "trainA",
    "unpaired_split": "trainB",
    "eval_split": "testA",
    "unpaired_eval_split": "testB",
    "image_size": 16,
    "jitter_size": 20,
    "random_flip": True,
    "shuffle_buffer": 12,
  }
  return _config("cycle_gan/horse2zebra", data_dir, **{**fields, **overrides})


def test_cycle_gan_unpaired_mocked(tmp_path, sharding):
  import tensorflow_datasets as tfds

  config = _cycle_gan(str(tmp_path))
  kwargs = {"global_batch_size": 8, "sharding": sharding, "seed": 1}
  with tfds.testing.mock_data(num_examples=12):
    info = data.dataset_info(config)
    full = _take(data.train_iterator(config, **kwargs), 4)
    resumed = _take(data.train_iterator(config, start_step=3, **kwargs), 1)
    evals = _take(data.eval_iterator(config, global_batch_size=8, sharding=sharding), 2)
  assert (info.image_shape, info.input_shape, info.num_classes) == ((16, 16, 3), (16, 16, 3), None)
  assert (info.num_train, info.num_eval, info.num_eval_input) == (12, 12, 12)
  assert set(full[0]) == {"input", "image"}  # No 'label': it only names the domain.
  assert full[0]["input"].shape == full[0]["image"].shape == (8, 16, 16, 3)
  assert full[0]["image"].dtype == np.uint8
  for key in ("input", "image"):
    np.testing.assert_array_equal(resumed[0][key], full[3][key])
  # The mock serves the same examples in every split: B's own shuffle and coins tell them apart.
  assert not np.array_equal(full[0]["input"], full[0]["image"])
  assert set(evals[0]) == {"input", "input_mask", "image", "mask"}
  for key in ("mask", "input_mask"):
    np.testing.assert_array_equal(np.concatenate([b[key] for b in evals]), [1] * 12 + [0] * 4)


def test_unpaired_eval_pads_both_splits(sketched_dir, sharding):
  config = _config(
    SKETCHED,
    sketched_dir,
    split="train[:40]",
    unpaired_split="train[40:80]",
    eval_split="test[:20]",
    unpaired_eval_split="test[20:70]",
  )
  info = data.dataset_info(config)
  assert (info.num_train, info.num_eval, info.num_eval_input, info.num_train_input) == (
    40,
    50,
    20,
    40,
  )
  it = data.eval_iterator(config, global_batch_size=8, sharding=sharding)
  batches = [{k: np.asarray(v) for k, v in b.items()} for b in it]
  assert len(batches) == 7  # max(ceil(20 / 8), ceil(50 / 8))
  for key, n in (("input_mask", 20), ("mask", 50)):
    mask = np.concatenate([b[key] for b in batches])
    np.testing.assert_array_equal(mask, [1] * n + [0] * (56 - n))
  test = _load(SKETCHED, "test[:70]", sketched_dir)
  np.testing.assert_array_equal(
    np.concatenate([b["input"] for b in batches])[:20], test["image"][:20]
  )
  np.testing.assert_array_equal(
    np.concatenate([b["image"] for b in batches])[:50], test["image"][20:]
  )
  rows = data.held_out_examples(config, 30)  # A has 20 rows: both cut to 20.
  assert set(rows) == {"input", "image"}
  np.testing.assert_array_equal(rows["input"], test["image"][:20])
  np.testing.assert_array_equal(rows["image"], test["image"][20:40])


def test_option_errors_are_one_line(sketched_dir, sharding):
  cases = [
    ({"jitter_size": 40}, "jitter_size=40 needs config.data.image_size"),
    ({"jitter_size": 32, "image_size": 32}, "below it"),
    ({"jitter_size": -1}, "negative"),
    ({"jitter_size": "big"}, "not an int"),
    ({"unpaired_split": "trainB", "unpaired_eval_split": "test"}, "config.data.unpaired_split"),
    ({"unpaired_split": "train"}, "unpaired_eval_split is not set"),
    ({"unpaired_split": "train", "unpaired_eval_split": "testB"}, "unpaired_eval_split"),
  ]
  for i, (overrides, match) in enumerate(cases):
    config = _config(SKETCHED, sketched_dir, **overrides)
    calls = [lambda c=config: data.dataset_info(c)]
    if i < len(cases) - 1:  # Training does not read the eval splits.
      calls.append(
        lambda c=config: data.train_iterator(c, global_batch_size=8, sharding=sharding, seed=0)
      )
    for call in calls:
      with pytest.raises(UserError, match=match) as error:
        call()
      assert "\n" not in str(error.value), str(error.value)
