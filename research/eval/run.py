"""Sample and eval modes: restore the workdir's latest checkpoint, then write files a user reads.

``--mode=sample`` writes ``<workdir>/samples.npz`` (``images`` uint8 [N, H, W, C]; ``labels`` when
conditional) and ``<workdir>/samples.png``, plus the family's own pictures (reconstructions,
interpolations). ``--mode=eval`` writes ``<workdir>/eval.json`` and prints it: the task's own
held-out metrics (likelihoods) and, when ``config.eval.feature_net`` names a feature network, the
sample metrics of `research.eval.sample_and_score` on ``config.eval.num_samples`` samples (FID with
``fid_n``, KID, precision/recall, classifier score, class histogram and entropy, label agreement).
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
from research.errors import UserError
from research.eval import images as image_io
from research.eval import sample_and_score
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


def make_scorer(exp: setup.Experiment) -> sample_and_score.Scorer | str | None:
  """The experiment's sample scorer; None when config.eval.feature_net is empty; the reason (str)
  when its network cannot be loaded (e.g. the digits classifier is not trained yet), printed once.
  """
  try:
    return sample_and_score.Scorer.create(
      exp.config, exp.task, exp.mesh, exp.workdir, exp.info.image_shape
    )
  except UserError as e:
    if jax.process_index() == 0:
      sample_and_score.note_skipped(e)
    return str(e)


def score_state(
  exp: setup.Experiment, scorer: sample_and_score.Scorer, state: Any, num: int
) -> dict[str, float]:
  """Sample metrics of `num` samples of `state` (EMA parameters when ``config.sample.use_ema``)."""
  variables = state.variables(use_ema=exp.config.sample.use_ema)
  rng = jax.random.fold_in(jax.random.key(exp.config.seed), 4_000_037)
  return scorer.score(variables, rng, num)


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The task's held-out metrics and, with config.eval.feature_net, the sample metrics."""
  exp = setup.build(config, workdir, require_checkpoint=True)
  exp.checkpointer.close()
  results: dict[str, Any] = {"step": exp.restored_step, **evaluate_state(exp, exp.state)}
  scorer = make_scorer(exp)
  if isinstance(scorer, sample_and_score.Scorer):
    results.update(score_state(exp, scorer, exp.state, int(config.eval.num_samples)))
    results["feature_net"] = scorer.net.name
    results["reference_stats"] = scorer.reference().path + ".json"
  elif scorer is not None:
    results["sample_metrics_skipped"] = scorer
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
