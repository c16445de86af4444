"""Orbax checkpoints of the train state, with the experiment config saved beside it.

Saves are asynchronous and atomic: Orbax writes each step into a temporary folder and renames it when
complete, so a run killed at any moment (even mid-save) resumes from the last complete step. Restores
go into an abstract target that carries the current mesh's shardings, so a checkpoint written on 8
devices loads onto 1 (or onto an FSDP mesh) and vice versa. Every process calls `save` and `restore`;
the folder may be on GCS (``gs://...``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from research.errors import UserError


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
  return [
    f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
  ]


def absolute(path: str) -> str:
  """Local paths made absolute; URLs (gs://...) kept as they are."""
  return path if "://" in path else os.path.abspath(path)


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` at ``<workdir>/checkpoints``."""

  def __init__(
    self,
    workdir: str,
    *,
    save_every: int,
    max_to_keep: int = 3,
    async_save: bool = True,
  ):
    # Orbax needs absolute paths; a relative local workdir is taken from the current directory.
    self.directory = epath.Path(absolute(workdir)) / "checkpoints"
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=max(save_every, 1),
        enable_async_checkpointing=async_save,
        create=True,
      ),
      item_names=("state", "config", "dataset"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

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
    return self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(_as_json(config)),
        dataset=ocp.args.JsonSave(_as_json(dataset)),
      ),
      force=force,
    )

  def saved_dataset(self, step: int) -> dict[str, Any] | None:
    """The dataset metadata saved at `step`; None for checkpoints written before it was saved."""
    if not (self.directory / str(step) / "dataset").exists():
      return None
    restored = self.manager.restore(step, args=ocp.args.Composite(dataset=ocp.args.JsonRestore()))
    return restored.dataset

  def saved_config(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored.config

  def config_changes(self, step: int, config: dict[str, Any]) -> list[str]:
    """How `config` differs from the one saved at `step` (resuming with changes is allowed:
    a longer run, other log intervals; the loop reports them)."""
    return config_diff(self.saved_config(step), config)

  def restore(self, step: int, target: Any, config: dict[str, Any]) -> Any:
    """The state at `step`, restored into `target` (ShapeDtypeStructs with shardings)."""
    try:
      restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )
    except (ValueError, KeyError, TypeError) as e:
      diff = config_diff(self.saved_config(step), config)
      shown = "; ".join(diff[:4]) if diff else f"same config, but {str(e).splitlines()[0]}"
      raise UserError(
        f"checkpoint {self.directory}/{step} was written by another config ({shown}); "
        "use a new --workdir or the config that wrote it"
      ) from None
    return restored.state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
