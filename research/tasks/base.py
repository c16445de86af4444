"""The seam between a model family and the shared trainer.

A family is a `Task`: it names the parts of its train state (``("model",)`` for a VAE,
``("disc", "gen")`` for a GAN, in update order), initialises their variables, and computes each part's
loss. The shared step (`research.train.step`) differentiates that loss with respect to the part's
parameters and applies the part's own optimizer, so a two-player game needs no second trainer.

Variables are passed around as ``{part: {"params": ..., <other collections>: ...}}``. A loss returns
the non-parameter collections it changed (BatchNorm statistics, spectral-norm vectors) keyed by part.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import jax

Batch = Mapping[str, jax.Array]  # "image": uint8 [B, H, W, C]; "label": int32 [B]; eval: "mask" [B]
Variables = dict[str, dict[str, Any]]  # part -> {"params": pytree, "batch_stats": pytree, ...}
Metrics = dict[str, jax.Array]  # name -> scalar


class Task(Protocol):
  """What a model family provides to the trainer (see `research/tasks/vae.py` for an example)."""

  parts: tuple[str, ...]
  # Optional: the parts whose parameters keep an EMA when ``train.ema_decay > 0`` (all when the
  # task does not say); sampling and evaluation use EMA weights only for these.
  # ema_parts: tuple[str, ...]

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

    `step` (int32 [], completed steps) is for regularisers applied every k steps (lazy R1).
    """

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """``{"images": uint8 [num, H, W, C], optional "labels": int32 [num]}``; jittable."""

  def evaluate(
    self, variables: Variables, batches: Iterator[Batch], rng: jax.Array
  ) -> dict[str, float]:
    """Held-out metrics (name -> value); `batches` carry a ``mask`` for padding rows."""

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Family-specific pictures for sample mode, ``{file name: uint8 [H, W, C]}``; jittable."""


def only_params(variables: Variables) -> dict[str, Any]:
  return {part: v["params"] for part, v in variables.items()}


def collections_of(variables: Variables) -> Variables:
  """Everything but the parameters, per part."""
  return {part: {k: c for k, c in v.items() if k != "params"} for part, v in variables.items()}
