"""The ``clip_digits`` evaluator: what a CLIP model of captioned digits gets right, beyond the task's
own in-batch retrieval metrics.

Over the held-out split of `offline_captioned_digits` (labels (left, right), -1 = empty cell), within
each eval batch, padding rows excluded:

* ``i2t_label_top1`` / ``t2i_label_top1``: the retrieved caption (image) has the query's digit labels
  (captions repeat: two canvases may both be "a handwritten seven", so the paired item is not the
  only right answer); ``*_held_out`` restricts them to canvases whose (left, right) pair never
  occurs in training (`captioned_digits.HELD_OUT_PAIRS`: compositional generalisation);
* ``zero_shot_digit_acc``: each non-empty cell, moved into the left cell of a blank canvas, is
  classified by the best of the ten captions "a handwritten zero" ... "a handwritten nine".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.data import captioned_digits
from research.eval.heldout import split_totals
from research.registry import EVALUATORS
from research.tasks import pixels
from research.tasks.base import Batch, Variables


class ClipDigits:
  """Label-aware retrieval and zero-shot digit accuracy of a `research.tasks.clip.CLIPTask`."""

  def __init__(self, task: Any):
    self.task = task
    ids = task.tokenizer.encode(list(captioned_digits.ZERO_SHOT_CAPTIONS))  # [10, L]
    self.prompts = np.asarray(ids, np.int32)
    self.held_out_pairs = np.asarray(captioned_digits.HELD_OUT_PAIRS, np.int32)  # [P, 2]
    self._sums = jax.jit(self.sums)

  def sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    logits, mask = self.task.batch_logits(variables, batch)  # [B, B], [B]
    i2t, t2i = jnp.argmax(logits, axis=1), jnp.argmax(logits, axis=0)  # [B] each
    real = mask.astype(jnp.float32)
    label = batch["label"]  # [B, 2]
    same_i2t = jnp.all(label[i2t] == label, axis=-1) * real
    same_t2i = jnp.all(label[t2i] == label, axis=-1) * real
    pairs = jnp.asarray(self.held_out_pairs)
    held = jnp.any(jnp.all(label[:, None, :] == pairs[None], axis=-1), axis=1) * real  # [B]
    return {
      "count": jnp.sum(real),
      "i2t_label_top1": jnp.sum(same_i2t),
      "t2i_label_top1": jnp.sum(same_t2i),
      "held_out_count": jnp.sum(held),
      "i2t_label_top1_held_out": jnp.sum(same_i2t * held),
      "t2i_label_top1_held_out": jnp.sum(same_t2i * held),
      **self._zero_shot_sums(variables, batch["image"], label, mask),
    }

  def _zero_shot_sums(
    self, variables: Variables, images: jax.Array, label: jax.Array, mask: jax.Array
  ) -> dict[str, jax.Array]:
    """Each non-empty cell of uint8 [B, H, 2H, C] alone in the left cell, against 10 captions."""
    b, h, w, c = images.shape
    cells = jnp.stack([images[:, :, : w // 2], images[:, :, w // 2 :]], axis=1)  # [B, 2, H, W/2, C]
    canvases = jnp.concatenate([cells, jnp.zeros_like(cells)], axis=3)  # digit left, blank right
    x = pixels.to_signed(canvases.reshape(2 * b, h, w, c))
    img = self.task.apply(variables, "encode_image", x)
    txt = self.task.apply(variables, "encode_text", jnp.asarray(self.prompts))  # [10, E]
    pred = jnp.argmax(img @ txt.T, axis=-1).reshape(b, 2)  # [B, 2]
    valid = (label >= 0) & mask[:, None]
    return {
      "zero_shot_cells": jnp.sum(valid),
      "zero_shot_correct": jnp.sum((pred == label) & valid),
    }

  def __call__(
    self, variables: Variables, batches: Callable[[], Iterator[Batch]], rng: jax.Array
  ) -> dict[str, float]:
    t = {k: float(v) for k, v in split_totals(self._sums, variables, batches(), rng).items()}
    n, held, cells = t["count"], t["held_out_count"], t["zero_shot_cells"]
    results = {k: t[k] / n for k in ("i2t_label_top1", "t2i_label_top1")}
    if held:
      for k in ("i2t_label_top1_held_out", "t2i_label_top1_held_out"):
        results[k] = t[k] / held
    results["num_held_out"] = held
    if cells:
      results["zero_shot_digit_acc"] = t["zero_shot_correct"] / cells
    return results


@EVALUATORS.register("clip_digits")
def clip_digits(options: Any, config: Any, task: Any, info: Any) -> ClipDigits:
  return ClipDigits(task)
