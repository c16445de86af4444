"""Everything a mode needs before its first step: mesh, data spec, task, optimizers, state.

`build` is the training set-up (the full train state, initialised sharded or restored from the
workdir's newest checkpoint that reads back completely); `build_inference` is the sample and eval
modes' (the current config's task and the checkpoint's parameters only, through
`research.train.restore`).

`config.train.restore_step` (0 = the newest) picks a step instead. The sample and eval modes read it
and leave the later steps alone. Training goes back to it: the later steps are renamed
``<step>.superseded`` (kept, with a note naming them) and the run continues from the chosen step
with the data order of an uninterrupted run. Re-running the same command then resumes from the
newest step as usual (the steps after the chosen one were written by a run with the same
``restore_step``, which the saved config records), so a preempted rewind is not rewound again; to go
back to the same step a second time, move the later steps aside by hand.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from research import data
from research.data import captions_text
from research.errors import UserError
from research.registry import TASKS
from research.tasks.base import Task, Variables
from research.train import restore
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.checkpoint import Checkpointer, DamagedCheckpoint
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


@dataclasses.dataclass
class Inference:
  """A trained run for the sample and eval modes: the task and the parameters, no optimizer."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  info: data.DatasetInfo
  task: Task
  variables: Variables  # EMA parameters when config.sample.use_ema and the run kept them
  step: int


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return config.to_dict()


