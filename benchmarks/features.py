r"""Feature-extraction throughput of a feature network (FID InceptionV3 by default); one JSON line.

  python benchmarks/features.py --num=256 --image_shape=32,32,3 --dtype=bfloat16
  python benchmarks/features.py --num=8 --repeats=1        # a CPU smoke run

uint8 images [num, H, W, C] on the devices go through the network's jitted `apply` (resize to
299x299, forward, pool_3 features and logits) with the batch split over all devices and the
parameters replicated, as the evaluation runs it. Weights come from --weights,
$RESEARCH_INCEPTION_WEIGHTS, or are random when neither names a file: speed does not depend on
their values.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

_NET = flags.DEFINE_string("net", "inception_v3", "Feature network name (FEATURE_NETS).")
_NUM = flags.DEFINE_integer("num", 64, "Images per call (divisible by the device count).")
_IMAGE_SHAPE = flags.DEFINE_string("image_shape", "32,32,3", "H,W,C of the uint8 input images.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after one warm-up call.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_RESIZE = flags.DEFINE_string("resize", "bilinear", "Inception resize: bilinear or tf1_bilinear.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Converted Inception .npz; default random weights.")


def main(argv):
  del argv
  from research.eval import feature_nets
  from research.eval import inception_weights as iw
  from research.train import sharding as shd

  eval_config = ml_collections.ConfigDict(
    {
      "inception_weights": _WEIGHTS.value or os.environ.get(iw.ENV_VAR) or "",
      "inception_dtype": _DTYPE.value,
      "inception_resize": _RESIZE.value,
      "inception_allow_unofficial": True,
    }
  )
  if _NET.value == "inception_v3" and not eval_config.inception_weights:
    net = feature_nets.inception_v3(eval_config, random_weights=True)
  else:
    net = feature_nets.FEATURE_NETS.get(_NET.value)(eval_config)
  mesh = shd.make_mesh()
  shd.check_batch_size(_NUM.value, mesh, "--num")
  params = jax.device_put(net.params, shd.replicated(mesh))
  shape = (_NUM.value, *(int(x) for x in _IMAGE_SHAPE.value.split(",")))
  fn = jax.jit(net.apply, out_shardings=shd.batch_sharding(mesh))
  make = jax.jit(
    lambda key: jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8),
    out_shardings=shd.batch_sharding(mesh),
  )
  batches = [make(jax.random.key(i)) for i in range(_REPEATS.value + 1)]
  t0 = time.perf_counter()
  jax.block_until_ready(fn(params, batches[0]))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(_REPEATS.value):
    out = fn(params, batches[i + 1])
  jax.block_until_ready(out)
  per_call = (time.perf_counter() - t0) / _REPEATS.value
  print(
    json.dumps(
      {
        "net": net.name,
        "weights": "random" if net.weights == "random" else "file",
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "num": _NUM.value,
        "image_shape": list(shape[1:]),
        "input_size": net.input_size,
        "resize": net.resize,
        "dtype": _DTYPE.value,
        "compile_and_first_s": round(first, 3),
        "seconds_per_call": round(per_call, 4),
        "images_per_s": round(_NUM.value / per_call, 2),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
