"""Feature networks for sample-quality metrics, chosen by name (`FEATURE_NETS`).

A `FeatureNet` is pure: `apply(params, images)` maps uint8 images [B, H, W, C] to
{"features": f32 [B, D], "logits": f32 [B, K]} with the parameters passed explicitly, so callers can
jit it and replicate or shard the parameters over a mesh. Loaders take the eval config
(`config.eval`) and return a ready `FeatureNet`.

Registered here: "inception_v3" (the FID InceptionV3, 2015-12-05 TF weights converted from
pytorch-fid's file by `research.eval.inception_weights`). The in-domain digits classifier registers
itself elsewhere.
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
from research.registry import Registry

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


# name -> loader(eval_config) -> FeatureNet
FEATURE_NETS: Registry[Callable[[ml_collections.ConfigDict], FeatureNet]] = Registry(
  "feature network", "config.eval.feature_net"
)


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
