"""Config parsing and the benchmark harness."""

import json
import subprocess
import sys

import pytest

from research.config import base_config, parse_arg
from research.errors import UserError
from tests.run_helpers import REPO, subprocess_env


def test_parse_arg_types_and_defaults():
  arg = parse_arg("runlocal,batch=32,name=x", runlocal=False, batch=128, name="a", lr=0.1)
  assert arg.runlocal is True and arg.batch == 32 and arg.name == "x" and arg.lr == 0.1
  assert parse_arg(None, runlocal=False).runlocal is False
  with pytest.raises(UserError, match="unknown config argument 'bach'"):
    parse_arg("bach=3", batch=1)


def test_base_config_is_locked_against_typos():
  c = base_config()
  c.lock()
  with pytest.raises(AttributeError):
    c.train.num_stepz = 3


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
