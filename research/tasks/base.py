"""The seam between a model family and the shared trainer.

A family is a `Task`: it names the parts of its train state (``("model",)`` for a VAE,
``("disc", "gen")`` for a GAN, in update order), initialises their variables, computes each part's
loss, draws samples and sums its held-out metrics over one batch. The shared step
(`research.train.step`) differentiates each loss with respect to that part's parameters and applies
the part's own optimizer, so a two-player game needs no second trainer; the shared evaluation
(`research.eval.heldout`) jits `eval_sums` once, runs it over the held-out split on all devices and
hands the totals to `eval_summary`.

Variables are passed around as ``{part: {"params": ..., <other collections>: ...}}``. A loss returns
the non-parameter collections it changed (BatchNorm statistics, spectral-norm vectors) keyed by part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError

# Batches from `research.data`: "image" uint8 [B, H, W, C]; "label" int32 [B] (class), or [B, 2]
# for captioned digits ((left, right) digit, -1 = empty cell); "text" int32 [B, L] caption ids
# (with config.data.text_length); eval batches also "mask" float32 [B] (0 on padding rows).
Batch = Mapping[str, jax.Array]
Variables = dict[str, dict[str, Any]]  # part -> {"params": pytree, "batch_stats": pytree, ...}
Metrics = dict[str, jax.Array]  # name -> scalar


class Task(Protocol):
  """What a model family provides to the trainer (see `research/tasks/vae.py` for an example)."""

  parts: tuple[str, ...]  # the named parts of the train state, in update order
  ema_parts: tuple[str, ...]  # the parts that keep an EMA when train.ema_decay > 0

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    """Variables of every part, from an example batch (shapes only matter)."""

  def loss(
    self,
    part: str,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    train: bool,
    step: jax.Array,
  ) -> tuple[jax.Array, Metrics, Variables]:
    """Scalar loss of `part` to minimise, metrics, and the updated non-param collections.

    The shared step passes ``train=True`` and ``step`` (int32 [], completed steps: for schedules
    and regularisers applied every k steps, such as lazy R1).
    """

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """``{"images": uint8 [num, H, W, C], optional "labels": int32 [num]}``; jittable."""

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Sums over the real rows of one held-out batch (``mask`` > 0), and their number as
    ``"count"``; jittable. Any array shape sums (a code histogram, say)."""

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    """The held-out metrics from `eval_sums` summed over the whole split."""

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Family-specific pictures for sample mode, ``{file name: uint8 [H, W, C]}``; jittable."""


class ModelTask:
  """Defaults for a task whose state is one part, "model", that keeps an EMA when asked: held-out
  metrics are the means of the summed values, and sample mode writes no extra pictures."""

  parts: ClassVar[tuple[str, ...]] = ("model",)
  ema_parts: ClassVar[tuple[str, ...]] = ("model",)

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    return means(totals)

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    return {}


def masked_sums(per_example: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  """Per-example values [B] -> their sums over real rows, plus the row count under "count"."""
  sums = {k: jnp.sum(v * mask) for k, v in per_example.items()}
  sums["count"] = jnp.sum(mask)
  return sums


def means(totals: dict[str, np.ndarray]) -> dict[str, float]:
  """Every summed scalar divided by the row count, plus ``num_examples``."""
  n = float(totals["count"])
  out = {k: float(v) / n for k, v in totals.items() if k != "count" and np.ndim(v) == 0}
  out["num_examples"] = n
  return out


class UnknownConfigKeys(UserError):
  """Keys of a config section that the task does not take (a typo, or a retired option)."""

  def __init__(self, message: str, keys: list[str]):
    super().__init__(message)
    self.keys = keys


def options(
  cls: type, section: Any, *, computed: tuple[str, ...] = (), strict: bool = True
) -> dict:
  """The fields of dataclass `cls` that config `section` sets, converted to the field's type.

  Fields the section leaves out keep the dataclass's defaults (the one place defaults live).
  ``computed`` names what the factory sets itself: fields it computes and config keys it reads
  (a GAN's ``loss``, say); both are left out. With ``strict``, any other key of the section that is
  no field (a typo) is a one-line error listing the fields.
  """
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in computed}
  given = {k: v for k, v in (section.items() if section is not None else ()) if k not in computed}
  given.pop("name", None)
  unknown = sorted(set(given) - set(fields))
  if strict and unknown:
    raise UnknownConfigKeys(
      f"unknown config keys {unknown} for {cls.__name__}; it takes {sorted(fields)}", unknown
    )
  return {k: _convert(v, fields[k].default) for k, v in given.items() if k in fields}


def _convert(value: Any, default: Any) -> Any:
  """Lists become tuples (JSON and ConfigDict round trips) and ints become floats where the field
  is a float; nothing else is coerced."""
  if isinstance(value, list):
    return tuple(value)
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value
