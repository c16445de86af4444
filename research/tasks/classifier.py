"""The in-domain classifier family: a small CNN trained with cross-entropy on labelled digits.

It is not a generator: it exists to judge generators. Its trained checkpoint is the feature network
"digits_classifier" (`load_digits_classifier`): penultimate-layer features for the digits FID, KID
and precision/recall, and logits for the class histogram, the classifier score and the label
agreement of class-conditional samples (model_specs.md C, "MNIST-scale FID", option ii).

Training augments each image with a random translation of up to ``task.shift`` pixels (zero
padding: the digits' background is black), a standard regulariser for 4,000 training digits.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from research import data
from research.errors import UserError
from research.eval import averages, feature_nets
from research.registry import TASKS, build_module
from research.tasks.base import Batch, Metrics, Variables

ENV_WORKDIR = "RESEARCH_DIGITS_CLASSIFIER"
DEFAULT_WORKDIR = "workdirs/digits_classifier"
TRAIN_COMMAND = (
  "python -m research.main --config=experiments/digits_classifier.py --workdir={workdir}"
)


@dataclasses.dataclass(frozen=True)
class ClassifierTask:
  model: nn.Module
  shift: int = 2  # max random translation in pixels (training only)
  parts: tuple[str, ...] = ("model",)

  def _augment(self, x: jax.Array, rng: jax.Array) -> jax.Array:
    """Random translation of each image [B, H, W, C] by up to `shift` pixels in each direction."""
    if not self.shift:
      return x
    s = self.shift
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))  # [B, H+2s, W+2s, C]
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * s + 1)  # [B, 2]
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)

  def logits_and_features(
    self, params: Any, images: jax.Array, *, train: bool = False, rng: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """uint8 images [B, H, W, C] -> (logits [B, K], features [B, D])."""
    x = images.astype(jnp.float32) / 255.0
    rngs = {"dropout": rng} if train else {}
    return self.model.apply({"params": params}, x, train=train, rngs=rngs)

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
    step: jax.Array | None = None,
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

  def _batch_sums(self, params: Any, batch: Batch) -> Metrics:
    logits, _ = self.logits_and_features(params, batch["image"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # [B]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)  # [B]
    return averages.masked_sums({"cross_entropy": ce, "correct": correct}, batch["mask"])

  @functools.cached_property
  def _eval_sums(self):
    return jax.jit(self._batch_sums)

  def evaluate(
    self, variables: Variables, batches: Iterator[Batch], rng: jax.Array
  ) -> dict[str, float]:
    params = variables["model"]["params"]
    means, n = averages.split_means(lambda b, i: self._eval_sums(params, b), batches)
    return {
      "accuracy": means["correct"],
      "error_rate": 1.0 - means["correct"],
      "cross_entropy_nats": means["cross_entropy"],
      "num_examples": n,
    }

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    return {}


@TASKS.register("classifier")
def make_classifier_task(config: Any, info: data.DatasetInfo) -> ClassifierTask:
  if not info.num_classes:
    raise UserError(
      f"dataset {config.data.name!r} has no labels; the classifier task needs a labelled "
      "dataset such as offline_mnist"
    )
  fields = {**config.model.to_dict(), "num_classes": info.num_classes}
  return ClassifierTask(model=build_module(fields), shift=int(config.task.shift))


# ---- the trained classifier as a feature network ---------------------------------------------------
def classifier_workdir(eval_cfg: Any) -> str:
  """config.eval.classifier_workdir, else $RESEARCH_DIGITS_CLASSIFIER, else workdirs/digits_classifier."""
  return (
    str(eval_cfg.get("classifier_workdir") or "") or os.environ.get(ENV_WORKDIR) or DEFAULT_WORKDIR
  )


def restore_classifier(workdir: str) -> tuple[ClassifierTask, Any, dict[str, Any], int]:
  """(task, parameters (EMA when kept), saved config, step) of the latest checkpoint in `workdir`.

  The restore target comes from the checkpoint's own metadata, so no dataset is needed.
  """
  from research.train.checkpoint import Checkpointer, absolute

  missing = UserError(
    f"no trained digits classifier in {workdir}; train it with: "
    f"{TRAIN_COMMAND.format(workdir=workdir)} (or set config.eval.classifier_workdir or "
    f"${ENV_WORKDIR}; config.eval.feature_net='' turns the classifier metrics off)"
  )
  if not os.path.isdir(os.path.join(absolute(workdir), "checkpoints")) and "://" not in workdir:
    raise missing
  ckpt = Checkpointer(workdir, save_every=1, async_save=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise missing
    saved = ckpt.saved_config(step)
    if saved.get("task", {}).get("name") != "classifier":
      raise UserError(
        f"{workdir} holds a {saved.get('task', {}).get('name')!r} run, not a classifier; point "
        "config.eval.classifier_workdir at a workdir of experiments/digits_classifier.py"
      )
    state_dir = ckpt.directory / str(step) / "state"
  finally:
    ckpt.close()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  is_array = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")  # noqa: E731
  with ocp.StandardCheckpointer() as reader:
    meta = reader.metadata(state_dir).item_metadata  # the saved tree's shapes and dtypes
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta, is_leaf=is_array
    )
    state = reader.restore(state_dir, target)
  part = state["parts"]["model"]
  params = part["ema_params"] if part.get("ema_params") else part["params"]
  num_classes = int(params["Dense_1"]["bias"].shape[0])
  model = build_module({**saved["model"], "num_classes": num_classes}, "saved config.model")
  task = ClassifierTask(model=model, shift=int(saved["task"].get("shift", 0)))
  return task, jax.device_get(params), saved, step


@feature_nets.FEATURE_NETS.register("digits_classifier")
def load_digits_classifier(eval_cfg: Any) -> feature_nets.FeatureNet:
  """The trained digits classifier: penultimate features [B, hidden] and logits [B, K].

  It takes images at the size it was trained on (no resize): 28x28 for offline_mnist.
  """
  workdir = classifier_workdir(eval_cfg)
  task, params, saved, step = restore_classifier(workdir)
  # Input size from the parameters: the first dense layer sees (S / 2**stages)^2 * channels[-1].
  channels = tuple(saved["model"]["channels"])
  flat = int(params["Dense_0"]["kernel"].shape[0])
  side = round((flat / channels[-1]) ** 0.5) * 2 ** len(channels)

  def apply(p: Any, images: jax.Array) -> dict[str, jax.Array]:
    logits, features = task.logits_and_features(p, images)
    return {"features": features.astype(jnp.float32), "logits": logits.astype(jnp.float32)}

  return feature_nets.FeatureNet(
    name="digits_classifier",
    params=params,
    apply=apply,
    feature_dim=int(params["Dense_0"]["kernel"].shape[1]),
    num_classes=int(params["Dense_1"]["kernel"].shape[1]),
    input_size=side,
    resize="none",
    weights=f"{workdir} step {step} ({saved['data']['name']})",
  )
