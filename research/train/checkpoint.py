"""Orbax checkpoints of the train state, with the experiment config saved beside it.

Saves are asynchronous and atomic: Orbax writes each step into a temporary folder and renames it when
complete, so a run killed at any moment (even mid-save) resumes from the last complete step. Restores
go into an abstract target that carries the current mesh's shardings, so a checkpoint written on 8
devices loads onto 1 (or onto an FSDP mesh) and vice versa. Every process calls `save` and `restore`;
the folder may be on GCS (``gs://...``).

Faults:

- A save that fails (a full disk, a read-only or vanished folder) is a one-line `UserError` naming
  the step, the folder and the last complete step, which is kept; the failed step's temporary
  folder is never listed as a step, and the next training run removes it. Async saves fail in a
  background thread: the error is raised by the next `save`, by `wait` or by `close`, whichever
  comes first, after the failed save's other writer threads end (Orbax's own multi-line reports of
  the failure are dropped: `research.train.faults`).
- `restore_newest` restores the newest step that reads back completely. A damaged step (a JSON item,
  the tree metadata or the array data unreadable, truncated or missing) is renamed to
  ``<step>.damaged`` (never deleted; Orbax ignores names that are not a bare number) with one line
  on stderr. A checkpoint of another config is told apart from damage by its tree metadata: when the
  saved shapes and structure differ from the target's, it is refused with the "written by another
  config" error and left in place; only a read failure with matching metadata, or metadata that
  cannot be read at all, counts as damage.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.metadata import array_metadata_store as array_metadata_store_lib

from research.errors import UserError
from research.train.faults import (
  absolute,
  causes,
  first_line,
  fs_errno,
  innermost,
  join_orbax_threads,
  os_error,
  quiet_aborted_io,
)
from research.train.faults import cause as fs_cause

T = TypeVar("T")
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Config keys that say what to do with a workdir rather than what its run is.
_ACTION_KEYS = ("train.restore_step",)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in (d or {}).items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _as_json(config: dict[str, Any]) -> dict[str, Any]:
  """What the config looks like once saved (tuples become lists)."""
  return json.loads(json.dumps(config, default=str))


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Dotted keys whose values differ, formatted ``key: saved -> current``."""
  a, b = _flatten(_as_json(saved)), _flatten(_as_json(current))
  keys = sorted((set(a) | set(b)) - set(_ACTION_KEYS))
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _no_replica_slicing_on_cpu() -> None:
  """Orbax splits each replicated array across its replicas for the device-to-host copy, which
  on an accelerator spreads the transfer; on CPU there is no transfer to spread, and every slice
  shape is a program to compile (~0.1 s each: a tiny model's first save on 8 CPU devices compiled
  ~180 of them). On CPU, replica 0 writes each array whole; the files are the same."""
  current = ocp.type_handlers.get_type_handler(jax.Array)
  if jax.default_backend() != "cpu" or getattr(current, "_research_whole_arrays", False):
    return
  handler = ocp.type_handlers.ArrayHandler(
    use_replica_parallel=False, array_metadata_store=array_metadata_store_lib.Store()
  )
  handler._research_whole_arrays = True  # type: ignore[attr-defined]
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Orbax warns that a handler is replaced
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.setLevel(level)


