"""Name -> factory registries for tasks (model families), networks and datasets.

Shared code never branches on a family name: it looks the name up here. Modules register themselves
with a decorator when their package is imported (`research.tasks`, `research.models`,
`research.data`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from research.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
  """A named table of factories, with a one-line error for unknown names."""

  def __init__(self, kind: str, config_key: str):
    self.kind = kind
    self.config_key = config_key
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj

    return decorator

  def get(self, name: str) -> T:
    if name not in self._entries:
      known = ", ".join(sorted(self._entries)) or "none"
      raise UserError(f"unknown {self.kind} {name!r} in {self.config_key}; known: {known}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)


# A task factory takes the whole experiment config and returns a `research.tasks.base.Task`.
TASKS: Registry[Callable[..., Any]] = Registry("task", "config.task.name")
# A model entry is a linen Module class, built as `cls(**fields)` from typed config fields.
MODELS: Registry[Any] = Registry("model", "config.model.name")


def build_module(fields: dict[str, Any], config_key: str = "config.model") -> Any:
  """Builds a registered linen module from `{'name': ..., **typed_fields}`."""
  fields = dict(fields)
  if "name" not in fields:
    raise UserError(f"{config_key} has no 'name'; set {config_key}.name to one of {MODELS.names()}")
  cls = MODELS.get(fields.pop("name"))
  try:
    return cls(**fields)
  except TypeError as e:
    raise UserError(f"{config_key} does not fit model {cls.__name__}: {e}") from None
