r"""DALL-E stage 2: training-step tokens/s and utilisation, and the sampler's tokens/s; one JSON line.

  python -m benchmarks.dalle --config=experiments/dalle_coco.py --batch_size=32 --steps=10
  python -m benchmarks.dalle --config=experiments/dalle_digits.py:runlocal --image_shape=32,64,1 \
      --image_vocab=128 --batch_size=32 --steps=5

Synthetic data already on the devices, no TensorFlow, no tokenizer or dVAE files: captions are
random ids, and the image tokens come from the parameter-free patch tokenizer (the mean of each
f x f patch, f = config.task.patch_size, quantised to --image_vocab levels), so the step is the
real shared step of the transformer (`research.train.step`, jitted over the mesh, state donated)
minus the dVAE encoder. The sampler is the task's KV-cached `lax.fori_loop` (`--sample_batch`
captions, every image position).

FLOPs, the standard way (Kaplan et al. 2020; PaLM appendix B), per training sequence of S tokens:
6 * P * S + 12 * depth * width * S^2, with P the parameters outside the embedding tables (the two
output heads included) and the attention term for the full S x S score and value matmuls (forward
and backward; not halved for causality, and the sparse masks are computed densely). Utilisation
divides the achieved FLOP/s by the peak (--peak_tflops, else the table of research/train/accelerators.py).
XLA's own count of the compiled step is reported beside it.
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

# The training-step harness defines the shared flags: --config, --steps, --image_shape,
# --peak_tflops.
from benchmarks import train_step as harness  # noqa: E402

_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch; default config.batch_size.")
_IMAGE_VOCAB = flags.DEFINE_integer(
  "image_vocab", None, "dVAE codebook size; default patch_levels."
)
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 8, "Captions per sampler call; 0 = skip.")

EMBEDDINGS = ("text_embed", "image_embed", "text_pos", "row_embed", "col_embed")


def build_task(config, image_shape, image_vocab):
  from research.registry import build_module
  from research.tasks import dalle_sampling
  from research.tasks.dalle import DalleTask
  from research.tasks.dalle_support import PatchTokens

  tokens = PatchTokens(image_shape, config.task.patch_size, image_vocab)
  text_length = config.data.text_length
  fields = {
    **config.model.to_dict(),
    "text_vocab": config.data.text_vocab_size + text_length,
    "text_length": text_length,
    "image_vocab": image_vocab,
    "grid": tokens.grid_shape,
  }
  return DalleTask(
    model=build_module(fields),
    tokens=tokens,
    caption_dropout=config.task.caption_dropout,
    captions=("a caption",),
    caption_ids=np.zeros((1, text_length), np.int32),
    sampling=dalle_sampling.SamplingConfig(temperature=1.0),
    image_shape=tuple(image_shape),
  )


def flops_per_sequence(params, model) -> tuple[float, int]:
  """(6 P S + 12 depth width S^2, P) with P the non-embedding parameters."""
  p = sum(
    x.size
    for path, x in jax.tree_util.tree_leaves_with_path(params)
    if not any(getattr(k, "key", None) in EMBEDDINGS for k in path)
  )
  s = model.layout.seq_len
  return 6.0 * p * s + 12.0 * model.depth * model.width * s * s, int(p)


def main(argv):
  del argv
  from research.train import sharding as shd
  from research.train import state as state_lib
  from research.train.optim import make_optimizers

  jax.config.update("jax_threefry_partitionable", True)
  config = harness._CONFIG.value
  batch_size = _BATCH.value or config.batch_size
  if harness._IMAGE_SHAPE.value:
    image_shape = tuple(int(x) for x in harness._IMAGE_SHAPE.value.split(","))
  else:
    image_shape = (config.data.image_size, config.data.image_size, 1)
  image_vocab = _IMAGE_VOCAB.value or config.task.patch_levels
  task = build_task(config, image_shape, image_vocab)
  model = task.model
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
  shd.check_batch_size(batch_size, mesh, "--batch_size")
  optimizers = make_optimizers(config.optim, task.parts, config.train.num_steps)
  use_ema = config.train.ema_decay > 0
  make = state_lib.state_factory(task, optimizers, image_shape, False, 0, use_ema)
  state, shardings = state_lib.init_sharded(make, mesh, config.mesh.fsdp_min_size)
  rng = np.random.default_rng(0)
  bs = shd.batch_sharding(mesh)
  batch = jax.device_put(
    {
      "image": rng.integers(0, 256, (batch_size, *image_shape), dtype=np.uint8),
      "text": rng.integers(0, model.text_vocab, (batch_size, model.text_length), dtype=np.int32),
    },
    bs,
  )
  state, metrics, compile_s, xla_flops, step_s = harness.time_step(
    task, optimizers, config, mesh, state, shardings, batch, harness._STEPS.value, warmup=2
  )

  per_seq, p_nonembed = flops_per_sequence(state.parts["model"].params, model)
  flops = per_seq * batch_size
  device = jax.devices()[0]
  peak = harness.peak_tflops(device)
  achieved = flops / step_s / 1e12
  out = {
    "config": f"dalle/{config.model.attention}",
    "device": device.device_kind,
    "devices": jax.device_count(),
    "batch_size": batch_size,
    "seq_len": model.layout.seq_len,
    "dtype": config.model.dtype,
    "params": sum(state_lib.param_count(state).values()),
    "params_non_embedding": p_nonembed,
    "compile_s": round(compile_s, 2),
    "step_ms": round(step_s * 1e3, 2),
    "tokens_per_s": round(batch_size * model.layout.seq_len / step_s, 1),
    "model_tflop_per_step": round(flops / 1e12, 4),
    "xla_tflop_per_step": round(xla_flops / 1e12, 4) if xla_flops else None,
    "tflops_per_s": round(achieved, 3),
    "peak_tflops_per_device": peak,
    "utilisation": round(achieved / (peak * jax.device_count()), 4) if peak else None,
    "loss": float(jax.device_get(metrics["model/loss"])),
  }
  if _SAMPLE_BATCH.value:
    n = _SAMPLE_BATCH.value
    text = jax.device_put(np.asarray(batch["text"])[:n], bs)
    gen = jax.jit(task._generate, out_shardings=bs)
    params = state.parts["model"].params
    t0 = time.perf_counter()
    jax.block_until_ready(gen(params, text, jax.random.key(0)))
    out["sample_compile_and_first_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    jax.block_until_ready(gen(params, text, jax.random.key(1)))
    sample_s = time.perf_counter() - t0
    out["sample_batch"] = n
    out["sample_s"] = round(sample_s, 3)
    out["sampler_image_tokens_per_s"] = round(n * model.layout.num_image / sample_s, 1)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
