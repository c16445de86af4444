"""The CLIP family (Radford et al. 2021): a contrastive image-text model, for reranking DALL-E samples.

Training minimises the symmetric InfoNCE loss over the (global) batch (CLIP's Figure 3 pseudocode):
logits = exp(t) * I_e T_e^T, the cross-entropy of each image against all captions and of each
caption against all images, averaged. Batches are {"image": uint8 [B, H, W, C], "text": int32
[B, L]} from the data pipeline's caption map (``config.data.text_length``); the BPE tokenizer is the
workdir's (`research.data.captions_text`).

Eval (`evaluate`) on the held-out split, within each eval batch (padding rows excluded):
* ``i2t_top1`` / ``t2i_top1``: the paired caption (image) is the top-1 of the batch. Captions repeat
  (two canvases may both be "a handwritten seven"), so ``i2t_label_top1`` / ``t2i_label_top1`` also
  count a retrieved item whose digit labels equal the query's, and ``*_held_out`` restricts those
  to the canvases whose (left, right) pair never occurs in training (compositional generalisation);
* ``zero_shot_digit_acc``: each non-empty cell, moved into the left cell of a blank canvas, is
  classified by the best of the ten captions "a handwritten zero" ... "a handwritten nine".

For DALL-E reranking: `CLIPTask.score` (jittable) and `load_clip(workdir)`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import data
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks.base import Batch, Metrics, Variables

ZERO_SHOT_TEMPLATE = "a handwritten {}"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def info_nce(img: jax.Array, txt: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE (CLIP Fig. 3): unit embeddings [B, E] x2, scale [] -> (loss [], logits [B, B]).

  loss = (CE(logits, arange) over rows + CE(logits^T, arange) over rows) / 2, logits = s I T^T.
  """
  logits = scale * img @ txt.T  # [B, B]: image i against caption j
  diag = jnp.diagonal(logits)
  loss_i = jax.nn.logsumexp(logits, axis=1) - diag  # image -> text
  loss_t = jax.nn.logsumexp(logits, axis=0) - diag  # text -> image
  return 0.5 * (jnp.mean(loss_i) + jnp.mean(loss_t)), logits


def _pixels(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, C] -> f32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


