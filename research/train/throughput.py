"""FLOPs of the compiled step, counted once per run, and the achieved TFLOP/s and MFU they give.

The count is XLA's cost analysis of the step's lowered program (before SPMD partitioning, so all
devices together), divided by the device count. XLA counts a loop body once whatever its trip
count, so a step with scans (``train.grad_accum`` > 1, ``train.part_steps`` > 1) is lowered a
second time with them unrolled for the count; the run keeps the scans. These are XLA's FLOPs of the
program as written (recomputation under remat included), not a hand count of the model's matmuls.
MFU divides the achieved FLOP/s per device by the device's dense bf16 peak
(`research.train.accelerators`, or ``config.train.peak_tflops``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from research.train import accelerators
from research.train.step import StepConfig, jit_train_step, make_train_step


def cost_flops(lowered_or_compiled: Any) -> float | None:
  """The ``flops`` of XLA's cost analysis, or None when the backend gives none."""
  try:
    cost = lowered_or_compiled.cost_analysis()
  except Exception:  # some backends implement no cost analysis
    return None
  cost = cost[0] if isinstance(cost, list) and cost else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return flops if flops > 0 else None


def step_flops(
  lowered: Any,
  task: Any,
  optimizers: Any,
  config: StepConfig,
  mesh: Any,
  shardings: Any,
  state: Any,
  batch: Any,
) -> float | None:
  """FLOPs of one training step, all devices together; `lowered` is the run's lowered step.

  Where the lowering's backend gives no cost analysis (compile-only TPU devices), the step is
  lowered again for the default backend, unsharded: the count of the whole program is the same.
  """
  unrolled = dataclasses.replace(config, unroll_scans=True)
  if not config.has_scans:
    flops = cost_flops(lowered)
  else:
    step = jit_train_step(task, optimizers, unrolled, mesh, shardings)
    flops = cost_flops(step.lower(state, batch))
  if flops is None:
    step = jax.jit(make_train_step(task, optimizers, unrolled, None))
    flops = cost_flops(step.lower(*jax.tree.map(_unsharded, (state, batch))))
  return flops


def _unsharded(x: Any) -> Any:
  return jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x


@dataclasses.dataclass(frozen=True)
class Throughput:
  """Achieved FLOP/s per device from steps/s; MFU where the device's peak is known."""

  flops_per_step: float | None  # all devices together
  num_devices: int
  peak_tflops: float | None  # per device

  @classmethod
  def create(cls, flops_per_step: float | None, peak_override: float = 0.0) -> Throughput:
    kind = jax.devices()[0].device_kind
    peak = accelerators.peak_tflops(kind, peak_override)
    return cls(flops_per_step, jax.device_count(), peak)

  def metrics(self, steps_per_sec: float) -> dict[str, float]:
    """``tflops_per_device`` and ``mfu`` (a fraction) at `steps_per_sec`; {} when unknown."""
    if not self.flops_per_step or steps_per_sec <= 0:
      return {}
    tflops = self.flops_per_step / self.num_devices * steps_per_sec / 1e12
    out = {"tflops_per_device": tflops}
    if self.peak_tflops:
      out["mfu"] = tflops / self.peak_tflops
    return out
