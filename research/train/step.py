"""The one training step, shared by every family.

For each part of the state, in the task's order, the step computes that part's loss and gradient
with respect to its own parameters (the other parts held fixed), applies the part's optimizer and
updates its EMA. A later part sees the earlier parts' new parameters, so a GAN's generator step sees
the discriminator it just updated. A part can take several updates per step
(``train.part_steps``, e.g. WGAN critics; a ``lax.scan`` over the repetitions, so the update is
compiled once) and gradients can be accumulated over micro-batches (``train.grad_accum``) inside
the jitted function.

Repeated updates and the batch: by default every repetition of a part sees the whole batch. With
``split_repeats`` (``train.split_repeats``) a part updated n > 1 times per step splits the batch into
n strided chunks (chunk i = rows i, i + n, ..., so each spans all devices) and repetition i uses
chunk i, as WGAN-GP's critic draws a fresh real batch for each of its iterations (Gulrajani et al.
2017, Algorithm 1, lines 2-4); parts with one update still see the whole batch. Accumulation then
splits each chunk into ``grad_accum`` micro-batches, so the batch must divide by n * grad_accum.

Randomness: the run's one key is folded with the step, the part, the repetition and the
micro-batch. All random draws have global shapes, so with ``jax_threefry_partitionable`` the numbers
do not depend on how many devices share the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.tasks.base import Batch, Metrics, Task
from research.train import sharding as shd
from research.train.state import PartState, TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  ema_decay: float = 0.0  # 0 = no EMA
  grad_accum: int = 1  # micro-batches per step
  part_steps: tuple[tuple[str, int], ...] = ()  # (part, updates per step); default 1 each
  split_repeats: bool = False  # repetition i of an n-update part takes chunk i of n of the batch
  # Unrolls the scans over repetitions and micro-batches: only for counting FLOPs (XLA's cost
  # analysis counts a loop body once, whatever its trip count); the step run keeps the scans.
  unroll_scans: bool = False

  def updates_of(self, part: str) -> int:
    return dict(self.part_steps).get(part, 1)

  def chunks_of(self, part: str) -> int:
    """How many pieces the batch is split into for `part`'s updates (1: each sees all of it)."""
    n = self.updates_of(part)
    return n if self.split_repeats and n > 1 else 1

  @property
  def has_scans(self) -> bool:
    return self.grad_accum > 1 or any(n > 1 for _, n in self.part_steps)


def _split_microbatches(batch: Batch, n: int, mesh: Mesh | None) -> Batch:
  """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, ... so each spans all devices."""

  def split(x: jax.Array) -> jax.Array:
    b = x.shape[0]
    y = x.reshape(b // n, n, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, shd.BATCH_AXES)))
    return y

  return jax.tree.map(split, batch)


def _part_grads(
  task: Task,
  part: str,
  state: TrainState,
  batch: Batch,
  rng: jax.Array,
  grad_accum: int,
  mesh: Mesh | None,
  unroll: bool = False,
) -> tuple[jax.Array, Any, Metrics, dict[str, Any]]:
  """Mean loss, gradient, metrics and updated collections of one part over the micro-batches."""
  variables = state.variables()

  def loss_fn(params, collections, micro, key):
    v = {
      p: {"params": params if p == part else variables[p]["params"], **collections[p]}
      for p in collections
    }
    loss, metrics, updated = task.loss(part, v, micro, key, train=True, step=state.step)
    new_collections = {p: {**collections[p], **updated.get(p, {})} for p in collections}
    return loss, (metrics, new_collections)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  collections = {p: s.collections for p, s in state.parts.items()}
  params = state.parts[part].params
  if grad_accum == 1:
    (loss, (metrics, collections)), grads = grad_fn(params, collections, batch, rng)
    return loss, grads, metrics, collections

  micro = _split_microbatches(batch, grad_accum, mesh)

  def body(carry, xs):
    loss_sum, grad_sum, metric_sum, colls = carry
    mb, i = xs
    (loss, (metrics, colls)), grads = grad_fn(params, colls, mb, jax.random.fold_in(rng, i))
    add = lambda a, b: jax.tree.map(jnp.add, a, b)
    return (loss_sum + loss, add(grad_sum, grads), add(metric_sum, metrics), colls), None

  (_, (m0, _)), _ = jax.eval_shape(
    grad_fn, params, collections, jax.tree.map(lambda x: x[0], micro), rng
  )
  zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
  init = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params), zeros(m0), collections)
  xs = (micro, jnp.arange(grad_accum))
  (loss, grads, metrics, collections), _ = jax.lax.scan(body, init, xs, unroll=unroll)
  scale = lambda t: jax.tree.map(lambda x: x / grad_accum, t)
  return loss / grad_accum, scale(grads), scale(metrics), collections


