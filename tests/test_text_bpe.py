"""The BPE caption tokenizer: lowercase round trips, DALL-E's per-position padding ids, <bos>,
truncation, saving and loading."""

import numpy as np
import pytest

from research.data import captions
from research.errors import UserError
from research.text import TextTokenizer, train_tokenizer

CORPUS = captions.split_canvases("test")["caption"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "text_tokenizer.json"
  return train_tokenizer(CORPUS, 400, path, text_length=20, bos=False), path


def test_round_trip_lowercase(tok):
  t, _ = tok
  texts = list(CORPUS[:200]) + ["A Handwritten SEVEN", "zebra & 42!", "ünï ok"]
  ids = t.encode(texts)
  assert ids.shape == (len(texts), 20) and ids.dtype == np.int32
  assert t.decode(ids) == [s.lower() for s in texts]
  # BPE learned the corpus: a caption is a handful of tokens, far fewer than its bytes.
  lengths = (ids < t.base_vocab_size).sum(axis=1)[:200]
  assert lengths.max() <= 17 and lengths.mean() < 0.4 * np.mean([len(s) for s in CORPUS[:200]])


def test_per_position_padding_ids(tok):
  t, _ = tok
  assert t.vocab_size == 400 + 20
  ids = t.encode(["a handwritten seven", "the digits three and five"])
  for row in ids:
    n = int((row < 400).sum())
    assert n >= 2 and (row[:n] < 400).all()
    # The pad at position i is base_vocab + i (Ramesh et al. 2021, B.2): a learned id per slot.
    np.testing.assert_array_equal(row[n:], 400 + np.arange(n, 20))
  np.testing.assert_array_equal(t.pad_ids(), 400 + np.arange(20))
  assert t.decode(t.pad_ids()[None]) == [""]


def test_bos_and_truncation(tmp_path):
  t = train_tokenizer(CORPUS, 300, None, text_length=4, bos=True)
  ids = t.encode(["a handwritten seven on the left side", "a"])
  assert (ids[:, 0] == t.bos_id).all() and t.bos_id == 0
  assert (ids[0] < 300).all()  # truncated to 4 tokens: no pad left
  assert ids[1, 1] < 300 and list(ids[1, 2:]) == [302, 303]
  assert t.decode(ids)[1] == "a"
  assert "a handwritten seven on the left side".startswith(t.decode(ids)[0])


def test_save_load_same_ids(tok, tmp_path):
  t, path = tok
  loaded = TextTokenizer.load(path)
  assert (loaded.text_length, loaded.base_vocab_size, loaded.bos) == (20, 400, False)
  np.testing.assert_array_equal(loaded.encode(CORPUS[:300]), t.encode(CORPUS[:300]))
  # Training is deterministic: the same corpus gives the same ids.
  again = train_tokenizer(CORPUS, 400, None, text_length=20)
  np.testing.assert_array_equal(again.encode(CORPUS[:300]), t.encode(CORPUS[:300]))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(UserError, match="not a text tokenizer file"):
    TextTokenizer.load(bad)
  with pytest.raises(UserError, match="does not exist"):
    TextTokenizer.load(tmp_path / "missing.json")
  with pytest.raises(UserError, match="text_vocab_size"):
    train_tokenizer(CORPUS, 100, None)
