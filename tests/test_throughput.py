"""FLOPs per step counted once per run (scans unrolled for the count), TFLOP/s and MFU in the
progress line, and the chip table they use."""

from __future__ import annotations

import re

import jax
import numpy as np
import optax
import pytest

from research.train import accelerators
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.step import StepConfig, jit_train_step
from research.train.throughput import Throughput, cost_flops, step_flops
from tests.run_helpers import run_main
from tests.toy_tasks import RegressionTask, TwoPlayerTask


def _flops(task, config: StepConfig, batch: int = 32) -> tuple[float, float]:
  """(step_flops, XLA's count of the compiled step as run) of `task` under `config`."""
  mesh = shd.make_mesh()
  opts = {p: optax.adam(1e-3) for p in task.parts}
  make = state_lib.state_factory(task, opts, (2, 2, 1), True, 0, False)
  state, shardings = state_lib.init_sharded(make, mesh)
  rng = np.random.default_rng(0)
  data = {
    "image": rng.integers(0, 256, (batch, 2, 2, 1), dtype=np.uint8),
    "label": rng.integers(0, 10, (batch,), dtype=np.int32),
    "point": rng.normal(size=(batch, 2)).astype(np.float32),
  }
  data = jax.device_put(data, shd.batch_sharding(mesh))
  lowered = jit_train_step(task, opts, config, mesh, shardings).lower(state, data)
  counted = step_flops(lowered, task, opts, config, mesh, shardings, state, data)
  return counted, cost_flops(lowered)


def test_micro_batches_and_repeated_updates_are_all_counted():
  one, _ = _flops(RegressionTask(), StepConfig())
  accum, as_scanned = _flops(RegressionTask(), StepConfig(grad_accum=4))
  assert accum == pytest.approx(one, rel=0.25)  # the same examples, in 4 micro-batches
  assert as_scanned < 0.5 * accum  # what XLA alone reports: one micro-batch's work
  gan, _ = _flops(TwoPlayerTask(), StepConfig())
  critic3, _ = _flops(TwoPlayerTask(), StepConfig(part_steps=(("disc", 3),)))
  assert critic3 > 1.5 * gan


def test_throughput_is_flops_per_device_times_steps_per_second():
  t = Throughput(flops_per_step=8e12, num_devices=8, peak_tflops=4.0)
  assert t.metrics(2.0) == {"tflops_per_device": pytest.approx(2.0), "mfu": pytest.approx(0.5)}
  assert Throughput(8e12, 8, None).metrics(2.0) == {"tflops_per_device": pytest.approx(2.0)}
  assert Throughput(None, 8, 4.0).metrics(2.0) == {}


@pytest.mark.parametrize(
  "kind, peak",
  [
    ("TPU v5 lite", 197.0),
    ("TPU v5", 459.0),  # v5p: matched exactly, not as a prefix of "TPU v5 lite"
    ("TPU v4", 275.0),
    ("TPU v6 lite", 918.0),
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("cpu", None),
  ],
)
def test_known_chips_have_their_datasheet_peaks(kind, peak):
  assert accelerators.peak_tflops(kind) == peak
  assert accelerators.peak_tflops(kind, override=123.0) == 123.0


def test_the_progress_line_shows_tflops_per_device_and_mfu(tmp_path, data_dir):
  proc = run_main(
    str(tmp_path / "run"),
    data_dir,
    "--config.train.num_steps=4",
    "--config.train.peak_tflops=0.001",
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
  assert lines and all(re.search(r"[0-9.e+-]+ TFLOP/s/device MFU [0-9.]+%", x) for x in lines)
