"""``nearest_neighbours.png``: generated samples beside their nearest training images.

The picture of data-copying (`research.eval.memorisation` gives the numbers): a row per sample,
the sample, a gap, then its ``NUM_NEIGHBOURS`` nearest training images, nearest first. Nearest in
the feature space of ``config.eval.feature_net``, over every image of the training split
(``config.data.split``) read through the data pipeline as the reference statistics read it (one
pass, the pipeline's resize, uint8 images into the network); distances in float64 on the host.
``--mode=sample`` writes it next to ``samples.png`` for the first ``config.eval.nearest_neighbours``
samples (16; 0 = no picture) when a feature network is configured.
"""

from __future__ import annotations

import sys

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from research import data
from research.errors import UserError
from research.eval import feature_nets, memorisation, reference_stats, sample_and_score
from research.eval import images as image_io
from research.train import sharding as shd

NUM_SAMPLES = 16  # rows of the picture (config.eval.nearest_neighbours)
NUM_NEIGHBOURS = 4  # training images per row
FILENAME = "nearest_neighbours.png"


def nearest_training_images(
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  net: feature_nets.FeatureNet,
  queries: np.ndarray,
  k: int = NUM_NEIGHBOURS,
) -> tuple[np.ndarray, np.ndarray]:
  """The k training images nearest in feature space to each uint8 query image [q, H, W, C]:
  (images uint8 [q, k, H, W, C], feature distances float64 [q, k]), nearest first."""
  batch_sharding = shd.batch_sharding(mesh)
  params = jax.device_put(net.params, shd.replicated(mesh))
  features = lambda p, x: net.apply(p, x)["features"]
  query_feats = np.asarray(jax.jit(features)(params, np.asarray(queries)), np.float64)  # [q, D]
  extract = jax.jit(features, out_shardings=batch_sharding)
  q = query_feats.shape[0]
  best_d = np.full((q, k), np.inf)  # [q, k]: squared distances, ascending
  best = np.zeros((q, k, *queries.shape[1:]), np.uint8)  # [q, k, H, W, C]
  batches = data.eval_iterator(
    reference_stats._split_data_config(config, config.data.split),
    global_batch_size=int(config.eval.batch_size),
    sharding=batch_sharding,
  )
  try:
    for batch in batches:
      gathered = multihost_utils.process_allgather(
        (extract(params, batch["image"]), batch["image"], batch["mask"]), tiled=True
      )
      keep = np.asarray(gathered[2]) > 0
      feats = np.asarray(gathered[0], np.float64)[keep]  # [b, D]
      images = np.asarray(gathered[1])[keep]  # [b, H, W, C]
      if not len(feats):
        continue
      d2 = memorisation.sq_distances(query_feats, feats)  # [q, b]
      pooled = np.concatenate([best_d, d2], axis=1)  # [q, k + b]
      order = np.argsort(pooled, axis=1, kind="stable")[:, :k]  # [q, k]
      for i in range(q):  # per query: no [q, k + b, H, W, C] copy of the batch
        best[i] = np.stack([best[i, j] if j < k else images[j - k] for j in order[i]])
      best_d = np.take_along_axis(pooled, order, axis=1)
  finally:
    if hasattr(batches, "close"):
      batches.close()
  return best, np.sqrt(best_d)


def picture(samples: np.ndarray, neighbours: np.ndarray, pad: int = 2) -> np.ndarray:
  """Samples [q, H, W, C] in a column, a gap, their neighbours [q, k, H, W, C] in rows: uint8."""
  q, k = neighbours.shape[:2]
  left = image_io.grid(samples, ncols=1, pad=pad)  # [q (H + pad) + pad, W + 2 pad, C]
  right = image_io.grid(neighbours.reshape(q * k, *neighbours.shape[2:]), ncols=k, pad=pad)
  gap = np.full((left.shape[0], max(pad, samples.shape[2] // 2), left.shape[2]), 255, np.uint8)
  return np.concatenate([left, gap, right], axis=1)


def write(
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  image_shape: tuple[int, ...],
  samples: np.ndarray,
  workdir: str | epath.Path,
) -> str | None:
  """Writes <workdir>/nearest_neighbours.png for the first samples [N, H, W, C]; its path, or None
  without a feature network (or config.eval.nearest_neighbours = 0, or a network that cannot be
  loaded: then a note says why)."""
  num = min(int(config.eval.get("nearest_neighbours", NUM_SAMPLES)), samples.shape[0])
  if num <= 0:
    return None
  try:
    net = sample_and_score.load_feature_net(config)
    if net is None:
      return None
    sample_and_score.check_input(net, image_shape, f"the {config.data.name} images")
  except UserError as e:
    if jax.process_index() == 0:
      print(f"note: {FILENAME} skipped: {e}", file=sys.stderr)
    return None
  shown = np.asarray(samples[:num])
  neighbours, _ = nearest_training_images(config, mesh, net, shown)
  path = epath.Path(workdir) / FILENAME
  if jax.process_index() == 0:
    image = picture(shown, neighbours)
    image_io.save_png(image, path, scale=max(1, 512 // max(image.shape[:2])))
  return str(path)
