"""Optimizers and learning-rate schedules from config, one per part of the train state.

``config.optim.<part>`` holds: ``name`` (adam | adamw | sgd | adagrad), ``learning_rate``, ``b1``,
``b2``, ``eps``, ``weight_decay``, ``grad_clip_norm`` (0 = off), ``schedule`` (constant | cosine |
linear), ``warmup_steps``, ``hold_steps`` (constant after the warm-up before a cosine or linear decay
starts: pix2pix/CycleGAN's n epochs at the base rate, then n of linear decay to 0), ``decay_steps``
(0 = the run's ``train.num_steps``; counted from the start of the run), ``end_lr_factor``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from research.errors import UserError

_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "adam": lambda lr, c: optax.adam(
    lr, b1=c.get("b1", 0.9), b2=c.get("b2", 0.999), eps=c.get("eps", 1e-8)
  ),
  "adamw": lambda lr, c: optax.adamw(
    lr,
    b1=c.get("b1", 0.9),
    b2=c.get("b2", 0.999),
    eps=c.get("eps", 1e-8),
    weight_decay=c.get("weight_decay", 0.0),
  ),
  "sgd": lambda lr, c: optax.sgd(lr, momentum=c.get("momentum", None) or None),
  "adagrad": lambda lr, c: optax.adagrad(lr),
}


def make_schedule(c: Any, num_steps: int) -> optax.Schedule:
  lr = float(c.learning_rate)
  warmup = int(c.get("warmup_steps", 0))
  hold = int(c.get("hold_steps", 0))
  decay_steps = int(c.get("decay_steps", 0)) or num_steps
  end = lr * float(c.get("end_lr_factor", 0.0))
  kind = c.get("schedule", "constant")
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(
      lr, max(decay_steps - warmup - hold, 1), alpha=end / lr if lr else 0.0
    )
  elif kind == "linear":
    main = optax.linear_schedule(lr, end, max(decay_steps - warmup - hold, 1))
  else:
    raise UserError(f"unknown schedule {kind!r} in config.optim; use constant, cosine or linear")
  if hold:
    main = optax.join_schedules([optax.constant_schedule(lr), main], [hold])
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(
  c: Any, num_steps: int, updates_per_step: int = 1
) -> optax.GradientTransformation:
  """`updates_per_step` > 1 (a critic updated k times per step): the schedule still counts
  training steps, so warm-up and decay take the same number of steps for every part."""
  name = c.get("name", "adam")
  if name not in _OPTIMIZERS:
    raise UserError(f"unknown optimizer {name!r} in config.optim; known: {', '.join(_OPTIMIZERS)}")
  if name != "adamw" and c.get("weight_decay", 0.0):
    raise UserError(
      f"config.optim weight_decay={c.weight_decay} has no effect with {name!r}; use name='adamw'"
    )
  schedule = make_schedule(c, num_steps)
  k = max(int(updates_per_step), 1)
  per_update = schedule if k == 1 else (lambda count: schedule(count // k))
  chain = []
  if c.get("grad_clip_norm", 0.0):
    chain.append(optax.clip_by_global_norm(float(c.grad_clip_norm)))
  chain.append(_OPTIMIZERS[name](per_update, c))
  return optax.chain(*chain)


def make_optimizers(
  optim_config: Any,
  parts: tuple[str, ...],
  num_steps: int,
  updates_per_step: dict[str, int] | None = None,
) -> dict[str, optax.GradientTransformation]:
  missing = [p for p in parts if p not in optim_config]
  if missing:
    raise UserError(
      f"config.optim has no entry for part(s) {missing}; this task trains {list(parts)}"
    )
  updates = updates_per_step or {}
  return {p: make_optimizer(optim_config[p], num_steps, updates.get(p, 1)) for p in parts}
