"""Sample-and-score: sample quality of any task in the feature space of a configured network.

Generic over families: `Scorer.score` draws N samples with ``task.sample`` in jitted batches sharded
over the mesh (with their labels when the task is class-conditional), extracts features and logits
with the ``config.eval.feature_net`` network in the same jitted call, and compares them with the
reference statistics of real images (`research.eval.reference_stats`):

- ``fid`` (Heusel et al. 2017, eq. 6) with ``fid_n`` = N beside it (FID is biased in N);
- ``kid`` +- ``kid_std`` (Binkowski et al. 2018; unbiased MMD^2, cubic kernel);
- ``precision`` / ``recall`` (Kynkaanniemi et al. 2019, k-NN manifolds, k = eval.pr_k);
- ``inception_score`` +- std (Salimans et al. 2016) from the network's logits: for the digits
  classifier this is the "classifier score" (at most its number of classes);
- ``class_entropy_nats``: entropy of the histogram of predicted classes (log K = every class equally
  often; low = mode collapse), with ``class_fraction/<k>`` the histogram itself;
- ``confident_fraction``: the share of samples the network reads with a maximum softmax probability
  of at least ``CONFIDENT`` (0.9): a digit the classifier recognises, not a smudge between classes;
- ``label_agreement``: for class-conditional samples, the fraction classified as their label;
- ``copying_z``, ``copy_fraction``, ``nn_train_distance_median`` (+ ``_heldout``), ``copying_cells``
  and ``nn_train_n``: data-copying (Meehan et al. 2020; `research.eval.memorisation`), the samples'
  distances to their nearest training features against the held-out reference features'. The
  training features are the reference statistics of ``config.data.split``
  (`reference_stats.training_config`); ``config.eval.memorisation_cells`` (5) k-means cells, 0 =
  off; skipped, with a note, when the reference split is the training split itself.

Conventions (recorded with the reference statistics): samples must be uint8 (the Task protocol), so
generated and real images are quantised the same way before the network; the network resizes
(``FeatureNet.resize``), never this module; real images come from the data pipeline at
``config.data.image_size``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from research.errors import UserError
from research.eval import feature_nets, memorisation, metrics, reference_stats
from research.tasks.base import Task, Variables
from research.train import sharding as shd


def load_feature_net(config: ml_collections.ConfigDict) -> feature_nets.FeatureNet | None:
  """The configured feature network, or None when ``config.eval.feature_net`` is empty."""
  name = config.eval.feature_net
  if not name:
    return None
  return feature_nets.FEATURE_NETS.get(name)(config.eval)


def check_input(net: feature_nets.FeatureNet, image_shape: tuple[int, ...], what: str) -> None:
  """A network that does not resize takes only images of its own size."""
  if net.resize == "none" and tuple(image_shape[:2]) != (net.input_size, net.input_size):
    raise UserError(
      f"feature network {net.name} ({net.weights}) takes {net.input_size}x{net.input_size} images "
      f"but {what} are {image_shape[0]}x{image_shape[1]}; use a feature network trained at this "
      "size (the digits classifier: config.eval.classifier_data='offline_digits' for 8x8, or "
      "config.eval.classifier_workdir) or config.eval.feature_net=''"
    )


def class_histogram(logits: np.ndarray, num_classes: int) -> np.ndarray:
  """Fraction of samples whose argmax class is k: logits [N, K] -> [K], summing to 1."""
  predicted = np.argmax(logits, axis=1)  # [N]
  return np.bincount(predicted, minlength=num_classes)[:num_classes] / max(len(predicted), 1)


def entropy_nats(p: np.ndarray) -> float:
  """-sum p log p of a histogram (0 log 0 = 0)."""
  p = np.asarray(p, np.float64)
  nz = p[p > 0]
  return float(-np.sum(nz * np.log(nz))) + 0.0  # + 0.0: no "-0.0" for a single class


CONFIDENT = 0.9  # max softmax probability of a "confidently read" sample


def confident_fraction(logits: np.ndarray, threshold: float = CONFIDENT) -> float:
  """Share of samples whose maximum softmax probability is at least `threshold`: logits [N, K]."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  p_max = 1.0 / np.sum(np.exp(z), axis=1)  # exp(max - max) / sum exp(z - max)
  return float(np.mean(p_max >= threshold))


