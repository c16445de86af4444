"""Evaluation of a run, owned by the trainer, and the sample and eval modes.

`Evaluation` is everything ``--mode=eval`` and ``train.eval_every`` measure, built once per run so
each jitted function compiles once: the task's held-out metrics (`research.eval.heldout`), the
evaluators the experiment names in ``config.evals`` (dataset-specific judges, chosen by name as
big_vision's evaluators), and, when ``config.eval.feature_net`` names a feature network, the sample
metrics of `research.eval.sample_and_score` on ``config.eval.num_samples`` samples (FID with
``fid_n``, KID, precision/recall, classifier score, class histogram and entropy, label agreement,
data-copying: `research.eval.memorisation`).

``--mode=sample`` writes ``<workdir>/samples.npz`` (``images`` uint8 [N, H, W, C]; ``labels`` when
conditional) and ``<workdir>/samples.png``, plus the family's own pictures (reconstructions,
interpolations), and with a feature network ``<workdir>/nearest_neighbours.png``: the first samples
beside their nearest training images in its feature space (`research.eval.nearest_neighbours`).
``--mode=eval`` writes ``<workdir>/eval.json`` and prints it. Both restore the parameters (EMA
when ``config.sample.use_ema``) of the workdir's latest checkpoint, not its optimizer state.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from research import data
from research.errors import UserError
from research.eval import images as image_io
from research.eval import nearest_neighbours, sample_and_score
from research.eval.heldout import HeldOut
from research.registry import EVALUATORS
from research.tasks.base import Batch, Task, Variables
from research.train import setup
from research.train import sharding as shd

_NOT_BUILT = object()  # the sample scorer before its first use


def held_out_batches(
  config: ml_collections.ConfigDict, mesh: Mesh, info: data.DatasetInfo
) -> Iterator[Batch]:
  """One pass over the held-out split, sharded over the mesh (``mask`` 0 on padding rows)."""
  return data.eval_iterator(
    config.data,
    global_batch_size=config.eval.batch_size,
    sharding=shd.batch_sharding(mesh),
    text_tokenizer=info.text_tokenizer,
  )


class Evaluation:
  """The run's held-out metrics, evaluators and sample metrics; jitted functions built once."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    task: Task,
    mesh: Mesh,
    info: data.DatasetInfo,
    workdir: str,
  ):
    self.config, self.task, self.mesh, self.info, self.workdir = config, task, mesh, info, workdir
    self.held_out = HeldOut(task)
    self.evaluators = {
      name: EVALUATORS.get(name)(options, config, task, info)
      for name, options in config.evals.items()
    }
    self._scorer: Any = _NOT_BUILT

  def batches(self) -> Iterator[Batch]:
    return held_out_batches(self.config, self.mesh, self.info)

  @property
  def scorer(self) -> sample_and_score.Scorer | str | None:
    """The sample scorer; None when config.eval.feature_net is empty; the reason (str) when its
    network cannot be loaded (e.g. the digits classifier is not trained yet), printed once."""
    if self._scorer is _NOT_BUILT:
      try:
        self._scorer = sample_and_score.Scorer.create(
          self.config, self.task, self.mesh, self.workdir, self.info.image_shape
        )
      except UserError as e:
        if jax.process_index() == 0:
          sample_and_score.note_skipped(e)
        self._scorer = str(e)
    return self._scorer

  def _rng(self) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seed), 2_000_003)

  def held_out_metrics(self, variables: Variables) -> dict[str, float]:
    """The task's own metrics of the held-out split."""
    return self.held_out(variables, self.batches(), self._rng())

  def __call__(self, variables: Variables, num_samples: int) -> dict[str, Any]:
    """Held-out metrics, each evaluator's, and the sample metrics of `num_samples` samples."""
    results: dict[str, Any] = self.held_out_metrics(variables)
    for evaluator in self.evaluators.values():
      results.update(evaluator(variables, self.batches, self._rng()))
    scorer = self.scorer
    if isinstance(scorer, sample_and_score.Scorer):
      key = jax.random.fold_in(jax.random.key(self.config.seed), 4_000_037)
      results.update(scorer.score(variables, key, int(num_samples)))
      results["feature_net"] = scorer.net.name
      results["reference_stats"] = scorer.reference().path + ".json"
    elif scorer is not None:
      results["sample_metrics_skipped"] = scorer
    return results


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Everything `Evaluation` measures, for the workdir's latest checkpoint -> eval.json."""
  inf = setup.build_inference(config, workdir)
  evaluation = Evaluation(config, inf.task, inf.mesh, inf.info, workdir)
  results = {"step": inf.step, **evaluation(inf.variables, int(config.eval.num_samples))}
  if jax.process_index() == 0:
    text = json.dumps(results, indent=2, sort_keys=True)
    (epath.Path(workdir) / "eval.json").write_text(text + "\n")
    print(text)
  return results


def run_sample(config: ml_collections.ConfigDict, workdir: str) -> dict[str, np.ndarray]:
  inf = setup.build_inference(config, workdir)
  rng = jax.random.fold_in(jax.random.key(config.seed), 3_000_017)
  n = config.sample.num_samples
  sample_fn = jax.jit(
    lambda v, r: inf.task.sample(v, r, n), out_shardings=shd.batch_sharding(inf.mesh)
  )
  out = {
    k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
    for k, v in sample_fn(inf.variables, rng).items()
  }
  path = epath.Path(workdir)
  written = []
  if jax.process_index() == 0:
    with (path / "samples.npz").open("wb") as f:
      np.savez(f, **out)
    image_io.save_grid(out["images"], path / "samples.png")
    written = [str(path / "samples.npz"), str(path / "samples.png")]
  batch = next(iter(held_out_batches(config, inf.mesh, inf.info)))
  artifact_fn = jax.jit(inf.task.artifacts, out_shardings=shd.replicated(inf.mesh))
  pictures = artifact_fn(inf.variables, batch, jax.random.fold_in(rng, 1))
  if jax.process_index() == 0:
    for name, picture in pictures.items():
      image_io.save_png(np.asarray(picture), path / name, scale=2)
      written.append(str(path / name))
  neighbours = nearest_neighbours.write(config, inf.mesh, inf.info.image_shape, out["images"], path)
  if jax.process_index() == 0:
    written += [neighbours] if neighbours else []
    print("wrote " + ", ".join(written), file=sys.stderr)
  return out
