"""What the project knows about accelerator chips: dense bf16 peak and memory per device.

The peaks are the vendors' data-sheet figures for dense bf16 matmuls (MaxText and NVIDIA quote MFU
against these; `../shared/reference/performance_anchors.md` section 0). TPU device kinds are matched
exactly (as `jax.Device.device_kind` spells them; "TPU v5" is v5p, "TPU v5 lite" is v5e); GPU kinds
by the model name inside them ("NVIDIA H100 80GB HBM3" is an H100).
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # what people call it
  peak_bf16_tflops: float  # dense, per device
  memory_bytes: int  # HBM per device


TPU_CHIPS = {
  "TPU v4": Chip("v4", 275.0, 32 * GIB),
  "TPU v5 lite": Chip("v5e", 197.0, 16 * GIB),
  "TPU v5": Chip("v5p", 459.0, 95 * GIB),
  "TPU v6 lite": Chip("v6e", 918.0, 32 * GIB),
}
GPU_CHIPS = {  # substring of device_kind -> chip; more specific names first
  "H200": Chip("H200", 989.0, 141 * GIB),
  "H100": Chip("H100", 989.0, 80 * GIB),
  "A100": Chip("A100", 312.0, 80 * GIB),
}


def chip(device_kind: str) -> Chip | None:
  """The known chip of a `jax.Device.device_kind`, or None (CPUs, unknown accelerators)."""
  if device_kind in TPU_CHIPS:
    return TPU_CHIPS[device_kind]
  return next((c for key, c in GPU_CHIPS.items() if key in device_kind), None)


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
  """Dense bf16 TFLOP/s per device: `override` when > 0 (``config.train.peak_tflops``), else the
  table's figure, else None (MFU is then not reported)."""
  if override > 0:
    return float(override)
  known = chip(device_kind)
  return known.peak_bf16_tflops if known else None
