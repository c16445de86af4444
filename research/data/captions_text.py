"""Captions as model input: the caption -> "text" ids map of the data pipeline, and its tokenizer.

Configured by ``config.data`` fields (absent = off):

  text_length      int: > 0 gives batches "text" int32 [B, text_length] (0: captions are not read)
  text_tokenizer   str: the tokenizer JSON; '' = ``<workdir>/text_tokenizer.json``, trained on first
                   use from the training split's captions (`prepare_tokenizer`, called by
                   `research.train.setup.build`) and reused on resume
  text_vocab_size  int: BPE ids of a tokenizer trained here (before the text_length padding ids)
  text_bos         bool: start every caption with <bos>
  caption_key      str: the caption feature, 'caption' (offline_captioned_digits) or a nested path
                   such as 'captions/text' (coco_captions: several captions per image; training
                   draws one per example, eval takes the first)

The map runs on the host inside the tf.data map (`tf.numpy_function`), before batching, so it works
for any TFDS dataset with a string feature; nothing here depends on a family. No tensorflow import
at module level (nor tensorflow_datasets).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from research.errors import UserError


def caption_strings(builder: Any, split: Any, caption_key: str) -> list[str]:
  """Every caption of `split` (all of them where an example has several), in file order."""
  from research.data import tfds_source

  tf = tfds_source.import_tf()
  tfds = tfds_source.import_tfds()
  ds = builder.as_dataset(
    split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
  )
  ds = ds.map(lambda ex: tf.reshape(caption_tensor(ex, caption_key), [-1]))
  return [s.decode("utf-8") for batch in ds.as_numpy_iterator() for s in batch]


def caption_tensor(example: dict[str, Any], caption_key: str) -> Any:
  """The feature at `caption_key` ('caption', or a nested path 'captions/text')."""
  value = example
  for part in caption_key.split("/"):
    if not isinstance(value, dict) or part not in value:
      known = sorted(example) if isinstance(example, dict) else []
      raise UserError(
        f"config.data.caption_key={caption_key!r} is not a feature of the dataset (top-level "
        f"features: {known}); set it to the caption feature, e.g. 'caption' or 'captions/text'"
      )
    value = value[part]
  return value


# ---- captions -> "text" ids in the pipeline ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TextTransform:
  """What the tf.data pipeline needs to map a caption feature to "text" int32 [length]."""

  caption_key: str  # feature path, e.g. 'caption' or 'captions/text' (one or several strings)
  length: int
  encode: Callable[[bytes], np.ndarray]  # one caption -> int32 [length]


def text_length(data_config: Any) -> int:
  """``config.data.text_length`` (0 or absent: the dataset's captions are not read)."""
  return int(getattr(data_config, "text_length", 0) or 0)


def text_transform(data_config: Any, tokenizer: str | None = None) -> TextTransform | None:
  """The caption -> "text" map of `data_config`, or None when ``text_length`` is 0.

  `tokenizer` is the tokenizer file (`prepare_tokenizer`'s result); without it,
  ``config.data.text_tokenizer`` must name one.
  """
  length = text_length(data_config)
  if not length:
    return None
  from research.text import bpe

  path = tokenizer or getattr(data_config, "text_tokenizer", "") or ""
  if not path:
    raise UserError(
      "config.data.text_length is set but config.data.text_tokenizer is empty; run through "
      "research.main (which trains <workdir>/text_tokenizer.json) or set it to a tokenizer file"
    )
  tokenizer_ = bpe.TextTokenizer.load(path)
  check_tokenizer(tokenizer_, data_config, path)
  key = getattr(data_config, "caption_key", None) or "caption"
  return TextTransform(caption_key=key, length=length, encode=tokenizer_.encode_one)


def check_tokenizer(tokenizer: Any, data_config: Any, path: Any) -> None:
  """A one-line error when a saved tokenizer does not match ``config.data``."""
  want = {
    "text_length": text_length(data_config),
    "base_vocab_size": int(getattr(data_config, "text_vocab_size", tokenizer.base_vocab_size)),
    "bos": bool(getattr(data_config, "text_bos", tokenizer.bos)),
  }
  for key, value in want.items():
    if getattr(tokenizer, key) != value:
      raise UserError(
        f"text tokenizer {path} has {key}={getattr(tokenizer, key)!r} but config.data asks for "
        f"{value!r}; use a new --workdir, delete the file to retrain it, or match config.data"
      )


def tokenizer_path(data_config: Any, workdir: str) -> str:
  """The tokenizer file of a run in `workdir`: ``config.data.text_tokenizer``, or, when that is
  empty (or names a file that is gone while the workdir has its own, as after moving a workdir),
  ``<workdir>/text_tokenizer.json``."""
  from etils import epath

  base = workdir if "://" in workdir else os.path.abspath(workdir)
  local = str(epath.Path(base) / "text_tokenizer.json")
  path = getattr(data_config, "text_tokenizer", "") or ""
  if not path or (not epath.Path(path).exists() and epath.Path(local).exists()):
    return local
  return path


def prepare_tokenizer(data_config: Any, workdir: str) -> str | None:
  """The trained tokenizer file of the run in `workdir` (None when text_length is 0).

  The file is `tokenizer_path`; a missing one is trained on first use, by process 0, from every
  caption of ``config.data.split`` with ``text_vocab_size`` BPE ids and ``text_bos``; other
  processes wait for it. A resumed run reuses the file. `data_config` is not changed.
  """
  length = text_length(data_config)
  if not length:
    return None
  import jax
  from etils import epath

  from research.data import tfds_source
  from research.text import bpe

  path = tokenizer_path(data_config, workdir)
  if jax.process_index() == 0 and not epath.Path(path).exists():
    builder = tfds_source.get_builder(data_config)
    key = getattr(data_config, "caption_key", None) or "caption"
    corpus = caption_strings(builder, tfds_source.field(data_config, "split"), key)
    bpe.train_tokenizer(
      corpus,
      int(getattr(data_config, "text_vocab_size", 512)),
      path,
      text_length=length,
      bos=bool(getattr(data_config, "text_bos", False)),
    )
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("research: text tokenizer trained")
  check_tokenizer(bpe.TextTokenizer.load(path), data_config, path)
  return path
