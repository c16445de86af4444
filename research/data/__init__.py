"""Data pipeline: TFDS datasets by name as sharded global batches (see `pipeline`).

Importing this package imports neither tensorflow, tensorflow_datasets nor jax: the pipeline's
names (`dataset_info`, `train_iterator`, ...) and submodules load on first access, so plain modules
such as `research.data.captioned_digits` import alone. The offline builders (`offline_mnist`,
`offline_digits`, `offline_sketched_digits`, `offline_captioned_digits`) are registered with TFDS,
all in one place, by `tfds_source.offline_builder_classes` when a pipeline function first needs a
builder, and the downloading `pix2pix` builder by `tfds_source.download_builder_classes`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from research.data.pipeline import (
    DatasetInfo,
    dataset_info,
    eval_iterator,
    held_out_examples,
    prepare,
    train_iterator,
  )

__all__ = [
  "DatasetInfo",
  "dataset_info",
  "eval_iterator",
  "held_out_examples",
  "prepare",
  "train_iterator",
]


def __getattr__(name: str) -> Any:
  """`research.data.<name>`: a name of `pipeline`, or a submodule (`data.pipeline`), on first use."""
  if name in __all__:
    from research.data import pipeline

    return getattr(pipeline, name)
  try:
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})
