"""The three modes of `research.main` print nothing on stderr but the project's own lines (no absl,
Orbax, TensorFlow or JAX warning), as a user runs them: without the tests' TF_CPP_MIN_LOG_LEVEL.
(tests/test_clean_stderr.py covers the data pipeline alone.)"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.run_helpers import REPO, foreign_lines, main_command, subprocess_env

pytestmark = pytest.mark.slow


def _run(workdir: str, data_dir: str, *flags: str) -> subprocess.CompletedProcess:
  env = subprocess_env(data_dir, JAX_PLATFORMS="cpu")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  proc = subprocess.run(
    main_command(workdir, f"--config.data.data_dir={data_dir}", *flags),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_train_resume_sample_and_eval_print_only_the_projects_lines(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  runs = {
    # sample grids and a held-out eval inside the training loop, async saves at 4, 8 and 12
    "train": ("--config.train.sample_every=6", "--config.train.eval_every=12"),
    "resume": ("--config.train.num_steps=14",),  # restore, config-change note, one more save
    "sample": ("--mode=sample",),
    "eval": ("--mode=eval",),
  }
  for name, flags in runs.items():
    proc = _run(workdir, data_dir, *flags)
    assert not foreign_lines(proc.stderr), f"{name}:\n{proc.stderr[-3000:]}"
    assert "error" not in proc.stderr.lower(), f"{name}:\n{proc.stderr[-3000:]}"
  assert os.path.exists(os.path.join(workdir, "eval.json"))
