r"""Times the dVAE tokenizer's encoder (argmax codes, `DVAETask.encode_tokens`); prints one JSON line.

  python benchmarks/tokenizer.py --config=experiments/dvae_imagenet64.py --image_shape=64,64,3 \
      --batch=512
  python benchmarks/tokenizer.py --config=experiments/dvae_mnist.py:runlocal --image_shape=28,28,1

The encode is jitted over all devices with the batch sharded over the mesh, on random uint8 images
already on the devices (no input pipeline, no TensorFlow). Weights are freshly initialised: speed
does not depend on their values. Also reports the decode (tokens -> uint8 pixels) throughput.
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

# The training-step harness defines the shared flags: --config, --image_shape, --num_classes.
from benchmarks import train_step as harness  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 256, "Images per encode call (divisible by the devices).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls after one warm-up call.")


def _time(fn, *args, repeats: int) -> tuple[float, float]:
  """(compile + first call seconds, seconds per call)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return first, (time.perf_counter() - t0) / repeats


def main(argv):
  del argv
  from research.train import setup
  from research.train import sharding as shd
  from research.train import state as state_lib
  from research.train.optim import make_optimizers

  config = harness._CONFIG.value
  info = harness.dataset_info(config)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
  shd.check_batch_size(_BATCH.value, mesh, "--batch")
  task = setup.build_task(config, info)
  optimizers = make_optimizers(config.optim, task.parts, config.train.num_steps)
  make = state_lib.state_factory(task, optimizers, info.image_shape, False, config.seed, False)
  state, _ = state_lib.init_sharded(make, mesh, config.mesh.fsdp_min_size)
  variables = state.variables()
  sharding = shd.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (_BATCH.value, *info.image_shape), dtype=np.uint8)
  images = jax.device_put(images, sharding)
  encode = jax.jit(task.encode_tokens, out_shardings=sharding)
  enc_first, enc_s = _time(encode, variables, images, repeats=_REPEATS.value)
  tokens = encode(variables, images)
  decode = jax.jit(task.decode_tokens, out_shardings=sharding)
  dec_first, dec_s = _time(decode, variables, tokens, repeats=_REPEATS.value)
  print(
    json.dumps(
      {
        "config": f"{config.task.name}/{config.model.name}",
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "dtype": config.model.get("dtype", "float32"),
        "batch": _BATCH.value,
        "image_shape": list(info.image_shape),
        "grid_shape": list(task.grid_shape),
        "vocab_size": task.vocab_size,
        "encode_compile_s": round(enc_first, 3),
        "encode_ms": round(enc_s * 1e3, 3),
        "encode_images_per_s": round(_BATCH.value / enc_s, 1),
        "decode_ms": round(dec_s * 1e3, 3),
        "decode_images_per_s": round(_BATCH.value / dec_s, 1),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