@dataclasses.dataclass(frozen=True)
class CLIPTask:
  model: nn.Module
  text_length: int
  zero_shot_text: tuple[tuple[int, ...], ...] = ()  # int32 [10, L]: "a handwritten <d>" per digit
  held_out_pairs: tuple[tuple[int, int], ...] = ()
  parts: tuple[str, ...] = ("model",)

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    images = _pixels(batch["image"])
    text = jnp.zeros((images.shape[0], self.text_length), jnp.int32)
    return {"model": self.model.init(rng, images, text)}

  def embed(self, variables: Variables, images: jax.Array, text: jax.Array):
    """(image unit vectors [B, E], text unit vectors [B, E], scale []) from uint8 images."""
    return self.model.apply({"params": variables["model"]["params"]}, _pixels(images), text)

  def _apply(self, variables: Variables, method: str, *args: jax.Array) -> jax.Array:
    return self.model.apply({"params": variables["model"]["params"]}, *args, method=method)

  def loss(
    self,
    part: str,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    train: bool,
    step: jax.Array | None = None,
  ) -> tuple[jax.Array, Metrics, Variables]:
    if "text" not in batch:
      raise UserError("the clip task needs captions; set config.data.text_length > 0")
    img, txt, scale = self.embed(variables, batch["image"], batch["text"])
    loss, logits = info_nce(img, txt, scale)
    target = jnp.arange(logits.shape[0])
    metrics = {
      "info_nce": loss,
      "i2t_acc": jnp.mean(jnp.argmax(logits, axis=1) == target),
      "t2i_acc": jnp.mean(jnp.argmax(logits, axis=0) == target),
      "logit_scale": scale,
    }
    return loss, metrics, {}

  def score(self, variables: Variables, images: jax.Array, text: jax.Array) -> jax.Array:
    """Cosine similarity x scale of each (image uint8 [B, H, W, C], caption ids [B, L]) -> f32 [B]."""
    img, txt, scale = self.embed(variables, images, text)
    return scale * jnp.sum(img * txt, axis=-1)

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    raise UserError("the clip family draws no samples; use --mode=eval (retrieval, zero-shot)")

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    return {}

  # ---- evaluation --------------------------------------------------------------------------------
  def _batch_sums(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
    variables = {"model": {"params": params}}
    mask = batch["mask"] > 0  # [B]
    img, txt, scale = self.embed(variables, batch["image"], batch["text"])
    logits = jnp.where(mask[None, :] & mask[:, None], scale * img @ txt.T, -jnp.inf)  # [B, B]
    b = logits.shape[0]
    i2t, t2i = jnp.argmax(logits, axis=1), jnp.argmax(logits, axis=0)  # [B] each
    real = mask.astype(jnp.float32)
    diag = jnp.where(mask, jnp.diagonal(logits), 0.0)
    safe = jnp.where(mask[None, :] & mask[:, None], logits, -1e9)
    nce_i = jax.nn.logsumexp(safe, axis=1) - diag
    nce_t = jax.nn.logsumexp(safe, axis=0) - diag
    sums = {
      "count": jnp.sum(real),
      "info_nce": jnp.sum(0.5 * (nce_i + nce_t) * real),
      "i2t_top1": jnp.sum((i2t == jnp.arange(b)) * real),
      "t2i_top1": jnp.sum((t2i == jnp.arange(b)) * real),
    }
    if "label" in batch and self.zero_shot_text:
      label = batch["label"]  # [B, 2]
      same_i2t = jnp.all(label[i2t] == label, axis=-1) * real
      same_t2i = jnp.all(label[t2i] == label, axis=-1) * real
      pairs = jnp.asarray(self.held_out_pairs)  # [P, 2]
      held = jnp.any(jnp.all(label[:, None, :] == pairs[None], axis=-1), axis=1) * real  # [B]
      sums.update(
        {
          "i2t_label_top1": jnp.sum(same_i2t),
          "t2i_label_top1": jnp.sum(same_t2i),
          "held_out_count": jnp.sum(held),
          "i2t_label_top1_held_out": jnp.sum(same_i2t * held),
          "t2i_label_top1_held_out": jnp.sum(same_t2i * held),
        }
      )
      sums.update(self._zero_shot_sums(variables, batch["image"], label, mask))
    return sums

  def _zero_shot_sums(
    self, variables: Variables, images: jax.Array, label: jax.Array, mask: jax.Array
  ) -> dict[str, jax.Array]:
    """Each non-empty cell of uint8 [B, H, 2H, C] alone in the left cell, against 10 captions."""
    b, h, w, c = images.shape
    cells = jnp.stack([images[:, :, : w // 2], images[:, :, w // 2 :]], axis=1)  # [B, 2, H, W/2, C]
    canvases = jnp.concatenate([cells, jnp.zeros_like(cells)], axis=3)  # digit left, blank right
    img = self._apply(variables, "encode_image", _pixels(canvases.reshape(2 * b, h, w, c)))
    txt = self._apply(variables, "encode_text", jnp.asarray(self.zero_shot_text))  # [10, E]
    pred = jnp.argmax(img @ txt.T, axis=-1).reshape(b, 2)  # [B, 2]
    valid = (label >= 0) & mask[:, None]
    return {
      "zero_shot_cells": jnp.sum(valid),
      "zero_shot_correct": jnp.sum((pred == label) & valid),
    }

  @functools.cached_property
  def _eval_sums(self):
    return jax.jit(self._batch_sums)  # compiled once per task

  def evaluate(
    self, variables: Variables, batches: Iterator[Batch], rng: jax.Array
  ) -> dict[str, float]:
    params = variables["model"]["params"]
    totals = None
    for batch in batches:
      if "text" not in batch:
        raise UserError("the clip task needs captions; set config.data.text_length > 0")
      out = self._eval_sums(params, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    if totals is None:
      raise UserError("the eval split is empty; set config.data.eval_split")
    t = {k: float(v) for k, v in jax.device_get(totals).items()}
    n = t.pop("count")
    results = {"num_examples": n, "info_nce": t.pop("info_nce") / n}
    held = t.pop("held_out_count", 0.0)
    cells, correct = t.pop("zero_shot_cells", 0.0), t.pop("zero_shot_correct", 0.0)
    for k, v in t.items():
      if k.endswith("_held_out"):
        if held:
          results[k] = v / held
      else:
        results[k] = v / n
    if cells:
      results["zero_shot_digit_acc"] = correct / cells
      results["num_held_out"] = held
    return results


@TASKS.register("clip")
def make_clip_task(config: Any, info: data.DatasetInfo) -> CLIPTask:
  from research.data import captions_text  # pylint: disable=g-import-not-at-top
  from research.text import bpe  # pylint: disable=g-import-not-at-top

  if not captions_text.text_length(config.data):
    raise UserError("the clip task needs captions; set config.data.text_length (e.g. 24)")
  tokenizer = bpe.TextTokenizer.load(config.data.text_tokenizer)
  fields = {**config.model.to_dict(), "vocab_size": tokenizer.vocab_size}
  fields["text_length"] = tokenizer.text_length
  zero_shot, held = (), ()
  h, w, _ = info.image_shape
  if w == 2 * h and config.data.name == "offline_captioned_digits":
    from research.data import captions  # pylint: disable=g-import-not-at-top

    ids = tokenizer.encode([ZERO_SHOT_TEMPLATE.format(d) for d in DIGIT_WORDS])  # [10, L]
    zero_shot = tuple(tuple(int(t) for t in row) for row in ids)
    held = captions.HELD_OUT_PAIRS
  return CLIPTask(
    model=build_module(fields),
    text_length=tokenizer.text_length,
    zero_shot_text=zero_shot,
    held_out_pairs=held,
  )


def load_clip(workdir: str) -> tuple[CLIPTask, Variables]:
  """The CLIP task and its variables (EMA when the run kept one and sample.use_ema) of a workdir.

  Rebuilds the run from the config JSON saved beside its latest checkpoint; the tokenizer is the
  workdir's ``text_tokenizer.json``.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  from research.train import checkpoint, setup  # pylint: disable=g-import-not-at-top

  ckpt = checkpoint.Checkpointer(workdir, save_every=1)
  step = ckpt.latest_step()
  if step is None:
    ckpt.close()
    raise UserError(f"no CLIP checkpoint in {workdir}/checkpoints; train experiments/clip_*.py")
  saved = ckpt.saved_config(step)
  ckpt.close()
  if saved.get("task", {}).get("name") != "clip":
    raise UserError(f"{workdir} holds a {saved.get('task', {}).get('name')!r} run, not clip")
  config = ml_collections.ConfigDict(saved)
  local = epath.Path(checkpoint.absolute(workdir)) / "text_tokenizer.json"
  if local.exists():
    config.data.text_tokenizer = str(local)
  exp = setup.build(config, workdir, require_checkpoint=True)
  exp.checkpointer.close()
  task = exp.task
  if not isinstance(task, CLIPTask):
    raise UserError(f"{workdir} does not hold a clip run")
  return task, exp.state.variables(use_ema=bool(config.sample.use_ema))
