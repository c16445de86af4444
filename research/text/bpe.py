"""The caption tokenizer of DALL-E stage 2: byte-level BPE, lowercased, per-position padding.

Ramesh et al. 2021, section 2.2 and appendix B.2: captions are lowercased and BPE-encoded to at most
`text_length` tokens (256 in the paper, vocab 16,384); unused text positions are filled with a
*learned padding token per position* instead of being masked out: the vocabulary reserves
`text_length` padding ids, and the pad at position i has id ``base_vocab_size + i``. So every encoded
caption is exactly `text_length` ids, and the model sees which slots are empty.

The BPE itself is trained by HuggingFace `tokenizers` (byte-level, as GPT-2: any string encodes, and
decoding gives the lowercased text back exactly). Ids: 0 is ``<bos>`` (used when `bos` is on: the
sequence starts with it), BPE ids below `base_vocab_size` (the configured vocab size; training may
learn fewer merges on a small corpus, leaving ids unused so model shapes do not depend on the
corpus), then the `text_length` padding ids. `vocab_size` counts them all.

The paper's 10% BPE dropout is not applied (it would make encoding random inside tf.data).

Saved as one JSON file: {"format", "text_length", "base_vocab_size", "bos", "tokenizer": <the
`tokenizers` JSON>}.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from etils import epath

from research.errors import UserError

FORMAT = "research.text_tokenizer/1"
BOS = "<bos>"


def _tokenizers() -> Any:
  try:
    import tokenizers
  except ImportError:
    raise UserError("the text tokenizer needs `tokenizers`; run `pip install tokenizers`") from None
  return tokenizers


@dataclasses.dataclass
class TextTokenizer:
  """Captions <-> int32 ids [N, text_length] with DALL-E's per-position padding ids."""

  hf: Any  # tokenizers.Tokenizer
  text_length: int
  base_vocab_size: int
  bos: bool = False

  @property
  def vocab_size(self) -> int:
    """Embedding rows a model needs: BPE ids (incl. <bos>) plus the text_length padding ids."""
    return self.base_vocab_size + self.text_length

  @property
  def bos_id(self) -> int:
    return int(self.hf.token_to_id(BOS))

  def pad_ids(self) -> np.ndarray:
    """int32 [text_length]: the padding id of each position (base_vocab_size + i)."""
    return np.arange(self.base_vocab_size, self.vocab_size, dtype=np.int32)

  def encode(self, captions: Sequence[str]) -> np.ndarray:
    """Captions -> int32 [N, text_length]: (<bos>,) BPE ids truncated, then per-position pads."""
    out = np.tile(self.pad_ids(), (len(captions), 1))  # [N, L]
    for i, enc in enumerate(self.hf.encode_batch([str(c) for c in captions])):
      ids = ([self.bos_id] if self.bos else []) + enc.ids
      ids = ids[: self.text_length]
      out[i, : len(ids)] = ids
    return out

  def encode_one(self, caption: bytes | str) -> np.ndarray:
    """One caption (bytes from tf.data, or str) -> int32 [text_length]."""
    if isinstance(caption, bytes):
      caption = caption.decode("utf-8")
    return self.encode([caption])[0]

  def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
    """int [N, L] -> captions (lowercase); <bos> and padding ids are dropped."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
      ids = ids[None]
    keep = [[int(t) for t in row if t < self.base_vocab_size and t != self.bos_id] for row in ids]
    return self.hf.decode_batch(keep, skip_special_tokens=True)

  # ---- files --------------------------------------------------------------------------------------
  def to_json(self) -> str:
    return json.dumps(
      {
        "format": FORMAT,
        "text_length": self.text_length,
        "base_vocab_size": self.base_vocab_size,
        "bos": self.bos,
        "tokenizer": json.loads(self.hf.to_str()),
      }
    )

  def save(self, path: str | epath.Path) -> None:
    """Writes the JSON atomically (a temporary file renamed), so readers never see half a file."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(self.to_json())
    tmp.replace(path)

  @classmethod
  def load(cls, path: str | epath.Path) -> TextTokenizer:
    path = epath.Path(path)
    if not path.exists():
      raise UserError(
        f"text tokenizer {path} does not exist; train one (research.text.train_tokenizer) or set "
        "config.data.text_tokenizer to '' to train it in the workdir on first use"
      )
    try:
      blob = json.loads(path.read_text())
      if blob.get("format") != FORMAT:
        raise ValueError(f"format {blob.get('format')!r}, expected {FORMAT!r}")
      hf = _tokenizers().Tokenizer.from_str(json.dumps(blob["tokenizer"]))
    except Exception as e:  # noqa: BLE001  (json, KeyError, or the tokenizers parser)
      first = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise UserError(
        f"{path} is not a text tokenizer file ({first}); delete it to retrain"
      ) from None
    return cls(hf, int(blob["text_length"]), int(blob["base_vocab_size"]), bool(blob["bos"]))


def train_tokenizer(
  captions: Iterable[str],
  vocab_size: int,
  path: str | epath.Path | None = None,
  *,
  text_length: int = 32,
  bos: bool = False,
) -> TextTokenizer:
  """Trains a lowercased byte-level BPE of at most `vocab_size` ids on `captions`; saves to `path`.

  `vocab_size` is the base vocabulary (incl. <bos> and the 256 byte symbols); the returned
  tokenizer's `.vocab_size` adds the `text_length` padding ids.
  """
  tk = _tokenizers()
  if text_length < 1:
    raise UserError(f"text_length={text_length} must be at least 1; set config.data.text_length")
  if vocab_size < 258:
    raise UserError(
      f"BPE vocab_size={vocab_size} is below the 257 byte-level symbols + <bos>; set "
      "config.data.text_vocab_size to at least 258"
    )
  hf = tk.Tokenizer(tk.models.BPE())
  hf.normalizer = tk.normalizers.Lowercase()
  hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = tk.decoders.ByteLevel()
  trainer = tk.trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[BOS],
    initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  hf.train_from_iterator((str(c) for c in captions), trainer=trainer)
  out = TextTokenizer(hf, text_length=text_length, base_vocab_size=vocab_size, bos=bos)
  if path is not None:
    out.save(path)
  return out
