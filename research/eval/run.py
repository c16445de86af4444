"""Sample and eval modes: restore the workdir's latest checkpoint, then write files a user reads.

``--mode=sample`` writes ``<workdir>/samples.npz`` (``images`` uint8 [N, H, W, C]; ``labels`` when
conditional) and ``<workdir>/samples.png``, plus the family's own pictures (reconstructions,
interpolations). ``--mode=eval`` writes ``<workdir>/eval.json`` and prints it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from research import data
from research.eval import images as image_io
from research.train import setup
from research.train import sharding as shd


def _eval_batches(exp: setup.Experiment):
  cfg = exp.config
  return data.eval_iterator(
    cfg.data, global_batch_size=cfg.eval.batch_size, sharding=shd.batch_sharding(exp.mesh)
  )


def evaluate_state(exp: setup.Experiment, state: Any) -> dict[str, float]:
  """The task's held-out metrics for `state` (EMA parameters when ``config.sample.use_ema``)."""
  variables = state.variables(use_ema=exp.config.sample.use_ema)
  rng = jax.random.fold_in(jax.random.key(exp.config.seed), 2_000_003)
  return {k: float(v) for k, v in exp.task.evaluate(variables, _eval_batches(exp), rng).items()}


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  exp = setup.build(config, workdir, require_checkpoint=True)
  exp.checkpointer.close()
  results = {"step": exp.restored_step, **evaluate_state(exp, exp.state)}
  if jax.process_index() == 0:
    text = json.dumps(results, indent=2, sort_keys=True)
    (epath.Path(workdir) / "eval.json").write_text(text + "\n")
    print(text)
  return results


def run_sample(config: ml_collections.ConfigDict, workdir: str) -> dict[str, np.ndarray]:
  exp = setup.build(config, workdir, require_checkpoint=True)
  exp.checkpointer.close()
  variables = exp.state.variables(use_ema=config.sample.use_ema)
  rng = jax.random.fold_in(jax.random.key(config.seed), 3_000_017)
  n = config.sample.num_samples
  sample_fn = jax.jit(
    lambda v, r: exp.task.sample(v, r, n), out_shardings=shd.batch_sharding(exp.mesh)
  )
  out = {
    k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
    for k, v in sample_fn(variables, rng).items()
  }
  written = []
  if jax.process_index() == 0:
    path = epath.Path(workdir)
    with (path / "samples.npz").open("wb") as f:
      np.savez(f, **out)
    image_io.save_grid(out["images"], path / "samples.png")
    written = [str(path / "samples.npz"), str(path / "samples.png")]
  batch = next(iter(_eval_batches(exp)))
  artifact_fn = jax.jit(exp.task.artifacts, out_shardings=shd.replicated(exp.mesh))
  pictures = artifact_fn(variables, batch, jax.random.fold_in(rng, 1))
  if jax.process_index() == 0:
    for name, picture in pictures.items():
      image_io.save_png(np.asarray(picture), epath.Path(workdir) / name, scale=2)
      written.append(str(epath.Path(workdir) / name))
  if jax.process_index() == 0:
    print("wrote " + ", ".join(written), file=sys.stderr)
  return out
