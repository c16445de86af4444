"""The in-domain classifier family: a small CNN trained with cross-entropy on labelled digits.

It is not a generator: it exists to judge generators. Its trained checkpoint is the feature network
"digits_classifier" (`research.eval.feature_nets`): penultimate-layer features for the digits FID,
KID and precision/recall, and logits for the class histogram, the classifier score and the label
agreement of class-conditional samples (model_specs.md C, "MNIST-scale FID", option ii).

Training augments each image with a random translation of up to ``task.shift`` pixels (zero
padding: the digits' background is black), a standard regulariser for 4,000 training digits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import data
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks import pixels
from research.tasks.base import Batch, Metrics, ModelTask, Variables, masked_sums, options


@dataclasses.dataclass(frozen=True)
class ClassifierTask(ModelTask):
  model: nn.Module
  shift: int = 2  # max random translation in pixels (training only)

  def _augment(self, x: jax.Array, rng: jax.Array) -> jax.Array:
    """Random translation of each image [B, H, W, C] by up to `shift` pixels in each direction."""
    if not self.shift:
      return x
    s = self.shift
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))  # [B, H+2s, W+2s, C]
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * s + 1)  # [B, 2]
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)

  def logits_and_features(
    self, params: Any, images: jax.Array, *, train: bool = False, rng: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """uint8 images [B, H, W, C] -> (logits [B, K], features [B, D])."""
    rngs = {"dropout": rng} if train else {}
    return self.model.apply({"params": params}, pixels.to_unit(images), train=train, rngs=rngs)

  # ---- the Task protocol -------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    x = batch["image"].astype(jnp.float32)
    return {"model": self.model.init(rng, x, train=False)}

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
    shift_key, dropout_key = jax.random.split(rng)
    images = self._augment(batch["image"], shift_key) if train else batch["image"]
    logits, _ = self.logits_and_features(
      variables["model"]["params"], images, train=train, rng=dropout_key
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # [B]
    accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
    return jnp.mean(ce), {"cross_entropy": jnp.mean(ce), "accuracy": accuracy}, {}

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    raise UserError(
      "the classifier task does not generate images; use --mode=train or --mode=eval, and "
      "config.train.sample_every=0"
    )

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    logits, _ = self.logits_and_features(variables["model"]["params"], batch["image"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # [B]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)  # [B]
    return masked_sums({"cross_entropy": ce, "correct": correct}, batch["mask"])

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    n = float(totals["count"])
    accuracy = float(totals["correct"]) / n
    return {
      "accuracy": accuracy,
      "error_rate": 1.0 - accuracy,
      "cross_entropy_nats": float(totals["cross_entropy"]) / n,
      "num_examples": n,
    }


@TASKS.register("classifier")
def make_classifier_task(config: Any, info: data.DatasetInfo) -> ClassifierTask:
  if not info.num_classes:
    raise UserError(
      f"dataset {config.data.name!r} has no labels; the classifier task needs a labelled "
      "dataset such as offline_mnist"
    )
  fields = {**config.model.to_dict(), "num_classes": info.num_classes}
  return ClassifierTask(
    model=build_module(fields), **options(ClassifierTask, config.task, computed=("model",))
  )
