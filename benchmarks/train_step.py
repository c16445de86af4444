r"""Times any experiment's training step on synthetic on-device data; prints one JSON line.

  python benchmarks/train_step.py --config=experiments/vae_mnist.py --steps=20
  python benchmarks/train_step.py --config=experiments/vae_mnist.py --config.batch_size=512 \
      --config.model.dtype=bfloat16 --image_shape=28,28,1

The step is the real one (`research.train.step`, jitted over the mesh with donated state); only the
input pipeline is replaced by random uint8 images already on the devices, so the numbers measure the
model and the step, and the benchmark runs where TensorFlow is not installed (pass --image_shape and
--num_classes then, or the dataset's metadata is read with tfds). FLOPs come from XLA's cost analysis
of the compiled step; utilisation divides the achieved FLOP/s by the device's dense bf16 peak
(--peak_tflops, or a table of known devices).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
_IMAGE_SHAPE = flags.DEFINE_string("image_shape", None, "H,W,C; default: the dataset's.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Label classes; default: the dataset's.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Dense bf16 peak per device, TFLOP/s.")


def peak_tflops(device: jax.Device) -> float | None:
  from research.train import accelerators

  return accelerators.peak_tflops(device.device_kind, _PEAK.value or 0.0)


def dataset_info(config):
  from research import data

  if _IMAGE_SHAPE.value:
    shape = tuple(int(x) for x in _IMAGE_SHAPE.value.split(","))
    return data.DatasetInfo(shape, _NUM_CLASSES.value, 0, 0)
  return data.dataset_info(config.data)


def synthetic_batch(info, batch_size: int, sharding) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (batch_size, *info.image_shape), dtype=np.uint8)}
  if info.input_shape is not None:  # paired / unpaired translation data
    batch["input"] = rng.integers(0, 256, (batch_size, *info.input_shape), dtype=np.uint8)
  if info.num_classes:
    batch["label"] = rng.integers(0, info.num_classes, (batch_size,), dtype=np.int32)
  return jax.device_put(batch, sharding)


def time_step(task, optimizers, config, mesh, state, shardings, batch, steps: int, warmup: int = 3):
  """Compiles the shared step for `state`/`batch` and times it.

  Returns (state, metrics, compile seconds, XLA FLOPs per step over all devices, seconds per step).
  """
  from research.train.loop import step_config
  from research.train.step import jit_train_step
  from research.train.throughput import step_flops

  cfg = step_config(config)
  step = jit_train_step(task, optimizers, cfg, mesh, shardings)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  # The loop's count (research.train.throughput): all devices, critic repeats and micro-batches.
  flops = step_flops(lowered, task, optimizers, cfg, mesh, shardings, state, batch) or 0.0
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  return state, metrics, compile_s, flops, (time.perf_counter() - t0) / steps


def benchmark(config, info, steps: int) -> dict:
  from research.train import setup
  from research.train import sharding as shd
  from research.train import state as state_lib
  from research.train.optim import make_optimizers

  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
  shd.check_batch_size(config.batch_size, mesh)
  task = setup.build_task(config, info)
  setup.check_split_repeats(config, mesh.devices.size)
  optimizers = make_optimizers(
    config.optim, task.parts, config.train.num_steps, config.train.part_steps.to_dict()
  )
  make = state_lib.state_factory(
    task,
    optimizers,
    info.image_shape,
    info.num_classes is not None,
    config.seed,
    config.train.ema_decay > 0,
    input_shape=info.input_shape,
  )
  state, shardings = state_lib.init_sharded(make, mesh, config.mesh.fsdp_min_size)
  batch_sharding = shd.batch_sharding(mesh)
  batch = synthetic_batch(info, config.batch_size, batch_sharding)
  state, metrics, compile_s, flops, step_s = time_step(
    task, optimizers, config, mesh, state, shardings, batch, steps
  )
  device = jax.devices()[0]
  peak = peak_tflops(device)
  achieved = flops / step_s / 1e12 if flops else None
  return {
    "config": config.task.name + "/" + config.model.name,
    "device": device.device_kind,
    "devices": jax.device_count(),
    "batch_size": config.batch_size,
    "dtype": config.model.get("dtype", "float32"),
    "params": sum(state_lib.param_count(state).values()),
    "compile_s": round(compile_s, 3),
    "step_ms": round(step_s * 1e3, 3),
    "images_per_s": round(config.batch_size / step_s, 1),
    "xla_gflop_per_step": round(flops / 1e9, 3) if flops else None,
    "tflops_per_s": round(achieved, 3) if achieved else None,
    "utilisation": round(achieved / (peak * jax.device_count()), 4) if achieved and peak else None,
    "loss": {k: float(v) for k, v in jax.device_get(metrics).items() if k.endswith("/loss")},
  }


def main(argv):
  del argv
  config = _CONFIG.value
  print(json.dumps(benchmark(config, dataset_info(config), _STEPS.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
