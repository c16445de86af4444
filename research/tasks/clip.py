"""The CLIP family (Radford et al. 2021): a contrastive image-text model, for reranking DALL-E samples.

Training minimises the symmetric InfoNCE loss over the (global) batch (CLIP's Figure 3 pseudocode):
logits = exp(t) * I_e T_e^T, the cross-entropy of each image against all captions and of each
caption against all images, averaged. Batches are {"image": uint8 [B, H, W, C], "text": int32
[B, L]} from the data pipeline's caption map (``config.data.text_length``); the BPE tokenizer is the
workdir's (`research.data.captions_text`).

Held-out metrics (`eval_sums`), within each eval batch (padding rows excluded): the symmetric
InfoNCE, and ``i2t_top1`` / ``t2i_top1``, the share of images (captions) whose paired caption
(image) is the top-1 of the batch. Checks that only make sense for captioned digits (label-aware
retrieval, held-out pairs, zero-shot digit classification) are the ``clip_digits`` evaluator
(`research.eval.clip_digits`).

For DALL-E reranking: `CLIPTask.score` (jittable); load a trained one with
`research.train.restore.load_trained`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import data
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks import pixels
from research.tasks.base import Batch, Metrics, ModelTask, Variables, options
from research.text import bpe


def info_nce(img: jax.Array, txt: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE (CLIP Fig. 3): unit embeddings [B, E] x2, scale [] -> (loss [], logits [B, B]).

  loss = (CE(logits, arange) over rows + CE(logits^T, arange) over rows) / 2, logits = s I T^T.
  """
  logits = scale * img @ txt.T  # [B, B]: image i against caption j
  diag = jnp.diagonal(logits)
  loss_i = jax.nn.logsumexp(logits, axis=1) - diag  # image -> text
  loss_t = jax.nn.logsumexp(logits, axis=0) - diag  # text -> image
  return 0.5 * (jnp.mean(loss_i) + jnp.mean(loss_t)), logits


@dataclasses.dataclass(frozen=True)
class CLIPTask(ModelTask):
  model: nn.Module
  text_length: int
  tokenizer_path: str = ""  # the caption tokenizer's file (research.text.bpe)

  @property
  def tokenizer(self) -> bpe.TextTokenizer:
    return bpe.TextTokenizer.load(self.tokenizer_path)

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    images = pixels.to_signed(batch["image"])
    text = jnp.zeros((images.shape[0], self.text_length), jnp.int32)
    return {"model": self.model.init(rng, images, text)}

  def embed(self, variables: Variables, images: jax.Array, text: jax.Array):
    """(image unit vectors [B, E], text unit vectors [B, E], scale []) from uint8 images."""
    return self.model.apply(
      {"params": variables["model"]["params"]}, pixels.to_signed(images), text
    )

  def apply(self, variables: Variables, method: str, *args: jax.Array) -> jax.Array:
    """One of the model's methods ("encode_image" on [-1, 1] pixels, "encode_text" on ids)."""
    return self.model.apply({"params": variables["model"]["params"]}, *args, method=method)

  def loss(
    self,
    part: str,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    train: bool,
    step: jax.Array,
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

  # ---- evaluation --------------------------------------------------------------------------------
  def batch_logits(self, variables: Variables, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Image-caption logits [B, B] of one eval batch, -inf where a padding row takes part, and
    the real-row mask [B]."""
    if "text" not in batch:
      raise UserError("the clip task needs captions; set config.data.text_length > 0")
    mask = batch["mask"] > 0  # [B]
    img, txt, scale = self.embed(variables, batch["image"], batch["text"])
    pair = mask[None, :] & mask[:, None]
    return jnp.where(pair, scale * img @ txt.T, -jnp.inf), mask

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    logits, mask = self.batch_logits(variables, batch)
    b = logits.shape[0]
    i2t, t2i = jnp.argmax(logits, axis=1), jnp.argmax(logits, axis=0)  # [B] each
    real = mask.astype(jnp.float32)
    diag = jnp.where(mask, jnp.diagonal(logits), 0.0)
    safe = jnp.where(mask[None, :] & mask[:, None], logits, -1e9)
    nce_i = jax.nn.logsumexp(safe, axis=1) - diag
    nce_t = jax.nn.logsumexp(safe, axis=0) - diag
    return {
      "count": jnp.sum(real),
      "info_nce": jnp.sum(0.5 * (nce_i + nce_t) * real),
      "i2t_top1": jnp.sum((i2t == jnp.arange(b)) * real),
      "t2i_top1": jnp.sum((t2i == jnp.arange(b)) * real),
    }


@TASKS.register("clip")
def make_clip_task(config: Any, info: data.DatasetInfo) -> CLIPTask:
  if not info.text_tokenizer:
    raise UserError("the clip task needs captions; set config.data.text_length (e.g. 24)")
  tokenizer = bpe.TextTokenizer.load(info.text_tokenizer)
  fields = {**config.model.to_dict(), "vocab_size": tokenizer.vocab_size}
  fields["text_length"] = tokenizer.text_length
  options(CLIPTask, config.task, computed=("model", "text_length", "tokenizer_path"))  # typos
  return CLIPTask(
    model=build_module(fields),
    text_length=tokenizer.text_length,
    tokenizer_path=info.text_tokenizer,
  )