def make_train_step(
  task: Task,
  optimizers: dict[str, optax.GradientTransformation],
  config: StepConfig,
  mesh: Mesh | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure step function; `research.train.loop` jits it over the mesh with donated state."""

  def update(
    state: TrainState, part_index: int, part: str, rep: jax.Array | int, batch: Batch
  ) -> tuple[TrainState, Metrics]:
    """One update of `part` on `batch` (its rows for this repetition); its metrics."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    key = jax.random.fold_in(jax.random.fold_in(step_key, part_index), rep)
    loss, grads, metrics, collections = _part_grads(
      task, part, state, batch, key, config.grad_accum, mesh, config.unroll_scans
    )
    ps = state.parts[part]
    updates, opt_state = optimizers[part].update(grads, ps.opt_state, ps.params)
    params = optax.apply_updates(ps.params, updates)
    ema = ps.ema_params
    if config.ema_decay > 0 and jax.tree.leaves(ema):  # parts without an EMA keep {}
      d = config.ema_decay
      ema = jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, ema, params)
    parts = dict(state.parts)
    parts[part] = PartState(params, opt_state, ema, collections[part])
    for other in parts:
      if other != part:
        parts[other] = parts[other].replace(collections=collections[other])
    grad_norm = optax.tree.norm(grads)
    nonfinite_step, nonfinite_metric = state.nonfinite_step, state.nonfinite_metric
    for i, value in enumerate((loss, grad_norm)):
      bad = (nonfinite_step < 0) & ~jnp.isfinite(value)
      nonfinite_metric = jnp.where(bad, 2 * part_index + i, nonfinite_metric)
      nonfinite_step = jnp.where(bad, state.step, nonfinite_step)
    state = state.replace(
      parts=parts, nonfinite_step=nonfinite_step, nonfinite_metric=nonfinite_metric
    )
    out = {f"{part}/{k}": v for k, v in metrics.items()}
    out[f"{part}/loss"] = loss
    out[f"{part}/grad_norm"] = grad_norm
    out[f"{part}/param_norm"] = optax.tree.norm(params)
    out[f"{part}/update_norm"] = optax.tree.norm(updates)
    return state, out

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    all_metrics: Metrics = {}
    for part_index, part in enumerate(task.parts):
      n = config.updates_of(part)
      if n == 1:
        state, metrics = update(state, part_index, part, 0, batch)
      elif n > 1:
        # A scan over the repetitions: one compiled update, not n (a critic's k steps).
        chunks = _split_microbatches(batch, n, mesh) if config.chunks_of(part) > 1 else None

        def body(carry, xs, part_index=part_index, part=part):
          rep, chunk = xs  # chunk [B / n, ...]: this repetition's own rows, or None
          return update(carry, part_index, part, rep, batch if chunk is None else chunk)

        xs = (jnp.arange(n), chunks)
        state, stacked = jax.lax.scan(body, state, xs, unroll=config.unroll_scans)
        metrics = jax.tree.map(lambda m: m[-1], stacked)  # the part's last update in this step
      else:
        continue
      all_metrics.update(metrics)
    return state.replace(step=state.step + 1), all_metrics

  return train_step


def jit_train_step(
  task: Task,
  optimizers: dict[str, optax.GradientTransformation],
  config: StepConfig,
  mesh: Mesh,
  shardings: Any,
) -> Any:
  """The step as every run compiles it: jitted over the mesh, the state donated, the batch split
  over all devices, the metrics replicated (`research.train.loop`, `benchmarks/`)."""
  return jax.jit(
    make_train_step(task, optimizers, config, mesh),
    donate_argnums=0,
    in_shardings=(shardings, shd.batch_sharding(mesh)),
    out_shardings=(shardings, shd.replicated(mesh)),
  )
