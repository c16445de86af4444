"""Console progress and TensorBoard scalars/images in the workdir (process 0 only)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from research.eval import images as image_io


class MetricsWriter:
  """Writes scalars and image grids to ``<workdir>/tensorboard`` and progress lines to stdout."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._writer = None
    if not enabled:
      return
    try:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter

      self._writer = EventFileWriter(f"{workdir}/tensorboard")
    except ImportError:
      print("tensorboard is not installed: scalars go to the console only", file=sys.stderr)

  def _add(self, step: int, values: list[Any]) -> None:
    if self._writer is None:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2

    summary = summary_pb2.Summary(value=values)
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    from tensorboard.compat.proto import summary_pb2

    values = [
      summary_pb2.Summary.Value(tag=k, simple_value=float(v))
      for k, v in scalars.items()
      if np.isfinite(v)  # e.g. a timestep bucket that this batch did not sample
    ]
    self._add(step, values)

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """uint8 [H, W, C] image."""
    if not self.enabled:
      return
    from tensorboard.compat.proto import summary_pb2

    h, w, c = image.shape
    encoded = summary_pb2.Summary.Image(
      height=h, width=w, colorspace=c, encoded_image_string=image_io.png_bytes(image)
    )
    self._add(step, [summary_pb2.Summary.Value(tag=tag, image=encoded)])

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def format_progress(
  step: int,
  num_steps: int,
  metrics: Mapping[str, float],
  steps_per_sec: float,
  batch_size: int,
  throughput: Mapping[str, float] | None = None,
) -> str:
  eta = (num_steps - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
  # The console shows each part's headline metrics; norms and finer breakdowns (``part/a/b``,
  # e.g. loss by timestep) go to TensorBoard only.
  shown = " ".join(
    f"{k}={v:.4g}"
    for k, v in sorted(metrics.items())
    if not k.endswith("_norm") and k.count("/") <= 1
  )
  speed = f"{steps_per_sec:.2f} steps/s {steps_per_sec * batch_size:.1f} img/s"
  throughput = throughput or {}
  if "tflops_per_device" in throughput:
    speed += f" {throughput['tflops_per_device']:.3g} TFLOP/s/device"
  if "mfu" in throughput:
    speed += f" MFU {100 * throughput['mfu']:.1f}%"
  return f"step {step}/{num_steps} {shown} | {speed} ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
