"""The one loader of trained models: parameters (EMA when kept) and non-parameter collections of a
run's checkpoint, without its optimizer state.

`load_trained(workdir)` rebuilds the run's task and model from the config saved beside the
checkpoint and the dataset metadata saved with it (image shape, classes), so nothing is guessed from
weight shapes and no dataset has to be prepared; it validates nothing against the run's training
batch or mesh. DALL-E's frozen dVAE, its CLIP reranker and the digits classifier of the evaluation
suite load through it. `restore_variables` is the same restore for a task built by the caller (the
sample and eval modes: the current config's task, sharded over the current mesh).

Checkpoints written before the dataset metadata was saved still load: their dataset's metadata is
read from TFDS (the dataset must then be prepared, or the error says how).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from research import data
from research.data import captions_text
from research.errors import UserError
from research.registry import TASKS
from research.tasks.base import Task, UnknownConfigKeys, Variables
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.checkpoint import Checkpointer, absolute


class NoCheckpoint(UserError):
  """The workdir holds no checkpoint."""


@dataclasses.dataclass(frozen=True)
class Trained:
  """A finished run, ready to use: its task, variables and what it was trained on."""

  task: Task
  variables: Variables  # {part: {"params": ..., **collections}}
  config: ml_collections.ConfigDict  # the config saved beside the checkpoint
  info: data.DatasetInfo
  step: int
  workdir: str


def dataset_json(info: data.DatasetInfo) -> dict[str, Any]:
  """What the checkpoint records of the dataset (the tokenizer path is resolved at load time)."""
  out = dataclasses.asdict(info)
  out.pop("text_tokenizer")
  return out


def saved_dataset_info(
  checkpointer: Checkpointer, step: int, config: ml_collections.ConfigDict, workdir: str
) -> data.DatasetInfo:
  """The dataset metadata saved at `step` (or, for older checkpoints, TFDS's), with the run's
  caption tokenizer when it reads captions."""
  saved = checkpointer.saved_dataset(step)
  if saved is None:
    try:
      info = data.dataset_info(config.data)
    except UserError as e:
      raise UserError(
        f"checkpoint {checkpointer.directory}/{step} predates saved dataset metadata and its "
        f"dataset cannot be read ({e}); prepare {config.data.name!r} or retrain"
      ) from None
  else:
    input_shape = saved.get("input_shape")  # paired and unpaired data (research.data.pipeline)
    info = data.DatasetInfo(
      image_shape=tuple(saved["image_shape"]),
      num_classes=saved["num_classes"],
      num_train=int(saved["num_train"]),
      num_eval=int(saved["num_eval"]),
      input_shape=tuple(input_shape) if input_shape else None,
      num_eval_input=int(saved.get("num_eval_input", 0)),
      num_train_input=int(saved.get("num_train_input", 0)),
    )
  if captions_text.text_length(config.data):
    info = dataclasses.replace(
      info, text_tokenizer=captions_text.tokenizer_path(config.data, workdir)
    )
  return info


def restore_variables(
  checkpointer: Checkpointer,
  step: int,
  task: Task,
  info: data.DatasetInfo,
  *,
  use_ema: bool = True,
  mesh: Mesh | None = None,
  fsdp_min_size: int = 2**14,
  config: dict[str, Any] | None = None,
) -> Variables:
  """Each part's parameters (its EMA when `use_ema` and the run kept one) and collections at
  `step`, into the shapes `task.init` gives; sharded over `mesh` by the FSDP rule, or replicated
  on every device when `mesh` is None (ready for jitted use beside batch-sharded inputs). A
  checkpoint of another model is a one-line error (naming how `config`, when given, differs from
  the one that wrote it); one whose files do not read raises `DamagedCheckpoint`."""
  example = state_lib.example_batch(
    info.image_shape, info.num_classes is not None, input_shape=info.input_shape
  )
  abstract = jax.eval_shape(task.init, jax.random.key(0), example)
  if mesh is None:
    replicated = shd.replicated(shd.make_mesh())
    shardings = jax.tree.map(lambda _: replicated, abstract)
  else:
    shardings = shd.state_shardings(abstract, mesh, fsdp_min_size)
  target = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings
  )
  checkpointer.check_files(step)
  saved = checkpointer.saved_config(step)
  kept_ema = float(saved.get("train", {}).get("ema_decay", 0.0)) > 0  # as state.create_state
  which, item = {}, {"parts": {}}
  for part in task.parts:
    variables = dict(target[part])
    params = variables.pop("params")
    ema = use_ema and kept_ema and part in task.ema_parts
    which[part] = "ema_params" if ema else "params"
    item["parts"][part] = {which[part]: params}
    if variables:
      item["parts"][part]["collections"] = variables
  shown = checkpointer.mismatch(step, item, config, partial=True)
  if shown:
    raise UserError(
      f"checkpoint {checkpointer.directory}/{step} does not hold this model ({shown}); "
      "use the config that wrote it, or a new --workdir"
    )
  restored = checkpointer.restore_items(
    step,
    ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        item=item,
        restore_args=jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), item),
        partial_restore=True,
      )
    ),
  )
  parts = restored.state["parts"]
  return {
    part: {"params": parts[part][which[part]], **parts[part].get("collections", {})}
    for part in task.parts
  }


def _task_of(config: ml_collections.ConfigDict, info: data.DatasetInfo, workdir: str) -> Task:
  """The saved run's task; task options this version no longer has are dropped, with a note."""
  try:
    return TASKS.get(config.task.name)(config, info)
  except UnknownConfigKeys as e:
    print(
      f"note: {workdir} was trained with task options {e.keys} this version ignores",
      file=sys.stderr,
    )
    with config.unlocked():
      for key in e.keys:
        del config.task[key]
    return TASKS.get(config.task.name)(config, info)


def load_trained(
  workdir: str,
  *,
  use_ema: bool = True,
  task_name: str | None = None,
  image_shape: tuple[int, int, int] | None = None,
  mesh: Mesh | None = None,
  step: int = 0,
) -> Trained:
  """The newest checkpoint of `workdir` that restores completely (or `step`, when > 0) as a
  `Trained` model; damaged steps are set aside (`Checkpointer.restore_newest`).

  `task_name` checks the run is of that family; `image_shape` rebuilds a fully convolutional model
  for another input size than it was trained on (DALL-E's dVAE on captioned canvases).
  """
  directory = epath.Path(absolute(workdir)) / "checkpoints"
  if not directory.exists():
    raise NoCheckpoint(f"no checkpoint in {directory}; train a model there first")
  checkpointer = Checkpointer(workdir, save_every=1, async_save=False, writer=False)

  def load(s: int) -> Trained:
    config = ml_collections.ConfigDict(checkpointer.saved_config(s))
    saved_name = config.get("task", {}).get("name")
    if task_name is not None and saved_name != task_name:
      raise UserError(f"{workdir} holds a {saved_name!r} run, not {task_name!r}; pass its workdir")
    info = saved_dataset_info(checkpointer, s, config, workdir)
    if image_shape is not None:
      info = dataclasses.replace(info, image_shape=tuple(image_shape))
    task = _task_of(config, info, workdir)
    variables = restore_variables(checkpointer, s, task, info, use_ema=use_ema, mesh=mesh)
    return Trained(task, variables, config, info, s, workdir)

  try:
    found = checkpointer.restore_newest(load, step=step)
  finally:
    checkpointer.close()
  if found is None:
    raise NoCheckpoint(f"no checkpoint in {directory}; train a model there first")
  return found[1]
