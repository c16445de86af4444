"""Data-copying (memorisation): are samples closer to the training set than fresh data is?

Meehan, Chaudhuri & Dasgupta 2020, "A Non-Parametric Test to Detect Data-Copying in Generative
Models" (AISTATS; arXiv:2004.05675; reference code github.com/casey-meehan/data-copying). Three
samples in one feature space: the training set T [n_T, D], a held-out sample P_n [n, D] of the
data distribution that the model never saw, and generated samples Q_m [m, D]. With
d_T(x) = min_{t in T} ||x - t|| the distance to the nearest training point, a model that copies
puts its samples closer to T than the held-out points are: d_T(Q_m) is stochastically smaller
than d_T(P_n).

- The global test Z_U (the reference code's `Zu`): the Mann-Whitney statistic of the two
  distance samples, U = sum_{y in Q_m} sum_{x in P_n} 1[d_T(y) > d_T(x)] (+ 1/2 per tie),
  Z-scored under the null hypothesis d_T(Q_m) ~ d_T(P_n):
  Z_U = (U - mn/2) / sqrt(mn (m + n + 1) / 12). Z_U << 0 is data-copying, Z_U >> 0 underfitting
  (samples far from every training point).
- The C_T test (the reference code's `C_T`): a model can copy in one region of the space and
  underfit in another, which cancels in Z_U. The space is partitioned into k cells by
  k-means on T; in each cell pi, Z_U(pi) compares the distances of the cell's held-out and
  generated points to the cell's training points T_pi; then
      C_T(P_n, Q_m) = sum_{pi in Pi_tau} P_n(pi) Z_U(pi) / sum_{pi in Pi_tau} P_n(pi),
  where P_n(pi) is the share of held-out points in pi and Pi_tau the cells holding enough
  generated points, Q_m(pi) >= tau, with tau = 20 / m in the paper's experiments (at least 20
  generated points, so the normal approximation of U holds; the reference code keeps
  Q_m(pi) > tau). Reported as ``copying_z``.

Departures, all documented where they are made: cells also need ``min_cell`` held-out points
(the normal approximation needs both samples; the reference code raises on a cell without them),
the variance of U carries the standard tie correction (exact copies tie at distance 0; it is the
paper's formula when there are no ties), and no continuity correction is applied.

Beside C_T (`copying_metrics`): ``copy_fraction``, the share of samples closer to their nearest
training point than the 1st percentile of the held-out points' nearest-training distances (about
0.01 without copying, 1 for a model that outputs its training set); the medians of d_T over the
samples and over the held-out points; ``copying_cells``, the number of cells in Pi_tau.

Pure NumPy in float64. Distances use ||a||^2 - 2 a.b + ||b||^2 on features centred on the training
mean (less cancellation for near-copies), in row blocks of at most `block_bytes` per distance
matrix, never the full [m, n_T] matrix at once. k-means (k-means++ seeding, Lloyd iterations) has
a fixed seed: the cells, and so every number here, are deterministic.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from research.errors import UserError

BLOCK_BYTES = 1 << 27  # 128 MiB per float64 distance block
MIN_CELL = 20  # tau * m of the paper's experiments: at least 20 generated points in a cell
COPY_QUANTILE = 0.01  # copy_fraction: closer than this quantile of the held-out distances


def _as_features(x: np.ndarray | jax.Array, name: str) -> np.ndarray:
  a = np.asarray(x, np.float64)
  if a.ndim != 2 or a.shape[0] < 1:
    raise UserError(f"{name} must be features [N >= 1, D], got shape {a.shape}")
  if not np.all(np.isfinite(a)):
    raise UserError(f"{name} has NaN or inf features; check the images fed to the feature network")
  return a


def sq_norms(x: np.ndarray) -> np.ndarray:
  """[N, D] -> [N]."""
  return np.einsum("nd,nd->n", x, x)


def sq_distances(
  a: np.ndarray, b: np.ndarray, a_sq: np.ndarray | None = None, b_sq: np.ndarray | None = None
) -> np.ndarray:
  """Squared Euclidean distances [n, m] of a [n, D] and b [m, D], float64, clipped at 0."""
  a_sq = sq_norms(a) if a_sq is None else a_sq
  b_sq = sq_norms(b) if b_sq is None else b_sq
  return np.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)


def _rows(n_cols: int, block_bytes: int) -> int:
  return max(1, block_bytes // (8 * max(n_cols, 1)))


def nearest_distances(
  queries: np.ndarray,
  train: np.ndarray,
  query_cells: np.ndarray | None = None,
  train_cells: np.ndarray | None = None,
  block_bytes: int = BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray | None]:
  """d_T of each query [m, D] to train [n_T, D]: (distance [m], distance within its cell [m]).

  The second is min over the training points of the query's own cell (T_pi of C_T), None when no
  cells are given. Euclidean, float64, in blocks of queries.
  """
  q, t = np.asarray(queries, np.float64), np.asarray(train, np.float64)
  t_sq = sq_norms(t)  # [n_T]
  nearest = np.empty(q.shape[0])  # [m]
  in_cell = None if query_cells is None else np.empty(q.shape[0])  # [m]
  rows = _rows(t.shape[0], block_bytes // 2)  # two [rows, n_T] blocks with cells
  for i in range(0, q.shape[0], rows):
    d2 = sq_distances(q[i : i + rows], t, b_sq=t_sq)  # [rows, n_T]
    nearest[i : i + rows] = d2.min(axis=1)
    if in_cell is not None:
      same = query_cells[i : i + rows, None] == train_cells[None, :]  # [rows, n_T]
      in_cell[i : i + rows] = np.where(same, d2, np.inf).min(axis=1)
  return np.sqrt(nearest), None if in_cell is None else np.sqrt(in_cell)


def nearest_indices(
  queries: np.ndarray, train: np.ndarray, k: int, block_bytes: int = BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
  """The k nearest training points of each query: (indices [m, k], distances [m, k]), nearest
  first."""
  q, t = np.asarray(queries, np.float64), np.asarray(train, np.float64)
  k = min(k, t.shape[0])
  t_sq = sq_norms(t)
  idx, dist = np.empty((q.shape[0], k), np.int64), np.empty((q.shape[0], k))
  rows = _rows(t.shape[0], block_bytes)
  for i in range(0, q.shape[0], rows):
    d2 = sq_distances(q[i : i + rows], t, b_sq=t_sq)  # [rows, n_T]
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]  # [rows, k], unordered
    part_d = np.take_along_axis(d2, part, axis=1)
    order = np.argsort(part_d, axis=1, kind="stable")
    idx[i : i + rows] = np.take_along_axis(part, order, axis=1)
    dist[i : i + rows] = np.sqrt(np.take_along_axis(part_d, order, axis=1))
  return idx, dist


def assign_cells(
  x: np.ndarray, centroids: np.ndarray, block_bytes: int = BLOCK_BYTES
) -> np.ndarray:
  """The nearest centroid [k, D] of each row of x [N, D]: int64 [N]."""
  x = np.asarray(x, np.float64)
  c_sq = sq_norms(centroids)
  out = np.empty(x.shape[0], np.int64)
  rows = _rows(centroids.shape[0], block_bytes)
  for i in range(0, x.shape[0], rows):
    out[i : i + rows] = np.argmin(sq_distances(x[i : i + rows], centroids, b_sq=c_sq), axis=1)
  return out


def kmeans(
  x: np.ndarray, k: int, seed: int = 0, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
  """k-means of x [N, D]: (centroids [k, D], cell of each row [N]); deterministic for a seed.

  k-means++ seeding (Arthur & Vassilvitskii 2007), then Lloyd iterations until no row changes cell
  (or `max_iter`). An emptied cell is re-seeded with the row farthest from its centroid. The paper
  partitions the space with k-means on the training set (sklearn's KMeans in its experiments).
  """
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  if not 1 <= k <= n:
    raise UserError(f"k-means with {k} cells of {n} points; use 1 <= cells <= points")
  rng = np.random.default_rng(seed)
  centroids = np.empty((k, x.shape[1]))
  centroids[0] = x[rng.integers(n)]
  closest = sq_distances(x, centroids[:1])[:, 0]  # [N]: squared distance to the nearest seed
  for j in range(1, k):
    total = closest.sum()
    p = closest / total if total > 0 else None  # all points identical: uniform
    centroids[j] = x[rng.choice(n, p=p)]
    closest = np.minimum(closest, sq_distances(x, centroids[j : j + 1])[:, 0])
  labels = np.full(n, -1, np.int64)
  for _ in range(max_iter):
    new = assign_cells(x, centroids)
    if np.array_equal(new, labels):
      break
    labels = new
    counts = np.bincount(labels, minlength=k)  # [k]
    sums = np.zeros_like(centroids)
    np.add.at(sums, labels, x)
    for j in range(k):
      if counts[j]:
        centroids[j] = sums[j] / counts[j]
      else:  # re-seed an empty cell with the point worst served by its centroid
        far = np.argmax(np.sum((x - centroids[labels]) ** 2, axis=1))
        centroids[j], labels[far] = x[far], j
  return centroids, assign_cells(x, centroids)


def mann_whitney_z(samples: np.ndarray, heldout: np.ndarray) -> tuple[float, float]:
  """(U, Z_U) of the distances of generated [m] against held-out [n] points: the paper's Z_U.

  U = sum_{i, j} 1[samples_i > heldout_j] + 1/2 1[samples_i = heldout_j], from midranks of the
  pooled sample: U = R_samples - m (m + 1) / 2 (scipy.stats.mannwhitneyu's U of its first
  argument). Z_U = (U - mn/2) / sigma with sigma^2 = mn/12 ((N + 1) - sum_ties (t^3 - t) /
  (N (N - 1))), N = m + n: the paper's mn (m + n + 1) / 12 without ties, tie-corrected (copies
  tie at distance 0), no continuity correction. 0 when every distance is the same.
  """
  y, x = np.asarray(samples, np.float64).ravel(), np.asarray(heldout, np.float64).ravel()
  m, n = y.size, x.size
  if m == 0 or n == 0:
    raise UserError(f"Mann-Whitney U of {m} and {n} values; both samples need points")
  pooled = np.concatenate([y, x])  # [N]
  _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
  midranks = np.cumsum(counts) - (counts - 1) / 2.0  # of each distinct value, 1-based
  u = float(midranks[inverse[:m]].sum() - m * (m + 1) / 2.0)
  big_n = m + n
  ties = float(np.sum(counts.astype(np.float64) ** 3 - counts))
  var = m * n / 12.0 * ((big_n + 1) - ties / (big_n * (big_n - 1))) if big_n > 1 else 0.0
  if var <= 0:
    return u, 0.0
  return u, float((u - m * n / 2.0) / np.sqrt(var))


def c_t(
  heldout_distances: np.ndarray,
  heldout_cells: np.ndarray,
  sample_distances: np.ndarray,
  sample_cells: np.ndarray,
  num_cells: int,
  min_cell: int = MIN_CELL,
) -> tuple[float, np.ndarray, np.ndarray]:
  """The paper's C_T(P_n, Q_m): (statistic, Z_U per cell [k], kept cells Pi_tau [k] bool).

  Distances are each point's distance to the training points of its own cell. Z_U per cell
  compares the cell's generated and held-out distances; the average over the cells with at least
  `min_cell` generated points (Q_m(pi) >= tau, tau = min_cell / m) and, departing from the paper
  for the normal approximation, at least `min_cell` held-out points, weighted by the held-out
  share P_n(pi). NaN when no cell qualifies (too few samples: see the kept cells).
  """
  n = heldout_distances.shape[0]
  p_counts = np.bincount(heldout_cells, minlength=num_cells)[:num_cells]  # [k]
  q_counts = np.bincount(sample_cells, minlength=num_cells)[:num_cells]  # [k]
  kept = (q_counts >= min_cell) & (p_counts >= min_cell)  # Pi_tau: [k]
  z = np.zeros(num_cells)  # [k]; 0 where not computed (the reference code's convention)
  for c in np.flatnonzero(kept):
    z[c] = mann_whitney_z(
      sample_distances[sample_cells == c], heldout_distances[heldout_cells == c]
    )[1]
  if not kept.any():
    return float("nan"), z, kept
  weights = p_counts[kept] / n  # P_n(pi)
  return float(np.sum(weights * z[kept]) / np.sum(weights)), z, kept


@dataclasses.dataclass(frozen=True)
class CopyingReference:
  """The training set's cells and the held-out set's distances: computed once, reused per score."""

  centre: np.ndarray  # float64 [D]: the training mean, subtracted from every feature
  train: np.ndarray  # float64 [n_T, D], centred
  centroids: np.ndarray  # float64 [k, D], centred
  train_cells: np.ndarray  # int64 [n_T]
  heldout_cells: np.ndarray  # int64 [n_P]
  heldout_nearest: np.ndarray  # float64 [n_P]: d_T
  heldout_in_cell: np.ndarray  # float64 [n_P]: distance to the training points of its cell
  min_cell: int

  @property
  def num_cells(self) -> int:
    return self.centroids.shape[0]


def prepare(
  train: np.ndarray | jax.Array,
  heldout: np.ndarray | jax.Array,
  num_cells: int = 5,
  min_cell: int = MIN_CELL,
  seed: int = 0,
  block_bytes: int = BLOCK_BYTES,
) -> CopyingReference:
  """The reference of `copying_metrics` for training [n_T, D] and held-out [n_P, D] features."""
  t, p = _as_features(train, "training features"), _as_features(heldout, "held-out features")
  if t.shape[1] != p.shape[1]:
    raise UserError(f"training and held-out features of widths {t.shape[1]} and {p.shape[1]}")
  centre = t.mean(axis=0)  # [D]
  t, p = t - centre, p - centre
  centroids, train_cells = kmeans(t, min(int(num_cells), t.shape[0]), seed=seed)
  heldout_cells = assign_cells(p, centroids)
  nearest, in_cell = nearest_distances(p, t, heldout_cells, train_cells, block_bytes)
  return CopyingReference(
    centre, t, centroids, train_cells, heldout_cells, nearest, in_cell, int(min_cell)
  )


def copying_metrics(
  reference: CopyingReference, samples: np.ndarray | jax.Array, block_bytes: int = BLOCK_BYTES
) -> dict[str, float]:
  """Data-copying metrics of generated features [m, D] against `reference` (see the module doc).

  copying_z: C_T (negative = copying; without copying about normal with a standard deviation
  of 1/sqrt(k) or more, k the cells kept; absent when no cell has enough samples);
  copying_cells: the cells in it; copy_fraction: share of samples with d_T below the 1st
  percentile of the held-out d_T; nn_train_distance_median (samples) and
  nn_train_distance_median_heldout: median d_T; nn_train_n: the training points behind d_T.
  """
  q = _as_features(samples, "generated features")
  if q.shape[1] != reference.train.shape[1]:
    width = reference.train.shape[1]
    raise UserError(f"generated features of width {q.shape[1]}, the training set's are {width}")
  q = q - reference.centre
  cells = assign_cells(q, reference.centroids, block_bytes)
  nearest, in_cell = nearest_distances(
    q, reference.train, cells, reference.train_cells, block_bytes
  )
  z, _, kept = c_t(
    reference.heldout_in_cell,
    reference.heldout_cells,
    in_cell,
    cells,
    reference.num_cells,
    reference.min_cell,
  )
  threshold = np.quantile(reference.heldout_nearest, COPY_QUANTILE)
  out = {} if np.isnan(z) else {"copying_z": z}  # no cell qualified: no statistic (JSON has no NaN)
  return {
    **out,
    "copying_cells": float(kept.sum()),
    "copy_fraction": float(np.mean(nearest < threshold)),
    "nn_train_distance_median": float(np.median(nearest)),
    "nn_train_distance_median_heldout": float(np.median(reference.heldout_nearest)),
    "nn_train_n": float(reference.train.shape[0]),
  }


def data_copying(
  train: np.ndarray | jax.Array,
  heldout: np.ndarray | jax.Array,
  samples: np.ndarray | jax.Array,
  num_cells: int = 5,
  min_cell: int = MIN_CELL,
) -> dict[str, float]:
  """`copying_metrics` of samples [m, D] given training [n_T, D] and held-out [n_P, D] features."""
  return copying_metrics(prepare(train, heldout, num_cells, min_cell), samples)