def label_agreement(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of conditional samples the network classifies as their conditioning label."""
  return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def feature_metrics(
  real: reference_stats.ReferenceStats,
  fake_features: np.ndarray,
  fake_logits: np.ndarray | None,
  labels: np.ndarray | None,
  eval_cfg: ml_collections.ConfigDict,
) -> dict[str, float]:
  """Every metric of generated features [N, D] (logits [N, K], labels [N]) against `real`."""
  n = fake_features.shape[0]
  mu, sigma = metrics.gaussian_stats(fake_features)
  out = {
    "fid": metrics.frechet_distance(mu, sigma, real.mu, real.sigma),
    "fid_n": float(n),
    "fid_reference_n": float(real.num_images),
  }
  subset = min(int(eval_cfg.kid_subset_size), n, real.features.shape[0])
  # Subsets as large as both sets are all the same sets: one is enough (and its std is 0).
  whole = subset == n == real.features.shape[0]
  out["kid"], out["kid_std"] = metrics.kid(
    real.features,
    fake_features,
    num_subsets=1 if whole else int(eval_cfg.kid_subsets),
    subset_size=subset,
  )
  out["kid_subset_size"] = float(subset)
  out["precision"], out["recall"] = metrics.precision_recall(
    real.features, fake_features, k=int(eval_cfg.pr_k)
  )
  if fake_logits is not None and fake_logits.shape[1] > 0:
    k = fake_logits.shape[1]
    splits = max(1, min(int(eval_cfg.is_splits), n))
    out["inception_score"], out["inception_score_std"] = metrics.inception_score(
      fake_logits, splits=splits
    )
    hist = class_histogram(fake_logits, k)  # [K]
    out["class_entropy_nats"] = entropy_nats(hist)
    out["confident_fraction"] = confident_fraction(fake_logits)
    out["class_entropy_max_nats"] = float(np.log(k))
    if k <= 100:  # a readable histogram (10 digits), not Inception's 1008 classes
      out.update({f"class_fraction/{c}": float(f) for c, f in enumerate(hist)})
    if labels is not None:
      out["label_agreement"] = label_agreement(fake_logits, labels)
  return out


@dataclasses.dataclass
class Scorer:
  """Samples, features and metrics of one experiment; jitted functions built once, reused."""

  config: ml_collections.ConfigDict
  task: Task
  mesh: Mesh
  workdir: str
  net: feature_nets.FeatureNet
  image_shape: tuple[int, int, int]
  _sample_fn: Any = None
  _compiled: Any = None
  _net_params: Any = None
  _reference: reference_stats.ReferenceStats | None = None
  _copying: Any = None  # memorisation.CopyingReference, or False when off / not measurable

  @classmethod
  def create(
    cls, config: ml_collections.ConfigDict, task: Task, mesh: Mesh, workdir: str, image_shape
  ) -> Scorer | None:
    """None when no feature network is configured; a UserError when it cannot be loaded."""
    net = load_feature_net(config)
    if net is None:
      return None
    check_input(net, image_shape, f"the {config.data.name} images")
    return cls(config, task, mesh, workdir, net, tuple(image_shape))

  @property
  def batch_size(self) -> int:
    b = int(self.config.eval.sample_batch_size)
    shd.check_batch_size(b, self.mesh, "config.eval.sample_batch_size")
    return b

  def reference(self) -> reference_stats.ReferenceStats:
    if self._reference is None:
      self._reference = reference_stats.get_or_compute(
        self.config, self.mesh, self.net, self.workdir
      )
    return self._reference

  def copying_reference(self) -> memorisation.CopyingReference | None:
    """Training features in k-means cells and the held-out features' distances to them (once);
    None when config.eval.memorisation_cells is 0 or the reference split is the training split."""
    if self._copying is None:
      self._copying = False
      cells = int(self.config.eval.get("memorisation_cells", 5))
      split = self.config.data.split
      if cells and reference_stats.reference_split(self.config) == split:
        if jax.process_index() == 0:
          print(
            f"note: memorisation metrics skipped: the reference split is the training split "
            f"{split!r}, so there is no held-out set to compare with",
            file=sys.stderr,
          )
      elif cells:
        train = reference_stats.get_or_compute(
          reference_stats.training_config(self.config), self.mesh, self.net, self.workdir
        )
        self._copying = memorisation.prepare(
          train.features,  # [n_T, D]
          self.reference().features,  # [n_P, D]
          num_cells=cells,
          min_cell=int(self.config.eval.get("memorisation_min_cell", memorisation.MIN_CELL)),
        )
    return self._copying or None

  def _params(self) -> Any:
    if self._net_params is None:
      self._net_params = jax.device_put(self.net.params, shd.replicated(self.mesh))
    return self._net_params

  def _sampler(self):
    if self._sample_fn is None:
      b, task, net = self.batch_size, self.task, self.net

      def sample_and_extract(variables: Variables, net_params: Any, key: jax.Array):
        out = task.sample(variables, key, b)
        images = out["images"]  # [b, H, W, C]
        if images.dtype != jnp.uint8:
          raise UserError(
            f"{type(task).__name__}.sample returned {images.dtype} images; the Task protocol "
            "(and the metrics' convention) needs uint8 [N, H, W, C]"
          )
        feats = net.apply(net_params, images)
        result = {"features": feats["features"], "logits": feats["logits"]}
        if "labels" in out:
          result["labels"] = out["labels"].astype(jnp.int32)
        return result

      self._sample_fn = jax.jit(sample_and_extract, out_shardings=shd.batch_sharding(self.mesh))
    return self._sample_fn

  def _compile(self, variables: Variables, rng: jax.Array):
    """The sample-and-extract executable, compiled once (the variables' structure is fixed)."""
    if self._compiled is None:
      self._compiled = self._sampler().lower(variables, self._params(), rng).compile()
    return self._compiled

  def generate(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, np.ndarray]:
    """Features, logits (and labels) of `num` samples: {name: [num, ...]} on the host.

    Batch i uses key fold_in(rng, i); the batches are dispatched before any is fetched.
    """
    params = self._params()
    fn = self._compile(variables, rng)
    keys = [jax.random.fold_in(rng, i) for i in range(-(-num // self.batch_size))]
    outs = [fn(variables, params, key) for key in keys]
    gathered = [
      {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in o.items()}
      for o in outs
    ]
    return {k: np.concatenate([g[k] for g in gathered])[:num] for k in gathered[0]}

  def score(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, float]:
    """Sample metrics of `num` samples, plus the time taken and its images/s."""
    reference = self.reference()
    copying = self.copying_reference()
    start = time.time()
    self._compile(variables, rng)
    compiled = time.time()
    out = self.generate(variables, rng, num)
    generated = time.time()
    results = feature_metrics(
      reference, out["features"], out["logits"], out.get("labels"), self.config.eval
    )
    if copying is not None:
      results.update(memorisation.copying_metrics(copying, out["features"]))
    results["compile_seconds"] = compiled - start
    results["samples_and_features_per_sec"] = num / max(generated - compiled, 1e-9)
    results["metrics_seconds"] = time.time() - generated
    return results


def note_skipped(error: UserError) -> None:
  print(f"note: sample metrics skipped: {error}", file=sys.stderr)
