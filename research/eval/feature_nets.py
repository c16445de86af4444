"""Feature networks for sample-quality metrics, chosen by name (`FEATURE_NETS`).

A `FeatureNet` is pure: `apply(params, images)` maps uint8 images [B, H, W, C] to
{"features": f32 [B, D], "logits": f32 [B, K]} with the parameters passed explicitly, so callers can
jit it and replicate or shard the parameters over a mesh. Loaders take the eval config
(`config.eval`) and return a ready `FeatureNet`.

Registered here: "inception_v3" (the FID InceptionV3, 2015-12-05 TF weights converted from
pytorch-fid's file by `research.eval.inception_weights`) and "digits_classifier" (the project's
in-domain classifier, `experiments/digits_classifier.py`, loaded through `research.train.restore`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from research.errors import UserError
from research.eval import classifier_cache
from research.registry import FEATURE_NETS
from research.train import restore

ApplyFn = Callable[[Any, jax.Array], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A feature network with its parameters and the input convention its statistics depend on."""

  name: str
  params: Any
  apply: ApplyFn  # (params, uint8 [B, H, W, C]) -> {"features": [B, D], "logits": [B, K]}
  feature_dim: int
  num_classes: int
  input_size: int  # images are resized to input_size x input_size before the network
  resize: str  # the resize method (part of the reference statistics' identity)
  weights: str  # where the weights came from (a path, or "random")


def _eval_field(eval_config: ml_collections.ConfigDict | None, key: str, default: Any) -> Any:
  if eval_config is None:
    return default
  value = eval_config.get(key, default)
  return default if value is None else value


def inception_weights_path(eval_config: ml_collections.ConfigDict | None) -> str | None:
  """config.eval.inception_weights, else $RESEARCH_INCEPTION_WEIGHTS, else None."""
  from research.eval import inception_weights as iw

  return _eval_field(eval_config, "inception_weights", None) or os.environ.get(iw.ENV_VAR) or None


def inception_v3(
  eval_config: ml_collections.ConfigDict | None = None, *, random_weights: bool = False
) -> FeatureNet:
  """The FID InceptionV3 with the converted 2015-12-05 weights (or random ones, for benchmarks).

  Eval-config fields read (all optional): inception_weights (a .npz path; env fallback),
  inception_resize ("bilinear" as pytorch-fid, or "tf1_bilinear"), inception_dtype
  ("float32" / "bfloat16"), inception_allow_unofficial (accept a .npz converted from a file whose
  sha256 is not the official one).
  """
  from research.eval import inception_weights as iw
  from research.models import inception

  resize = _eval_field(eval_config, "inception_resize", "bilinear")
  if resize not in inception.RESIZE_METHODS:
    raise UserError(
      f"unknown config.eval.inception_resize {resize!r}; use one of {inception.RESIZE_METHODS}"
    )
  dtype = _eval_field(eval_config, "inception_dtype", "float32")
  model = inception.InceptionV3(resize=resize, dtype=dtype)
  if random_weights:
    dummy = jnp.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), jnp.uint8)
    params = jax.jit(model.init)(jax.random.key(0), dummy)["params"]
    source = "random"
  else:
    path = inception_weights_path(eval_config)
    if not path:
      raise UserError(f"no Inception weights configured; {iw.HOW_TO_GET}")
    params, digest = iw.load_params(path)
    if digest != iw.SHA256 and not _eval_field(eval_config, "inception_allow_unofficial", False):
      raise UserError(
        f"{path} was converted from a file with sha256 {digest}, not the official {iw.FILE_NAME}; "
        "its FIDs are not comparable (set config.eval.inception_allow_unofficial=True to use it)"
      )
    params = jax.tree.map(jnp.asarray, params)
    source = path

  def apply(p: Any, images: jax.Array) -> dict[str, jax.Array]:
    out = model.apply({"params": p}, images)
    return {"features": out["features"], "logits": out["logits"]}

  return FeatureNet(
    name="inception_v3",
    params=params,
    apply=apply,
    feature_dim=inception.FEATURE_DIM,
    num_classes=inception.NUM_CLASSES,
    input_size=inception.INPUT_SIZE,
    resize=resize,
    weights=source,
  )


FEATURE_NETS.register("inception_v3")(inception_v3)

# ---- the project's digits classifier ----------------------------------------------------------------


@FEATURE_NETS.register("digits_classifier")
def digits_classifier(eval_config: ml_collections.ConfigDict | None = None) -> FeatureNet:
  """The trained digits classifier: penultimate features [B, hidden] and logits [B, K].

  It takes images at the size it was trained on (no resize): 28x28 for offline_mnist. A missing
  one is trained first (`research.eval.classifier_cache`: once, into a shared cache).
  """
  workdir = classifier_cache.ensure_trained(eval_config)  # trained once when missing
  try:
    trained = restore.load_trained(workdir, task_name="classifier")
  except UserError as e:
    raise UserError(
      f"the digits classifier in {workdir} cannot be used ({e}); delete {workdir} and it is "
      "trained again (or set config.eval.classifier_workdir; config.eval.feature_net='' turns the "
      "classifier metrics off)"
    ) from None
  task, params = trained.task, trained.variables["model"]["params"]

  def apply(p: Any, images: jax.Array) -> dict[str, jax.Array]:
    logits, features = task.logits_and_features(p, images)
    return {"features": features.astype(jnp.float32), "logits": logits.astype(jnp.float32)}

  side = int(trained.info.image_shape[0])
  probe = jax.ShapeDtypeStruct((1, side, side, trained.info.image_shape[2]), jnp.uint8)
  shapes = jax.eval_shape(apply, params, probe)
  return FeatureNet(
    name="digits_classifier",
    params=jax.device_get(params),
    apply=apply,
    feature_dim=int(shapes["features"].shape[1]),
    num_classes=int(trained.info.num_classes),
    input_size=side,
    resize="none",
    weights=f"{workdir} step {trained.step} ({trained.config.data.name})",
  )
