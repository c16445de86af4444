"""Running `research.main` in subprocesses and reading back what a run left in its workdir."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "vae_tiny.py")


# The beginnings of every line research.main writes on stderr (grep research/ for file=sys.stderr):
# progress goes to stdout; anything else on stderr is a third-party line that leaked.
OWN_STDERR = (
  "training ",  # loop: what is trained, from which step, on which mesh
  "restored step ",  # setup: the step a run resumed from
  "note: ",  # config changes, skipped/superseded checkpoints, skipped metrics
  "wrote ",  # sample mode: the files written
  "generating ",  # first build of an offline dataset
  "computing reference statistics ",  # eval: the first FID reference of a dataset
  "workdir already holds step ",  # a finished run re-run
  "SIGTERM: saved step ",  # preemption
  "error: ",  # one-line errors
)


def foreign_lines(stderr: str) -> list[str]:
  """The lines of `stderr` that research.main did not write."""
  return [line for line in stderr.splitlines() if line and not line.startswith(OWN_STDERR)]


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
  exp = setup.build(cfg, workdir)
  exp.checkpointer.close()
  assert exp.restored_step is not None, f"no checkpoint in {workdir}"
  return {
    "step": exp.restored_step,
    "params": jax.tree.map(np.asarray, jax.device_get(exp.state.parts["model"].params)),
  }


def evaluation(exp):
  """The shared `Evaluation` of a set-up run (`setup.build` or `setup.build_inference`)."""
  from research.eval import run as eval_run

  return eval_run.Evaluation(exp.config, exp.task, exp.mesh, exp.info, exp.workdir)


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


def tiny_classifier_config(data_dir: str, steps: int = 100, dataset: str = "offline_digits"):
  """experiments/digits_classifier.py on the 8x8 offline digits (or `dataset`), shrunk to seconds."""
  c = load_config(os.path.join(REPO, "experiments", "digits_classifier.py"), f"data={dataset}")
  c.data.data_dir = data_dir
  c.data.shuffle_buffer = 2_000
  c.batch_size = 64
  c.model.channels = (16, 32)
  c.model.convs_per_stage = 1
  c.model.hidden = 64
  c.model.dropout = 0.1
  c.task.shift = 0
  c.optim.model.learning_rate = 3e-3
  c.optim.model.warmup_steps = 10
  c.train.ema_decay = 0.9  # a short run: the EMA must forget the initial weights
  c.train.num_steps = steps
  c.train.log_every = steps
  c.train.checkpoint_every = steps
  c.eval.batch_size = 128
  return c


_REFERENCES: dict[tuple[str, tuple[str, ...]], dict] = {}


def reference_run(tmp_path_factory, data_dir: str, *flags: str) -> dict:
  """An uninterrupted run of the tiny config with `flags`, once per test process: its workdir
  (checkpoints 4, 8, 12 for 12 steps) and its final parameters, which every interrupted, damaged
  or rewound run must end with."""
  key = (data_dir, flags)
  if key not in _REFERENCES:
    workdir = str(tmp_path_factory.mktemp("reference"))
    run_main(workdir, data_dir, *flags)
    _REFERENCES[key] = {"workdir": workdir, **final_params(workdir, data_dir)}
  return _REFERENCES[key]


def assert_same(a: dict, b: dict) -> None:
  """Bit-identical parameters at the same step (`final_params` results)."""
  assert a["step"] == b["step"]
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
    np.testing.assert_array_equal(x, y)


def scored_vae_tiny(tmp_path_factory, data_dir: str, classifier: str, kid_subsets: int = 20):
  """(config, feature net, mesh): the tiny VAE config scored in the features of a tiny digits
  classifier (a workdir of the `trained_classifier` fixture), with a reference cache of its own."""
  from research.eval import feature_nets
  from research.train import sharding as shd
  from tests.configs import vae_tiny

  c = vae_tiny.get_config()
  c.data.data_dir = data_dir
  c.eval.batch_size = 128
  c.eval.feature_net = "digits_classifier"
  c.eval.classifier_workdir = classifier
  c.eval.reference_cache_dir = str(tmp_path_factory.mktemp("reference_cache"))
  c.eval.sample_batch_size = 64
  c.eval.kid_subsets = kid_subsets
  net = feature_nets.FEATURE_NETS.get("digits_classifier")(c.eval)
  return c, net, shd.make_mesh()
