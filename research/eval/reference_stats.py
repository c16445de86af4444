"""Reference statistics of real images in a feature space, computed once and cached.

One entry per (dataset, split, image size, feature network and its weights, image count): the
Gaussian statistics (mu [D], sigma [D, D], float64) of the features of every real image of the
split, and up to ``config.eval.reference_max_features`` of the features themselves (a fixed random
subset, float32) for KID and precision/recall. Each entry is ``<name>.npz`` with ``<name>.json``
beside it recording the conventions: the image count, the pipeline's resize
(``config.data.image_size``), the network's own resize and input size, uint8 quantisation, and the
network's weights.

The cache folder is ``config.eval.reference_cache_dir``, else ``$RESEARCH_REFERENCE_CACHE``, else
``<workdir>/reference_stats``; a shared folder (also ``gs://``) serves every run on one dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from research import data
from research.data import safe_pickle
from research.errors import UserError
from research.eval import feature_nets, metrics
from research.train import sharding as shd

ENV_CACHE = "RESEARCH_REFERENCE_CACHE"
FORMAT = 1  # bump when what is stored changes


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
  mu: np.ndarray  # float64 [D]
  sigma: np.ndarray  # float64 [D, D]
  features: np.ndarray  # float32 [M, D], M <= reference_max_features
  num_images: int  # images behind mu and sigma
  conventions: dict[str, Any]  # what the JSON beside the cache entry records
  path: str  # the cache entry, without extension
  cache_hit: bool  # loaded from the cache (False: computed now)


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return (
    str(config.eval.get("reference_cache_dir") or "")
    or os.environ.get(ENV_CACHE)
    or os.path.join(workdir, "reference_stats")
  )


def fingerprint(params: Any) -> str:
  """sha256 of a parameter tree's shapes, dtypes and values (identifies the network's weights)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def reference_split(config: ml_collections.ConfigDict) -> str:
  return str(config.eval.get("reference_split") or "") or config.data.eval_split


