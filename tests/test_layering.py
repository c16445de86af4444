"""The import layering of research/, read from the source (AST), imports inside functions included:
models < tasks < train < eval / main, no cycles."""

from __future__ import annotations

import ast
import os

from tests.run_helpers import REPO

ROOT = os.path.join(REPO, "research")


def _modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of research/."""
  out = {}
  for folder, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        out[name.removesuffix(".__init__")] = path
  return out


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
  """The project modules `name` imports anywhere in its file (a package is its __init__)."""
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from ..x import y
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
      # `from package import module` imports that module; `from module import name` the module.
      subs = [f"{base}.{a.name}" for a in node.names]
      targets = [t for t in subs if t in modules] or [base]
    else:
      continue
    for target in targets:
      while target and target not in modules:  # research.tasks.vae.VAETask -> research.tasks.vae
        target = target.rpartition(".")[0]
      if target and target != name:
        found.add(target)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan), and self-loops."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_checker_sees_imports_inside_functions_and_cycles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]
  found = _imports("research.tasks.vae", os.path.join(ROOT, "tasks", "vae.py"), _modules())
  assert "research.registry" in found and "research.tasks.base" in found


def test_no_import_cycles_in_research():
  assert _cycles(_graph()) == []


def test_models_import_nothing_of_the_project_but_errors_and_registry():
  allowed = ("research.errors", "research.registry", "research.models")
  bad = [
    f"{m} -> {d}"
    for m, deps in _graph().items()
    if m.startswith("research.models")
    for d in deps
    if not d.startswith(allowed)
  ]
  assert bad == []


def test_tasks_never_reach_into_the_trainers_set_up_loop_eval_modes_or_main():
  trainer = ("research.train.setup", "research.train.loop", "research.eval.run", "research.main")
  bad = [
    f"{m} -> {d}"
    for m, deps in _graph().items()
    if m.startswith("research.tasks")
    for d in deps
    if d in trainer
  ]
  assert bad == []


def test_the_shared_trainer_names_no_family():
  """No `if family == ...` in shared code: the trainer, the data pipeline and the evaluation
  runner import no family's task or model module (they look families up by name)."""
  shared = ("research.train", "research.data", "research.eval.run", "research.eval.heldout")
  families = [m for m in _modules() if m.startswith(("research.tasks.", "research.models."))]
  families = [m for m in families if m not in ("research.tasks.base", "research.tasks.pixels")]
  bad = [
    f"{m} -> {d}"
    for m, deps in _graph().items()
    if m.startswith(shared)
    for d in deps
    if d in families
  ]
  assert bad == []
