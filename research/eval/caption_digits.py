"""The ``caption_digits`` evaluator: does a text-to-image model draw the digits its caption asks for?

For the first ``num_captions`` held-out canvases of `offline_captioned_digits`, the model draws a
canvas from each caption (as its sample mode does: with its reranker when it has one; the held-out
captions are re-tokenized for the reranker on the host). Each cell the caption fills (cells it
leaves empty are skipped) is read and embedded by the judge, a feature network (``judge``, e.g.
``digits_classifier``), for the generated and the real canvas alike, on the digit's box inside the
cell (`captioned_digits.digit_box`), resized to the judge's input:

- ``caption_digit_agreement``: the share of generated cells read as the digit the caption asks for
  (``real_digit_agreement``, the same for the real cells, is its ceiling);
- ``fid`` and ``kid``: the generated cells against the real ones in the judge's feature space
  (`research.eval.metrics`), over ``fid_n`` cells of each (FID is biased upwards at small N).

Options (``config.evals.caption_digits``): ``judge`` ('' = off: the evaluator reports nothing),
``num_captions`` (256).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.data import captioned_digits
from research.errors import UserError
from research.eval import metrics
from research.registry import EVALUATORS, FEATURE_NETS
from research.tasks.base import Batch, Variables, options


@dataclasses.dataclass(frozen=True)
class Options:
  judge: str = ""  # a feature network name; '' = off
  num_captions: int = 256


def fit_cells(cells: np.ndarray, side: int) -> np.ndarray:
  """uint8 cells [B, S, S, C] -> [B, side, side, C] for the judge: the digit's box inside each
  cell, resized (bilinear, antialiased) only when it is not `side` already."""
  offset, size = captioned_digits.digit_box(cells.shape[1])
  digits = cells[:, offset : offset + size, offset : offset + size]
  if size == side:
    return digits
  resized = jax.image.resize(
    digits.astype(np.float32), (len(cells), side, side, cells.shape[-1]), "bilinear"
  )
  return np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)


class CaptionDigits:
  """Caption-digit agreement and cell FID / KID of a `research.tasks.dalle.DalleTask`."""

  def __init__(self, task: Any, options: Options, load_judge: Callable[[], Any]):
    self.task, self.options, self.load_judge = task, options, load_judge
    self._judge: tuple[Any, Callable[..., Any]] | None = None
    self.generate = jax.jit(task.generate_images)

  def judge(self) -> tuple[Any, Callable[..., Any]]:
    """The judge (a FeatureNet) and its jitted apply, loaded at the first evaluation; a failed
    load raises again next time (nothing is cached)."""
    if self._judge is None:
      net = self.load_judge()
      self._judge = (net, jax.jit(net.apply))
    return self._judge

  def __call__(
    self, variables: Variables, batches: Callable[[], Iterator[Batch]], rng: jax.Array
  ) -> dict[str, float]:
    if not self.options.judge:
      return {}
    try:
      net, apply = self.judge()
    except UserError as e:  # no trained judge: skip, say why
      print(f"note: caption-digit agreement skipped: {e}", file=sys.stderr)
      return {}
    hits = {"generated": 0, "real": 0}
    feats: dict[str, list[np.ndarray]] = {"generated": [], "real": []}
    rows = 0
    for i, batch in enumerate(batches()):
      if rows >= self.options.num_captions:
        break
      rows += int(batch["text"].shape[0])
      clip_text = None  # held-out captions in the reranker's tokenizer, when there is one
      if self.task.to_clip_ids is not None:
        clip_text = self.task.to_clip_ids(np.asarray(jax.device_get(batch["text"])))
      generated, _ = self.generate(variables, batch["text"], jax.random.fold_in(rng, i), clip_text)
      canvases = {"generated": np.asarray(generated), "real": np.asarray(batch["image"])}
      labels = np.asarray(batch["label"]).reshape(len(generated), -1)
      mask = np.asarray(batch["mask"]) > 0
      size = canvases["real"].shape[1]  # square cells side by side: W // H of them
      for cell in range(min(labels.shape[1], canvases["real"].shape[2] // size)):
        ok = mask & (labels[:, cell] >= 0)
        for kind, images in canvases.items():
          crop = fit_cells(images[:, :, cell * size : (cell + 1) * size], net.input_size)
          out = jax.device_get(apply(net.params, crop))
          pred = np.argmax(out["logits"], axis=-1)
          hits[kind] += int(np.sum((pred == labels[:, cell]) & ok))
          feats[kind].append(np.asarray(out["features"], np.float64)[ok])
    gen, real = (np.concatenate(feats[k]) for k in ("generated", "real"))
    total = len(gen)
    results = {
      "caption_digit_agreement": hits["generated"] / max(total, 1),
      "real_digit_agreement": hits["real"] / max(total, 1),
      "agreement_cells": float(total),
    }
    if total >= 2:
      fid = metrics.frechet_distance(*metrics.gaussian_stats(real), *metrics.gaussian_stats(gen))
      kid_mean, kid_std = metrics.kid(real, gen, num_subsets=20, subset_size=max(2, total // 2))
      results.update({"fid": fid, "fid_n": float(total), "kid": kid_mean, "kid_std": kid_std})
    return results


@EVALUATORS.register("caption_digits")
def caption_digits(settings: Any, config: Any, task: Any, info: Any) -> CaptionDigits:
  opts = Options(**options(Options, settings))
  return CaptionDigits(task, opts, lambda: FEATURE_NETS.get(opts.judge)(config.eval))
