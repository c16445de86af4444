"""Config parsing and the benchmark harness."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from research.config import parse_arg
from research.errors import UserError
from tests.run_helpers import REPO, subprocess_env


def test_parse_arg_types_and_defaults():
  arg = parse_arg("runlocal,batch=32,name=x", runlocal=False, batch=128, name="a", lr=0.1)
  assert arg.runlocal is True and arg.batch == 32 and arg.name == "x" and arg.lr == 0.1
  assert parse_arg(None, runlocal=False).runlocal is False
  with pytest.raises(UserError, match="unknown config argument 'bach'"):
    parse_arg("bach=3", batch=1)


def test_parse_arg_booleans_are_parsed_not_cast():
  assert parse_arg("runlocal=false", runlocal=True).runlocal is False
  assert parse_arg("runlocal=1", runlocal=False).runlocal is True
  with pytest.raises(UserError, match="not a boolean"):
    parse_arg("runlocal=maybe", runlocal=False)


def test_schedules_count_steps_even_for_parts_updated_several_times_per_step():
  from research.config import adam
  from research.train.optim import make_optimizer

  c = adam(1.0, schedule="linear", warmup_steps=0, end_lr_factor=0.0)
  # A critic updated 5 times per step: after 5 updates (1 step of 10) the lr must be 0.9, not 0.5.
  tx = make_optimizer(c, num_steps=10, updates_per_step=5)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  for _ in range(5):
    _, state = tx.update({"w": jnp.ones(())}, state, params)
  updates, _ = tx.update({"w": jnp.ones(())}, state, params)
  # Adam's normalised step is ~1 for a constant gradient, so the update is ~ -lr.
  assert float(updates["w"]) == pytest.approx(-0.9, rel=1e-3)


def test_hold_then_linear_decay_is_pix2pix_schedule():
  """pix2pix / CycleGAN: the base rate for the first half, then linear decay to 0 at the end."""
  from research.config import adam
  from research.train.optim import make_schedule

  schedule = make_schedule(adam(2e-4, schedule="linear", hold_steps=100), num_steps=200)
  lrs = [float(schedule(k)) for k in (0, 99, 100, 150, 200)]
  np.testing.assert_allclose(lrs, [2e-4, 2e-4, 2e-4, 1e-4, 0.0], rtol=1e-6, atol=1e-12)


def test_config_diff_ignores_tuple_vs_list():
  from research.train.checkpoint import config_diff

  saved = {"model": {"channels": [8, 16], "hidden": 32}}
  assert config_diff(saved, {"model": {"channels": (8, 16), "hidden": 32}}) == []
  assert config_diff(saved, {"model": {"channels": (8, 16), "hidden": 48}}) == [
    "model.hidden: 32 -> 48"
  ]


def test_a_typo_in_a_config_override_is_a_one_line_error_naming_the_key(tmp_path):
  """research.main loads experiment configs locked: an override of a key that does not exist
  fails before anything runs, with the closest key suggested."""
  cmd = [
    sys.executable, "-m", "research.main", "--config=tests/configs/vae_tiny.py",
    f"--workdir={tmp_path / 'w'}", "--config.train.num_stepz=3",
  ]  # fmt: skip
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=subprocess_env(""))
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
  assert "num_stepz" in lines[0] and "num_steps" in lines[0]
  assert not (tmp_path / "w").exists()  # nothing ran


def test_every_experiment_config_loads_without_jax():
  """Experiment configs import only ml_collections and research.config, so they load in
  milliseconds on any machine (each family's tests build its configs' tasks, whose factories
  refuse config.task keys the task does not take)."""
  import ast
  import glob
  import os

  for path in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py"))):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      else:
        continue
      for name in names:
        top = name.split(".")[0]
        assert name in ("research.config", "__future__") or top == "ml_collections", (path, name)
  code = (
    "import glob, sys, importlib.util\n"
    "for p in sorted(glob.glob('experiments/*.py')):\n"
    "  spec = importlib.util.spec_from_file_location('c', p)\n"
    "  m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.get_config()\n"
    "heavy = [m for m in ('jax', 'flax', 'tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
    "print(heavy)\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
  )
  assert proc.stdout.strip() == "[]", proc.stdout


def test_benchmark_prints_one_json_line(tmp_path):
  cmd = [
    sys.executable,
    "benchmarks/train_step.py",
    "--config=tests/configs/vae_tiny.py",
    "--steps=2",
    "--image_shape=8,8,1",
    "--num_classes=10",
    "--peak_tflops=1.0",
  ]
  proc = subprocess.run(
    cmd,
    cwd=REPO,
    env=subprocess_env(str(tmp_path), devices=2),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result["devices"] == 2 and result["batch_size"] == 32
  assert result["step_ms"] > 0 and result["compile_s"] > 0
  assert result["images_per_s"] == pytest.approx(32 / (result["step_ms"] / 1e3), rel=1e-2)
  assert result["xla_gflop_per_step"] > 0 and 0 < result["utilisation"] < 1


def test_sampling_benchmark_prints_one_json_line(tmp_path):
  cmd = [
    sys.executable,
    "benchmarks/sample.py",
    "--config=tests/configs/ddpm_tiny.py",
    "--num=8",
    "--image_shape=8,8,1",
    "--num_classes=10",
    "--repeats=1",
  ]
  proc = subprocess.run(
    cmd,
    cwd=REPO,
    env=subprocess_env(str(tmp_path), devices=2),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][0])
  assert result["sampler"] == "ddim" and result["steps"] == 10 and result["devices"] == 2
  assert result["images_per_s"] == pytest.approx(8 / result["seconds_per_call"], rel=1e-2)
