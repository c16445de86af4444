"""Everything a mode needs before its first step: mesh, data spec, task, optimizers, state."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

import research.models  # noqa: F401  (registers the networks)
import research.tasks  # noqa: F401  (registers the families)
from research import data
from research.registry import TASKS
from research.tasks.base import Task
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.checkpoint import Checkpointer
from research.train.optim import make_optimizers


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  info: data.DatasetInfo
  task: Task
  optimizers: dict[str, optax.GradientTransformation]
  state: state_lib.TrainState
  shardings: Any
  checkpointer: Checkpointer
  restored_step: int | None


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return config.to_dict()


def build_task(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> Task:
  return TASKS.get(config.task.name)(config, info)


def build(
  config: ml_collections.ConfigDict,
  workdir: str,
  info: data.DatasetInfo | None = None,
  require_checkpoint: bool = False,
) -> Experiment:
  """Builds the experiment and restores the workdir's latest checkpoint when there is one."""
  jax.config.update("jax_threefry_partitionable", True)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
  shd.check_batch_size(config.batch_size, mesh)
  info = info or data.dataset_info(config.data)
  task = build_task(config, info)
  optimizers = make_optimizers(config.optim, task.parts, config.train.num_steps)
  make = state_lib.state_factory(
    task,
    optimizers,
    info.image_shape,
    info.num_classes is not None,
    config.seed,
    config.train.ema_decay > 0,
  )
  checkpointer = Checkpointer(
    workdir,
    save_every=config.train.checkpoint_every,
    max_to_keep=config.train.max_to_keep,
    async_save=config.train.async_checkpoint,
  )
  step = checkpointer.latest_step()
  if step is None and require_checkpoint:
    from research.errors import UserError

    raise UserError(f"no checkpoint in {workdir}/checkpoints; train first with --mode=train")
  abstract = jax.eval_shape(make)
  shardings = shd.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
  if step is None:
    state = jax.jit(make, out_shardings=shardings)()
  else:
    target = state_lib.abstract_state(abstract, shardings)
    state = checkpointer.restore(step, target, config_dict(config))
    if jax.process_index() == 0:
      print(f"restored step {step} from {checkpointer.directory}", file=sys.stderr)
  return Experiment(
    config, workdir, mesh, info, task, optimizers, state, shardings, checkpointer, step
  )
