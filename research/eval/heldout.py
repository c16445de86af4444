"""The task's held-out metrics, computed by shared code for every family.

A task gives `eval_sums(variables, batch, rng)`, a jittable function of one eval batch returning
sums over its real rows (``mask`` > 0) and their ``count``; `HeldOut` jits it once, runs it over the
held-out split (batches sharded over all devices, batch i with key ``fold_in(rng, i)``), adds the
sums up on the devices, fetches them once, and hands the totals to ``task.eval_summary``.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.tasks.base import Batch, Task, Variables


def split_totals(sums_fn, variables: Variables, batches: Iterable[Batch], rng: jax.Array):
  """Sums of `sums_fn(variables, batch, fold_in(rng, i))` over the batches, as NumPy arrays."""
  totals = None
  for i, batch in enumerate(batches):
    out = sums_fn(variables, batch, jax.random.fold_in(rng, i))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise UserError("the eval split is empty; set config.data.eval_split")
  totals = {k: np.asarray(v) for k, v in jax.device_get(totals).items()}
  if not float(totals.get("count", 1)):
    raise UserError("the eval split is empty; set config.data.eval_split")
  return totals


class HeldOut:
  """A task's held-out metrics; its sums function is compiled once and reused by every call."""

  def __init__(self, task: Task):
    self.task = task
    self._sums = jax.jit(task.eval_sums)

  def __call__(
    self, variables: Variables, batches: Iterable[Batch], rng: jax.Array
  ) -> dict[str, float]:
    totals = split_totals(self._sums, variables, batches, rng)
    return {k: float(v) for k, v in self.task.eval_summary(totals).items()}