def training_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` whose reference statistics are those of the training split (``config.data.split``),
  keeping ``config.eval.memorisation_train_features`` features (0: reference_max_features):
  the training set of the data-copying metrics (`research.eval.memorisation`), cached as any
  other entry."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.eval.reference_split = config.data.split
  keep = int(config.eval.get("memorisation_train_features") or 0)
  if keep:
    out.eval.reference_max_features = keep
  return out


def _split_data_config(config: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
  """config.data reading `split` as its eval split (one pass, padded batches with a mask)."""
  out = ml_collections.ConfigDict(config.data.to_dict())
  out.eval_split = split
  return out


def conventions(
  config: ml_collections.ConfigDict, net: feature_nets.FeatureNet, num_images: int
) -> dict[str, Any]:
  """The identity of a cache entry: everything its numbers depend on."""
  size = config.data.image_size
  return {
    "format": FORMAT,
    "dataset": config.data.name,
    "split": reference_split(config),
    "num_images": int(num_images),
    "pipeline_resize": (
      "none (native size)" if not size else f"{size}x{size} bilinear antialiased, rounded to uint8"
    ),
    "quantization": "uint8 images before the feature network (real and generated alike)",
    "feature_net": net.name,
    "feature_net_input_size": int(net.input_size),
    "feature_net_resize": net.resize,
    "feature_net_weights_sha256": fingerprint(net.params),
    "feature_dim": int(net.feature_dim),
    "max_features_kept": int(config.eval.reference_max_features),
  }


def entry_name(conv: dict[str, Any]) -> str:
  size = conv["pipeline_resize"].split(" ")[0] if conv["pipeline_resize"][0].isdigit() else "native"
  digest = hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()[:10]
  name = (
    f"{conv['dataset']}-{conv['split']}-{size}-{conv['feature_net']}-n{conv['num_images']}-{digest}"
  )
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def real_features(
  config: ml_collections.ConfigDict, mesh: Mesh, net: feature_nets.FeatureNet, split: str
) -> np.ndarray:
  """Features [N, D] of every real image of `split`, in the split's order (float32)."""
  batch_sharding = shd.batch_sharding(mesh)
  extract = jax.jit(lambda p, x: net.apply(p, x)["features"], out_shardings=batch_sharding)
  params = jax.device_put(net.params, shd.replicated(mesh))
  batches = data.eval_iterator(
    _split_data_config(config, split),
    global_batch_size=int(config.eval.batch_size),
    sharding=batch_sharding,
  )
  chunks = []
  try:
    for batch in batches:
      feats = extract(params, batch["image"])  # [B, D]
      pair = multihost_utils.process_allgather((feats, batch["mask"]), tiled=True)
      chunks.append(np.asarray(pair[0])[np.asarray(pair[1]) > 0])
  finally:
    if hasattr(batches, "close"):
      batches.close()
  return np.concatenate(chunks).astype(np.float32)


def _load(path: epath.Path, conv: dict[str, Any]) -> ReferenceStats | None:
  meta, arrays = path.with_suffix(".json"), path.with_suffix(".npz")
  if not (meta.exists() and arrays.exists()):
    return None
  if json.loads(meta.read_text()) != conv:
    return None
  fix = f"delete it and {meta.name} to recompute them"
  with arrays.open("rb") as f:  # a shared cache folder: read no pickles, check every array
    z = safe_pickle.load_npz(f, str(arrays), fix)
  d = int(conv["feature_dim"])
  shapes = {"mu": (d,), "sigma": (d, d), "features": (None, d)}
  for key, shape in shapes.items():
    a = z.get(key)
    fits = a is not None and a.dtype.kind == "f" and a.ndim == len(shape)
    if not (fits and all(want in (None, got) for want, got in zip(shape, a.shape, strict=True))):
      got = "missing" if a is None else f"{a.dtype} {a.shape}"
      raise UserError(f"{arrays} holds {key} {got}, expected float {shape}; {fix}")
  mu, sigma, feats = z["mu"], z["sigma"], z["features"]
  return ReferenceStats(mu, sigma, feats, conv["num_images"], conv, str(path), cache_hit=True)


def _write(path: epath.Path, stats: ReferenceStats) -> None:
  """The arrays, then the JSON (a reader trusts an entry only once its JSON exists)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.{os.getpid()}.npz"
  with tmp.open("wb") as f:
    np.savez(f, mu=stats.mu, sigma=stats.sigma, features=stats.features)
  tmp.replace(path.with_suffix(".npz"))
  path.with_suffix(".json").write_text(json.dumps(stats.conventions, indent=2) + "\n")


def get_or_compute(
  config: ml_collections.ConfigDict, mesh: Mesh, net: feature_nets.FeatureNet, workdir: str
) -> ReferenceStats:
  """The cached entry for this config and network, computed and written on a miss."""
  split = reference_split(config)
  num_images = data.dataset_info(_split_data_config(config, split)).num_eval
  conv = conventions(config, net, num_images)
  path = epath.Path(cache_dir(config, workdir)) / entry_name(conv)
  hit = _load(path, conv)
  if hit is not None:
    return hit
  print(f"computing reference statistics {path} ({num_images} images)", file=sys.stderr)
  feats = real_features(config, mesh, net, split)  # [N, D]
  if feats.shape[0] != num_images:
    raise RuntimeError(f"read {feats.shape[0]} images of {split}, its metadata says {num_images}")
  mu, sigma = metrics.gaussian_stats(feats)
  cap = int(config.eval.reference_max_features)
  if cap and feats.shape[0] > cap:  # a fixed random subset, in the split's order
    keep = np.sort(np.random.default_rng(0).choice(feats.shape[0], cap, replace=False))
    feats = feats[keep]
  stats = ReferenceStats(mu, sigma, feats, num_images, conv, str(path), cache_hit=False)
  if jax.process_index() == 0:
    _write(path, stats)
  return stats
