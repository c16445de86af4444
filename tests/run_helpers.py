"""Running `research.main` in subprocesses and reading back what a run left in its workdir."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "vae_tiny.py")


def main_command(workdir: str, *flags: str, config: str = TINY) -> list[str]:
  return [
    sys.executable,
    "-m",
    "research.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *flags,
  ]


def subprocess_env(data_dir: str, devices: int = 1, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["TFDS_DATA_DIR"] = data_dir
  env["PYTHONPATH"] = REPO
  env.update(extra)
  return env


def run_main(
  workdir: str,
  data_dir: str,
  *flags: str,
  devices: int = 1,
  check: bool = True,
  config: str = TINY,
  timeout: int = 300,
  cwd: str = REPO,
) -> subprocess.CompletedProcess:
  cmd = main_command(workdir, f"--config.data.data_dir={data_dir}", *flags, config=config)
  proc = subprocess.run(
    cmd,
    env=subprocess_env(data_dir, devices),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=cwd,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def final_params(workdir: str, data_dir: str, *overrides: str, config: str = TINY) -> dict:
  """Parameters of the latest checkpoint in `workdir`, restored in this process onto its 8 devices."""
  from ml_collections import config_flags  # noqa: F401

  from research.train import setup
  from tests.configs import vae_tiny

  cfg = vae_tiny.get_config()
  cfg.data.data_dir = data_dir
  for o in overrides:
    key, value = o.removeprefix("--config.").split("=", 1)
    _set(cfg, key, value)
  exp = setup.build(cfg, workdir, require_checkpoint=True)
  return {
    "step": exp.restored_step,
    "params": jax.tree.map(np.asarray, jax.device_get(exp.state.parts["model"].params)),
  }


def _set(cfg, dotted: str, value: str) -> None:
  import ast

  *path, last = dotted.split(".")
  for p in path:
    cfg = cfg[p]
  try:
    cfg[last] = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    cfg[last] = value


def load_config(path: str, arg: str = ""):
  """`get_config(arg)` of an experiment file, as research.main would build it (unlocked)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
