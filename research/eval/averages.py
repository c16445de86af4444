"""Averages over a held-out split whose batches are padded (``mask`` 0 on padding rows)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from research.errors import UserError


def masked_sums(per_example: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  """Per-example values [B] -> their sums over real rows, plus the row count under "count"."""
  sums = {k: jnp.sum(v * mask) for k, v in per_example.items()}
  sums["count"] = jnp.sum(mask)
  return sums


def split_means(
  batch_sums: Callable[[dict[str, jax.Array], int], dict[str, jax.Array]],
  batches: Iterable[dict[str, jax.Array]],
) -> tuple[dict[str, float], float]:
  """Means over the split of what `batch_sums(batch, index)` sums, and the number of examples.

  Sums accumulate on the devices; the host fetches them once at the end.
  """
  totals = None
  for i, batch in enumerate(batches):
    out = batch_sums(batch, i)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise UserError("the eval split is empty; set config.data.eval_split")
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  n = totals.pop("count")
  if not n:
    raise UserError("the eval split is empty; set config.data.eval_split")
  return {k: v / n for k, v in totals.items()}, n
