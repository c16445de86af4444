"""The pipeline's caption -> "text" map: offline_captioned_digits batches carry the tokenizer's ids
of each example's own caption; the workdir tokenizer is trained once and reused; a coco_captions-
shaped dataset (several captions per image under 'captions/text') reads through the same code."""

import os
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import data
from research.data import captions, captions_text
from research.errors import UserError
from research.text import TextTokenizer


def _config(data_dir, **kw):
  c = dict(
    name="offline_captioned_digits",
    data_dir=data_dir,
    split="train",
    eval_split="test",
    download=False,
    shuffle_buffer=1000,
    random_flip=False,
    image_size=None,
    prefetch=2,
    text_length=20,
    text_tokenizer="",
    text_vocab_size=400,
    text_bos=True,
    caption_key="caption",
  )
  c.update(kw)
  return types.SimpleNamespace(**c)


@pytest.fixture(scope="module")
def sharding():
  return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))


@pytest.fixture(scope="module")
def prepared(data_dir, tmp_path_factory):
  """offline_captioned_digits built in the session data_dir, and a workdir tokenizer."""
  config = _config(data_dir)
  workdir = str(tmp_path_factory.mktemp("workdir"))
  config.text_tokenizer = captions_text.prepare_tokenizer(config, workdir)
  return config, workdir


def test_dataset_info(prepared):
  config, _ = prepared
  info = data.dataset_info(config)
  assert info.image_shape == (32, 64, 1)
  assert (info.num_train, info.num_eval) == (captions.NUM_TRAIN, captions.NUM_TEST)


def test_workdir_tokenizer_trained_once(prepared, data_dir):
  config, workdir = prepared
  path = os.path.join(workdir, "text_tokenizer.json")
  assert config.text_tokenizer == path and os.path.exists(path)
  mtime = os.path.getmtime(path)
  again = _config(data_dir)
  assert captions_text.prepare_tokenizer(again, workdir) == path  # a resumed run reuses the file
  assert again.text_tokenizer == "" and os.path.getmtime(path) == mtime  # the config is unchanged
  with pytest.raises(UserError, match="text_length"):
    captions_text.prepare_tokenizer(_config(data_dir, text_length=12), workdir)
  assert captions_text.text_transform(_config(data_dir, text_length=0)) is None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_text_is_the_examples_caption(prepared, sharding, mode):
  config, _ = prepared
  tok = TextTokenizer.load(config.text_tokenizer)
  split = "train" if mode == "train" else "test"
  by_caption = {}
  c = captions.split_canvases(split)
  for caption, label in zip(c["caption"], c["label"], strict=True):
    by_caption.setdefault(caption, tuple(label))
  if mode == "train":
    it = data.train_iterator(config, global_batch_size=64, sharding=sharding, seed=3)
  else:
    it = data.eval_iterator(config, global_batch_size=512, sharding=sharding)
  batch = {k: np.asarray(v) for k, v in next(iter(it)).items()}
  if hasattr(it, "close"):
    it.close()
  assert set(batch) == {"image", "label", "text"} | ({"mask"} if mode == "eval" else set())
  assert batch["text"].dtype == np.int32 and batch["text"].shape == (len(batch["image"]), 20)
  assert batch["label"].shape == (len(batch["image"]), 2)
  texts = tok.decode(batch["text"])
  for ids, text, label, image in zip(
    batch["text"], texts, batch["label"], batch["image"], strict=True
  ):
    assert text in by_caption, text  # a real caption of this split
    assert by_caption[text] == tuple(label)  # ... whose digits are this example's label
    np.testing.assert_array_equal(ids, tok.encode([text])[0])
    assert ids[0] == tok.bos_id
    n = int((ids < tok.base_vocab_size).sum())
    np.testing.assert_array_equal(ids[n:], tok.base_vocab_size + np.arange(n, 20))
    for cell in range(2):  # empty cells are blank, filled cells are not
      assert image[:, 32 * cell : 32 * (cell + 1)].any() == (label[cell] >= 0)


def _fake_coco(num: int = 6):
  """Examples shaped like coco_captions: PNG images of varying size, 5 captions each."""
  import tensorflow as tf

  rng = np.random.default_rng(0)
  images = [
    tf.io.encode_png(rng.integers(0, 255, (20 + 4 * i, 30, 3), dtype=np.uint8)).numpy()
    for i in range(num)
  ]
  texts = [[f"Caption {i}-{j} of a Photo" for j in range(5)] for i in range(num)]
  ids = np.arange(num * 5, dtype=np.int64).reshape(num, 5)

  def as_dataset(self, *args, **kwargs):
    return tf.data.Dataset.from_tensor_slices(
      {"image": images, "captions": {"text": texts, "id": ids}}
    )

  return as_dataset, {t.lower() for row in texts for t in row}


def test_coco_captions_loading_code(tmp_path, sharding):
  import tensorflow_datasets as tfds

  as_dataset, all_captions = _fake_coco()
  config = _config(
    str(tmp_path / "none"),
    name="coco_captions",
    eval_split="val",
    image_size=16,
    text_length=12,
    text_vocab_size=300,
    text_bos=False,
    caption_key="captions/text",
  )
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    config.text_tokenizer = captions_text.prepare_tokenizer(config, str(tmp_path / "workdir"))
    tok = TextTokenizer.load(config.text_tokenizer)
    assert data.dataset_info(config).image_shape == (16, 16, 3)
    it = data.train_iterator(config, global_batch_size=8, sharding=sharding, seed=0)
    train = {k: np.asarray(v) for k, v in next(it).items()}
    it.close()
    evals = [
      np.asarray(b["text"])
      for b in data.eval_iterator(config, global_batch_size=8, sharding=sharding)
    ]
    with pytest.raises(UserError, match="caption_key"):
      bad = _config(str(tmp_path / "none"), name="coco_captions", caption_key="caption")
      bad.text_tokenizer = config.text_tokenizer
      bad.text_length, bad.text_vocab_size, bad.text_bos = 12, 300, False
      next(data.train_iterator(bad, global_batch_size=8, sharding=sharding, seed=0))
  assert set(train) == {"image", "text"} and train["image"].shape == (8, 16, 16, 3)
  decoded = tok.decode(train["text"])
  assert set(decoded) <= all_captions
  assert len({d.split()[1].split("-")[1] for d in decoded}) > 1  # training draws among the 5
  first = tok.decode(evals[0])[:6]
  assert first == [f"caption {i}-0 of a photo" for i in range(6)]  # eval takes the first