class DamagedCheckpoint(UserError):
  """A step whose files do not read back (truncated, emptied or missing): `restore_newest` moves it
  aside and tries the previous step."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"checkpoint step {step} is damaged: {reason}")
    self.step, self.reason = step, reason


def _agree(ok: bool) -> bool:
  """True when every process says `ok` (a step damaged for one process is damaged for all)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _key(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def tree_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
  """``{path: shape}`` of the array leaves of a pytree (arrays, ShapeDtypeStructs, metadata)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key(k) for k in path): tuple(getattr(x, "shape", ())) for path, x in leaves}


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` at ``<workdir>/checkpoints``."""

  def __init__(
    self,
    workdir: str,
    *,
    save_every: int,
    max_to_keep: int = 3,
    async_save: bool = True,
    writer: bool = True,
  ):
    """`writer`: the training run of the workdir, which removes the temporary folders of saves an
    earlier run left unfinished (killed, or failed on a full disk); readers (sample, eval,
    `load_trained`) leave them, since a training run may be writing one."""
    # Orbax needs absolute paths; a relative local workdir is taken from the current directory.
    self.directory = epath.Path(absolute(workdir)) / "checkpoints"
    quiet_aborted_io()
    _no_replica_slicing_on_cpu()
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=max(save_every, 1),
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=writer,
      ),
      item_names=("state", "config", "dataset"),
    )
    self._in_flight: int | None = None  # the step an async save is writing
    self._failed = False  # a save error was raised: close() does not raise it again

  # Saving ---------------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    """The complete steps on disk, oldest first."""
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def save(
    self,
    step: int,
    state: Any,
    config: dict[str, Any],
    dataset: dict[str, Any],
    *,
    force: bool = False,
  ) -> bool:
    """Saves the state with the config and the dataset's metadata (shapes, classes) beside it,
    so a trained model can be rebuilt from the checkpoint alone (`research.train.restore`)."""
    self.wait()  # the previous save's error, if any, names its own step
    try:
      saved = self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave(_as_json(config)),
          dataset=ocp.args.JsonSave(_as_json(dataset)),
        ),
        force=force,
      )
    except Exception as e:
      raise self._save_error(e, step) from None
    if saved:
      self._in_flight = step
    return saved

  def wait(self) -> None:
    """Blocks until the save in flight is complete; its failure is raised here."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(e, self._in_flight) from None
    self._in_flight = None

  def close(self) -> None:
    reported = self._failed  # a save error already raised is not raised again
    try:
      self.wait()
      self.manager.close()
    except Exception:
      if not reported:
        raise

  def _save_error(self, e: Exception, step: int | None) -> Exception:
    """A filesystem failure of the save of `step` as one line; anything else as it is."""
    if fs_errno(e) is None:
      return e
    # The failed step's temporary folder stays until the next training run starts (Orbax's
    # writer threads may still be in it): no step is listed from it, so nothing resumes from it.
    self._failed = True
    join_orbax_threads()
    try:
      kept = self.steps()
    except Exception:  # noqa: BLE001  (the directory itself may be what failed)
      kept = []
    last = f"the last complete checkpoint (step {kept[-1]}) is kept" if kept else "no step is kept"
    which = f"step {step}" if step is not None else "a step"
    return UserError(
      f"checkpoint {which} could not be written to {self.directory}: {fs_cause(e)}; {last} (the "
      "partial step is ignored); free space (or fix the folder) and re-run the same command"
    )

  # Reading --------------------------------------------------------------------------------------

  def _read_json(self, step: int, item: str) -> dict[str, Any]:
    try:
      restored = self.manager.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
      )
      value = restored[item]
    except Exception as e:
      raise self._damaged(step, f"its {item} JSON does not read ({first_line(e)})", e) from None
    if not isinstance(value, dict):
      raise self._damaged(step, f"its {item} JSON is not an object", None)
    return value

  def saved_dataset(self, step: int) -> dict[str, Any] | None:
    """The dataset metadata saved at `step`; None for checkpoints written before it was saved."""
    if not (self.directory / str(step) / "dataset").exists():
      return None
    return self._read_json(step, "dataset")

  def saved_config(self, step: int) -> dict[str, Any]:
    return self._read_json(step, "config")

  def config_changes(self, step: int, config: dict[str, Any]) -> list[str]:
    """How `config` differs from the one saved at `step` (resuming with changes is allowed:
    a longer run, other log intervals; the loop reports them)."""
    return config_diff(self.saved_config(step), config)

  def _damaged(self, step: int, reason: str, e: BaseException | None) -> Exception:
    if e is not None:
      chain = list(causes(e))
      if any(isinstance(x, MemoryError) or "RESOURCE_EXHAUSTED" in str(x) for x in chain):
        return e  # out of memory: no fault of the files
      if isinstance(os_error(e), PermissionError):
        return UserError(f"cannot read checkpoint {self.directory}/{step}: Permission denied")
    return DamagedCheckpoint(step, reason)

  def check_files(self, step: int) -> None:
    """Raises DamagedCheckpoint when a JSON item or the step's own metadata does not read."""
    path = self.directory / str(step)
    if not (path / "state").is_dir():
      raise self._damaged(step, "its state folder is missing", None)
    meta = path / "_CHECKPOINT_METADATA"
    if meta.exists():
      try:
        json.loads(meta.read_text())
      except Exception as e:
        reason = f"_CHECKPOINT_METADATA does not read ({first_line(e)})"
        raise self._damaged(step, reason, e) from None
    self.saved_config(step)
    self.saved_dataset(step)

  def saved_shapes(self, step: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """``{path: shape}`` of the saved state, from its tree metadata (no array is read)."""
    try:
      metadata = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
      return tree_shapes(getattr(metadata, "item_metadata", metadata))
    except Exception as e:
      raise self._damaged(step, f"its tree metadata does not read ({first_line(e)})", e) from None

  def mismatch(
    self, step: int, target: Any, config: dict[str, Any] | None, *, partial: bool = False
  ) -> str | None:
    """None when the saved tree (paths and shapes, from its metadata: no array is read) is
    `target`'s (with `partial`, holds `target`); else the config keys that differ, or the first
    path that does when the configs are the same."""
    saved, wanted = self.saved_shapes(step), tree_shapes(target)
    bad = [p for p in wanted if saved.get(p) != wanted[p]]
    if not partial:
      bad += [p for p in saved if p not in wanted]
    if not bad:
      return None
    diff = config_diff(self.saved_config(step), config) if config is not None else []
    first = bad[0]
    return "; ".join(diff[:4]) or (
      f"same config, but {'.'.join(first)} is {saved.get(first, 'absent')} in the checkpoint "
      f"and {wanted.get(first, 'absent')} here"
    )

  def restore_items(self, step: int, args: ocp.args.Composite) -> Any:
    """`manager.restore` where a read failure is damage (call when `mismatch` is None)."""
    try:
      return self.manager.restore(step, args=args)
    except Exception as e:
      raise self._damaged(step, f"its arrays do not read ({first_line(innermost(e))})", e) from None

  def restore(self, step: int, target: Any, config: dict[str, Any]) -> Any:
    """The state at `step`, restored into `target` (ShapeDtypeStructs with shardings). A
    checkpoint of another config is a UserError; one that does not read is DamagedCheckpoint."""
    self.check_files(step)
    shown = self.mismatch(step, target, config)
    if shown:
      raise UserError(
        f"checkpoint {self.directory}/{step} was written by another config ({shown}); "
        "use a new --workdir or the config that wrote it"
      )
    restored = self.restore_items(step, ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored.state

  # Choosing a step ------------------------------------------------------------------------------

  def set_aside(self, step: int, why: str) -> epath.Path | None:
    """Renames ``<step>`` to ``<step>.<why>`` (``.<why>.2``, ... when taken); None if it fails.
    Orbax lists only bare numbers, so the step is gone for it but kept on disk."""
    src = self.directory / str(step)
    dst = self.directory / f"{step}.{why}"
    n = 2
    while dst.exists():
      dst, n = self.directory / f"{step}.{why}.{n}", n + 1
    moved: epath.Path | None = dst
    if jax.process_index() == 0:
      try:
        src.rename(dst)
      except OSError:
        moved = None
    _sync(f"research: set aside checkpoint {step}")
    self.manager.reload()
    return moved

  def restore_newest(self, restore: Callable[[int], T], *, step: int = 0) -> tuple[int, T] | None:
    """``(step, restore(step))`` for the newest step that restores completely; None when there is
    no checkpoint. A step where `restore` raises DamagedCheckpoint is set aside as
    ``<step>.damaged`` with one line on stderr. `step` > 0: that step only (an error if it is
    missing or damaged)."""
    steps = self.steps()
    if not steps:
      return None
    if step and step not in steps:
      raise UserError(
        f"config.train.restore_step={step}: {self.directory} holds no step {step} (it holds "
        f"{', '.join(map(str, steps))}); pass one of those, or 0 for the latest"
      )
    skipped = []
    for s in [step] if step else steps[::-1]:
      try:
        result, error = restore(s), None
      except DamagedCheckpoint as e:
        result, error = None, e
      if _agree(error is None):
        return s, result  # type: ignore[return-value]
      reason = error.reason if error else "another process could not read it"
      moved = self.set_aside(s, "damaged")
      where = f"moved it to {moved}" if moved else "could not move it aside"
      if jax.process_index() == 0:
        print(f"note: skipped checkpoint step {s}: {reason}; {where}", file=sys.stderr)
      skipped.append(s)
    if step:
      raise UserError(
        f"checkpoint step {step} in {self.directory} is damaged (set aside as {step}.damaged); "
        "pass another config.train.restore_step, or 0 for the latest"
      )
    raise UserError(
      f"no checkpoint in {self.directory} restores: steps {', '.join(map(str, skipped))} are "
      "damaged (set aside as <step>.damaged); train again (the same training command starts "
      "from step 0) or pass another --workdir"
    )