def build_task(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> Task:
  return TASKS.get(config.task.name)(config, info)


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> data.DatasetInfo:
  """Prepares the dataset (and the caption tokenizer when the run reads captions) one process at
  a time (a shared data_dir must not be written by several processes at once), then its spec."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    for i in range(jax.process_count()):
      if i == jax.process_index():
        data.prepare(config.data)
      multihost_utils.sync_global_devices(f"research: dataset prepared by process {i}")
  info = data.dataset_info(config.data)
  tokenizer = captions_text.prepare_tokenizer(config.data, workdir)
  return dataclasses.replace(info, text_tokenizer=tokenizer)


def validate(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Config values that would otherwise fail deep inside a run (or after hours of it)."""
  shd.check_batch_size(config.batch_size, mesh)
  shd.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
  shd.check_batch_size(config.sample.num_samples, mesh, "config.sample.num_samples")
  for key in ("num_steps", "log_every", "checkpoint_every", "grad_accum"):
    if config.train[key] < 1:
      raise UserError(f"config.train.{key}={config.train[key]} must be at least 1")
  accum = config.train.grad_accum
  if config.batch_size % accum or (config.batch_size // accum) % mesh.devices.size:
    raise UserError(
      f"config.batch_size={config.batch_size} does not split into {accum} micro-batches that "
      f"divide by the {mesh.devices.size} devices; change config.train.grad_accum"
    )
  check_split_repeats(config, mesh.devices.size)


def check_split_repeats(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """With ``train.split_repeats``, each of a part's n updates takes 1/n of the batch, which is
  then split into ``grad_accum`` micro-batches that each span all devices."""
  if not config.train.split_repeats:
    return
  accum = config.train.grad_accum
  for part, n in config.train.part_steps.to_dict().items():
    if n < 0:
      raise UserError(f"config.train.part_steps.{part}={n} must be >= 0")
    if n <= 1:
      continue
    rows = config.batch_size // n if config.batch_size % n == 0 else 0
    if not rows or rows % accum or (rows // accum) % num_devices:
      raise UserError(
        f"config.batch_size={config.batch_size} does not split into {n} chunks (one per "
        f"update of {part!r}, config.train.split_repeats) x {accum} micro-batches that divide by "
        f"the {num_devices} devices; use a multiple of {n * accum * num_devices}"
      )


def _mesh(config: ml_collections.ConfigDict) -> Mesh:
  jax.config.update("jax_threefry_partitionable", True)
  return shd.make_mesh(config.mesh.data, config.mesh.fsdp)


def _model_error(e: Exception, info: data.DatasetInfo) -> UserError:
  first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return UserError(f"config.model does not fit the data {info.image_shape}: {first}")


def _restore_step(checkpointer: Checkpointer, wanted: int) -> int:
  """`config.train.restore_step` for training: the step to go back to, or 0 (the latest) when the
  later steps were trained from it by a run with the same setting (the same command re-run after
  a preemption continues, instead of going back again)."""
  if not wanted:
    return 0
  later = [s for s in checkpointer.steps() if s > wanted]
  if later:
    try:
      saved = checkpointer.saved_config(later[-1])
    except DamagedCheckpoint:
      saved = {}
    if saved.get("train", {}).get("restore_step") == wanted:
      if jax.process_index() == 0:
        print(
          f"note: config.train.restore_step={wanted}: steps {', '.join(map(str, later))} were "
          f"trained from step {wanted} with this setting; resuming from step {later[-1]}",
          file=sys.stderr,
        )
      return 0
  return wanted


def _supersede_later_steps(checkpointer: Checkpointer, step: int) -> None:
  """Training from an earlier step: the later steps are renamed ``<step>.superseded`` (kept, never
  overwritten), so the run's new saves cannot collide with them."""
  later = [s for s in checkpointer.steps() if s > step]
  if not later:
    return
  moved = [checkpointer.set_aside(s, "superseded") for s in later]
  if jax.process_index() == 0:
    names = ", ".join(
      str(m.name) if m else f"{s} (could not move)" for s, m in zip(later, moved, strict=True)
    )
    print(
      f"note: config.train.restore_step={step}: later steps moved aside in "
      f"{checkpointer.directory}: {names}; training continues from step {step}",
      file=sys.stderr,
    )


def build(
  config: ml_collections.ConfigDict, workdir: str, info: data.DatasetInfo | None = None
) -> Experiment:
  """The training set-up; restores the workdir's newest checkpoint that reads back completely
  (damaged ones are set aside), or `config.train.restore_step` when > 0."""
  mesh = _mesh(config)
  validate(config, mesh)
  info = info or prepare_data(config, workdir)
  task = build_task(config, info)
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
  checkpointer = Checkpointer(
    workdir,
    save_every=config.train.checkpoint_every,
    max_to_keep=config.train.max_to_keep,
    async_save=config.train.async_checkpoint,
  )
  cfg = config_dict(config)
  has_steps = bool(checkpointer.steps())
  try:
    if not has_steps:
      state, shardings = state_lib.init_sharded(make, mesh, config.mesh.fsdp_min_size)
    else:
      abstract = jax.eval_shape(make)
      shardings = shd.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
      target = state_lib.abstract_state(abstract, shardings)
  except (ValueError, TypeError) as e:  # a model that cannot take this data, e.g. too many levels
    checkpointer.close()
    raise _model_error(e, info) from None
  step = None
  if has_steps:
    try:
      wanted = _restore_step(checkpointer, int(config.train.get("restore_step", 0)))
      found = checkpointer.restore_newest(
        lambda s: checkpointer.restore(s, target, cfg), step=wanted
      )
      if found is None:  # every step vanished in between: start afresh
        state, shardings = state_lib.init_sharded(make, mesh, config.mesh.fsdp_min_size)
      else:
        step, state = found
        if wanted:
          _supersede_later_steps(checkpointer, step)
    except BaseException:
      checkpointer.close()
      raise
  if step is not None and jax.process_index() == 0:
    print(f"restored step {step} from {checkpointer.directory}", file=sys.stderr)
    changed = checkpointer.config_changes(step, cfg)
    if changed:
      print(f"note: config differs from the checkpoint's: {'; '.join(changed)}", file=sys.stderr)
  return Experiment(
    config, workdir, mesh, info, task, optimizers, state, shardings, checkpointer, step
  )


def build_inference(config: ml_collections.ConfigDict, workdir: str) -> Inference:
  """The sample / eval set-up: the task of `config` (its sampling and eval settings may differ
  from the run's) with the parameters of the workdir's newest checkpoint that reads back (or of
  `config.train.restore_step` when > 0; later steps are left alone), sharded over the mesh."""
  mesh = _mesh(config)
  shd.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
  shd.check_batch_size(config.sample.num_samples, mesh, "config.sample.num_samples")
  info = prepare_data(config, workdir)
  task = build_task(config, info)
  checkpointer = Checkpointer(workdir, save_every=1, async_save=False, writer=False)

  def load(step: int) -> Variables:
    try:
      return restore.restore_variables(
        checkpointer,
        step,
        task,
        info,
        use_ema=config.sample.use_ema,
        mesh=mesh,
        fsdp_min_size=config.mesh.fsdp_min_size,
        config=config_dict(config),
      )
    except (ValueError, TypeError) as e:
      raise _model_error(e, info) from None

  try:
    found = checkpointer.restore_newest(load, step=int(config.train.get("restore_step", 0)))
  finally:
    checkpointer.close()
  if found is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints; train first with --mode=train")
  step, variables = found
  return Inference(config, workdir, mesh, info, task, variables, step)
