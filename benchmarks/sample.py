r"""Times any experiment's `sample` (e.g. DDIM-50 for diffusion) with random weights; one JSON line.

  python benchmarks/sample.py --config=experiments/ddpm_cifar10.py:bf16 --num=256 \
      --image_shape=32,32,3 --num_classes=10 --config.sample.steps=50

Sampling is jitted and sharded over the mesh's devices (the batch of noise is split like a training
batch). Weights are the freshly initialised ones: speed does not depend on their values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

# The training-step harness defines the shared flags: --config, --image_shape, --num_classes.
from benchmarks import train_step as harness  # noqa: E402

_NUM = flags.DEFINE_integer("num", 64, "Images per sampling call (divisible by the devices).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls after one warm-up call.")


def main(argv):
  del argv
  from research.train import setup
  from research.train import sharding as shd
  from research.train import state as state_lib
  from research.train.optim import make_optimizers

  config = harness._CONFIG.value
  info = harness.dataset_info(config)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
  shd.check_batch_size(_NUM.value, mesh, "--num")
  task = setup.build_task(config, info)
  optimizers = make_optimizers(config.optim, task.parts, config.train.num_steps)
  make = state_lib.state_factory(
    task, optimizers, info.image_shape, info.num_classes is not None, config.seed, False
  )
  state, _ = state_lib.init_sharded(make, mesh, config.mesh.fsdp_min_size)
  variables = state.variables()
  n = _NUM.value
  fn = jax.jit(lambda v, r: task.sample(v, r, n), out_shardings=shd.batch_sharding(mesh))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(variables, jax.random.key(0)))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(_REPEATS.value):
    out = fn(variables, jax.random.key(i + 1))
  jax.block_until_ready(out)
  per_call = (time.perf_counter() - t0) / _REPEATS.value
  sampling = getattr(task, "sampling", None)  # a diffusion task's resolved sampler settings
  sample_cfg = {}
  if dataclasses.is_dataclass(sampling):
    from research.tasks import diffusion_sampling

    keys = ("sampler", "steps", "eta", "spacing", "guidance_scale")
    sample_cfg = {k: v for k, v in dataclasses.asdict(sampling).items() if k in keys}
    guided = task.num_classes is not None and sampling.guidance_scale != 0
    sample_cfg["objective"] = type(task.objective).__name__
    sample_cfg["nfe_per_image"] = diffusion_sampling.evaluations(sampling, task.objective, guided)
  print(
    json.dumps(
      {
        "config": f"{config.task.name}/{config.model.name}",
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "num": n,
        **sample_cfg,
        "dtype": config.model.get("dtype", "float32"),
        "compile_and_first_s": round(first, 3),
        "seconds_per_call": round(per_call, 4),
        "images_per_s": round(n / per_call, 2),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
