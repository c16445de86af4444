"""Faults a run survives: damaged checkpoints, `train.restore_step`, SIGKILL at random moments, a full
disk during a save, and workdirs that cannot be written.

The end-to-end cases run `research.main` in subprocesses on the tiny config (12 steps, checkpoints
at 4, 8 and 12) and compare final parameters bit for bit with an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from research.errors import UserError
from tests.run_helpers import (
  REPO,
  assert_same,
  final_params,
  foreign_lines,
  main_command,
  reference_run,
  run_main,
  subprocess_env,
)

STEPS = "--config.train.num_steps=12"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """An uninterrupted 12-step run (checkpoints 4, 8, 12) and its final parameters."""
  return reference_run(tmp_path_factory, data_dir, STEPS)


def _copy_run(reference, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(reference["workdir"], workdir)
  return workdir


def _steps(workdir: str) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _one_error(proc: subprocess.CompletedProcess) -> str:
  """The run's only stderr line, an `error:` line, with exit status 2."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


# Damaged checkpoints -----------------------------------------------------------------------------


def _truncate_arrays(step_dir: str) -> None:
  """Half of every array data file, as a full disk or an interrupted copy leaves them."""
  data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  for name in os.listdir(data):
    path = os.path.join(data, name)
    os.truncate(path, os.path.getsize(path) // 2)


def _empty_tree_metadata(step_dir: str) -> None:
  open(os.path.join(step_dir, "state", "_METADATA"), "w").close()


def _empty_config_json(step_dir: str) -> None:
  open(os.path.join(step_dir, "config", "metadata"), "w").close()


def _delete_manifest(step_dir: str) -> None:
  """The OCDBT manifest: the index without which no array can be found."""
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


@pytest.mark.slow
@pytest.mark.parametrize(
  "damage", [_truncate_arrays, _empty_tree_metadata, _empty_config_json, _delete_manifest]
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_step(
  tmp_path, data_dir, reference, damage
):
  workdir = _copy_run(reference, tmp_path)
  damage(os.path.join(workdir, "checkpoints", "12"))
  proc = run_main(workdir, data_dir, STEPS)
  notes = [line for line in proc.stderr.splitlines() if "skipped checkpoint" in line]
  assert len(notes) == 1, proc.stderr
  assert notes[0].startswith("note: skipped checkpoint step 12: ") and "12.damaged" in notes[0]
  assert "restored step 8 from" in proc.stderr
  assert not foreign_lines(proc.stderr), proc.stderr[-3000:]
  assert _steps(workdir) == ["12", "12.damaged", "4", "8"]  # kept, and ignored by Orbax
  assert_same(final_params(workdir, data_dir), reference)


@pytest.mark.slow
def test_no_restorable_checkpoint_is_a_one_line_error_naming_the_directory(
  tmp_path, data_dir, reference
):
  workdir = _copy_run(reference, tmp_path)
  for step in ("4", "8", "12"):
    _empty_tree_metadata(os.path.join(workdir, "checkpoints", step))
  proc = run_main(workdir, data_dir, "--mode=eval", check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"no checkpoint in {workdir}/checkpoints restores" in errors[0]
  assert len([line for line in proc.stderr.splitlines() if "skipped checkpoint" in line]) == 3
  assert not foreign_lines(proc.stderr), proc.stderr[-3000:]
  assert _steps(workdir) == ["12.damaged", "4.damaged", "8.damaged"]


@pytest.mark.slow
def test_checkpoint_of_another_config_is_refused_and_left_in_place(tmp_path, data_dir, reference):
  workdir = _copy_run(reference, tmp_path)
  for mode in ("train", "sample"):
    proc = run_main(workdir, data_dir, f"--mode={mode}", "--config.model.hidden=48", check=False)
    line = _one_error(proc)
    assert "model.hidden: 32 -> 48" in line
    assert ("another config" if mode == "train" else "does not hold this model") in line
    assert _steps(workdir) == ["12", "4", "8"]


@pytest.mark.slow
def test_load_trained_skips_a_damaged_step_and_takes_a_chosen_one(tmp_path, reference, capsys):
  from research.train.restore import load_trained

  workdir = _copy_run(reference, tmp_path)
  # (Truncated arrays may go unnoticed here: the model's parameters can lie in the intact half of
  # the data files, and load_trained reads those alone.)
  _delete_manifest(os.path.join(workdir, "checkpoints", "12"))
  assert load_trained(workdir, task_name="vae").step == 8
  assert "note: skipped checkpoint step 12: " in capsys.readouterr().err
  assert load_trained(workdir, step=4).step == 4
  assert _steps(workdir) == ["12.damaged", "4", "8"]


# train.restore_step -------------------------------------------------------------------------------


@pytest.mark.slow
def test_restore_step_in_sample_and_eval_reads_that_step_and_keeps_later_ones(
  tmp_path, data_dir, reference
):
  workdir = _copy_run(reference, tmp_path)
  proc = run_main(workdir, data_dir, "--mode=eval", "--config.train.restore_step=8")
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["step"] == 8
  assert not foreign_lines(proc.stderr), proc.stderr[-3000:]
  proc = run_main(workdir, data_dir, "--mode=sample", "--config.train.restore_step=6", check=False)
  line = _one_error(proc)
  assert "holds no step 6" in line and "4, 8, 12" in line
  assert _steps(workdir) == ["12", "4", "8"]


@pytest.mark.slow
def test_restore_step_in_training_supersedes_later_steps_and_resumes_exactly(
  tmp_path, data_dir, reference
):
  workdir = _copy_run(reference, tmp_path)
  proc = run_main(workdir, data_dir, STEPS, "--config.train.restore_step=4")
  assert "restored step 4 from" in proc.stderr
  notes = [line for line in proc.stderr.splitlines() if "moved aside" in line]
  assert len(notes) == 1 and "8.superseded, 12.superseded" in notes[0], proc.stderr
  assert not foreign_lines(proc.stderr), proc.stderr[-3000:]
  assert _steps(workdir) == ["12", "12.superseded", "4", "8", "8.superseded"]
  assert_same(final_params(workdir, data_dir), reference)  # the data order follows step 4
  # The same command again (a re-run after a preemption) continues; it does not go back again.
  proc = run_main(workdir, data_dir, STEPS, "--config.train.restore_step=4")
  assert "resuming from step 12" in proc.stderr and "already holds step 12" in proc.stderr
  assert _steps(workdir) == ["12", "12.superseded", "4", "8", "8.superseded"]


# SIGKILL at random moments ------------------------------------------------------------------------


def _read_until(proc: subprocess.Popen, text: str, deadline: float) -> bool:
  """Reads the child's output until a line holds `text` (True) or the child exits (False)."""
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      return False
    if text in line:
      return True
  proc.kill()
  raise AssertionError(f"{text!r} did not appear in time")


def _listing(folder: str) -> list[str]:
  return os.listdir(folder) if os.path.isdir(folder) else []


def _complete_steps(folder: str) -> list[int]:
  return [int(n) for n in _listing(folder) if n.isdigit()]


@pytest.mark.slow
def test_sigkill_at_five_random_moments_resumes_bit_identically(tmp_path_factory, data_dir):
  """Five kills, each at a seeded random moment: a random delay after the process start, after the
  "training" line or after a progress line, often right after a checkpoint step's line (its async
  save in flight). 24 steps, so five kills cannot run out of moments."""
  flags = ("--config.train.num_steps=24",)
  reference = reference_run(tmp_path_factory, data_dir, *flags)
  workdir = str(tmp_path_factory.mktemp("killed"))
  checkpoints = os.path.join(workdir, "checkpoints")
  rng = random.Random(20240611)
  deadline = time.time() + 600  # bounded, even on a loaded machine
  kills, mid_save = [], 0
  for _ in range(5):
    start = max(_complete_steps(checkpoints), default=0)
    lines = [f"step {s}/" for s in range(start + 2, 24, 2)]
    saves = [line for line in lines if int(line.split()[1].split("/")[0]) % 4 == 0]
    kind = rng.random()
    if kind < 0.1:
      text, delay = "", rng.uniform(0.5, 4.0)  # start-up: imports, data, restore
    elif kind < 0.25 or not lines:
      text, delay = "training ", rng.uniform(0.0, 1.0)  # compile, first steps
    elif kind < 0.6 and saves:
      text, delay = rng.choice(saves), rng.uniform(0.0, 0.05)  # during the save
    else:
      text, delay = rng.choice(lines), rng.uniform(0.0, 0.3)
    proc = subprocess.Popen(
      main_command(workdir, f"--config.data.data_dir={data_dir}", *flags),
      env=subprocess_env(data_dir),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=REPO,
    )
    if not text or _read_until(proc, text, deadline):
      time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    mid_save += any("tmp" in n for n in _listing(checkpoints))
    kills.append(f"from {start}: {delay:.2f}s after {text.strip() or 'the start'!r}")
  proc = run_main(workdir, data_dir, *flags)
  assert not foreign_lines(proc.stderr), proc.stderr[-3000:]
  assert not [n for n in os.listdir(checkpoints) if not n.isdigit()]
  print(f"kills: {'; '.join(kills)}; {mid_save} of them left a save in flight")
  assert_same(final_params(workdir, data_dir, *flags), reference)


# A full disk during a save ------------------------------------------------------------------------

# research.main with every file write into step N's temporary folder failing with ENOSPC, as a
# full disk fails them: Orbax writes each JSON item, the tree metadata and the commit marker through
# `Path.write_text` (the array data goes through TensorStore, out of Python's reach).
_FULL_DISK_AT_STEP = """
import errno, os, runpy, sys
from etils import epath
step = sys.argv.pop(1)
write_text = epath.gpath._GPath.write_text
def full(self, *args, **kwargs):
  if f"/{step}.orbax-checkpoint-tmp" in os.fspath(self):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
  return write_text(self, *args, **kwargs)
epath.gpath._GPath.write_text = full
sys.argv[0] = "research.main"
runpy.run_module("research.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", [8, 12])  # surfaces at the next save / at close()
def test_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(
  tmp_path, data_dir, reference, step
):
  from research.train.checkpoint import Checkpointer

  workdir = str(tmp_path)
  cmd = main_command(workdir, f"--config.data.data_dir={data_dir}", STEPS)
  proc = subprocess.run(
    [sys.executable, "-c", _FULL_DISK_AT_STEP, str(step), *cmd[3:]],
    env=subprocess_env(data_dir),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  line = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
  assert proc.returncode == 2 and len(line) == 1, proc.stderr[-3000:]
  assert f"checkpoint step {step} could not be written to {workdir}/checkpoints" in line[0]
  assert "No space left on device" in line[0]
  assert f"the last complete checkpoint (step {step - 4}) is kept" in line[0]
  assert not foreign_lines(proc.stderr), proc.stderr[-3000:]
  complete = [str(s) for s in range(4, step, 4)]
  partial = [n for n in _steps(workdir) if n not in complete]
  assert all(n.startswith(f"{step}.orbax-checkpoint-tmp") for n in partial), partial
  checkpointer = Checkpointer(workdir, save_every=4, writer=False)
  assert checkpointer.latest_step() == step - 4 and checkpointer.steps() == [4, 8][: step // 4 - 1]
  checkpointer.close()
  assert final_params(workdir, data_dir)["step"] == step - 4  # restorable
  run_main(workdir, data_dir, STEPS)  # space freed: the same command finishes the run exactly
  assert _steps(workdir) == ["12", "4", "8"]  # the partial step removed
  assert_same(final_params(workdir, data_dir), reference)


@pytest.mark.slow
def test_save_errors_surface_at_wait_and_close_as_user_errors(tmp_path, monkeypatch):
  import jax.numpy as jnp
  from etils import epath

  from research.train.checkpoint import Checkpointer

  write_text = epath.gpath._GPath.write_text
  failing: list[str] = []

  def full(self, *args, **kwargs):
    if any(f"/{s}.orbax-checkpoint-tmp" in os.fspath(self) for s in failing):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(epath.gpath._GPath, "write_text", full)
  state = {"w": jnp.arange(6.0).reshape(2, 3)}
  for where in ("wait", "close"):
    c = Checkpointer(str(tmp_path / where), save_every=1)
    c.save(1, state, {"a": 1}, {"b": 2})
    c.wait()
    failing[:] = ["2"]
    c.save(2, state, {"a": 1}, {"b": 2})
    with pytest.raises(UserError, match=r"step 2 could not be written .* \(step 1\) is kept"):
      getattr(c, where)()
    c.close()  # reported once: not again
    failing.clear()
    assert Checkpointer(str(tmp_path / where), save_every=1).steps() == [1]


def test_the_log_filter_drops_asyncio_reports_of_abandoned_tensorstore_io_and_keeps_others():
  """What CI once printed, on a real full disk and on a step without its OCDBT manifest: asyncio's
  "Future exception was never retrieved" for a sibling TensorStore write or read, with no Orbax
  frame in its traceback, but the errno or a TensorStore status line in its text. It is the failure
  `Checkpointer` already reported in one line; other asyncio errors stay."""
  import logging

  from research.train.faults import _LOG_FILTER

  def record(message: str, exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
      "asyncio", logging.ERROR, "base_events.py", 1771, message, (), (type(exc), exc, None)
    )

  enospc = ValueError("RESOURCE_EXHAUSTED: Error writing ... [os_error_code='28']")
  assert not _LOG_FILTER.filter(record("Future exception was never retrieved\nfuture: <F>", enospc))
  missing = ValueError("NOT_FOUND: Error opening \"zarr\" driver: ... [tensorstore_spec='{}']")
  assert not _LOG_FILTER.filter(
    record("Future exception was never retrieved\nfuture: <F>", missing)
  )
  short = ValueError('OUT_OF_RANGE: Error reading "params.kernel/0.0" in OCDBT database at ...')
  assert not _LOG_FILTER.filter(record("Future exception was never retrieved\nfuture: <F>", short))
  assert _LOG_FILTER.filter(record("Future exception was never retrieved", ValueError("a bug")))
  assert _LOG_FILTER.filter(
    record("Task exception was never retrieved", ValueError("NOT_FOUND: k"))
  )
  assert _LOG_FILTER.filter(record("Exception in callback f()", enospc))


# Workdirs that cannot hold a run ------------------------------------------------------------------


def _workdir_cases(tmp_path) -> dict[str, tuple[str, tuple[str, ...]]]:
  """name -> (workdir, the causes the error may name). Tests run as root, where chmod does not
  stop a write, so each case uses a place no permission bit governs."""
  regular = tmp_path / "a_file"
  regular.write_text("not a directory")
  return {
    # procfs: no directory can be created in it, not even by root.
    "proc": ("/proc/nope/run", ("No such file or directory",)),
    # sysfs: the kernel refuses new files and folders to everyone (read-only in some containers).
    "sys": ("/sys/research-test-run", ("Operation not permitted", "Read-only file system")),
    # the workdir is a regular file.
    "file": (str(regular), ("is not a directory",)),
    # a component of the path is a regular file.
    "under_file": (str(regular / "run"), ("Not a directory",)),
  }


@pytest.mark.parametrize("case", ["proc", "sys", "file", "under_file"])
def test_check_workdir_names_the_path_and_the_cause(tmp_path, case):
  from research.train.faults import check_workdir

  workdir, causes = _workdir_cases(tmp_path)[case]
  with pytest.raises(UserError) as e:
    check_workdir(workdir, create=True)
  message = str(e.value)
  assert workdir in message and any(c in message for c in causes) and "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "sample"])
@pytest.mark.parametrize("case", ["proc", "sys", "file", "under_file"])
def test_unusable_workdir_fails_in_research_main_before_any_data(tmp_path, case, mode):
  workdir, causes = _workdir_cases(tmp_path)[case]
  if mode == "sample" and case in ("proc", "sys", "under_file"):
    causes = ("no checkpoint in",)  # sample and eval need an existing workdir with checkpoints
  data_dir = tmp_path / "tfds"  # must stay untouched: the error comes before data preparation
  proc = run_main(workdir, str(data_dir), f"--mode={mode}", check=False, timeout=120)
  line = _one_error(proc)
  assert workdir in line and any(c in line for c in causes)
  assert not data_dir.exists()


def _in_private_mount(
  setup: str, cmd: list[str], data_dir: str, timeout: int = 120
) -> subprocess.CompletedProcess:
  """`cmd` in a new mount namespace after the shell `setup` (mounts vanish with the namespace;
  `unshare -r` makes it work for a non-root user too)."""
  if not shutil.which("unshare"):
    pytest.skip("no unshare(1)")
  probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
  if probe.returncode:
    pytest.skip(f"no private mount namespace here: {probe.stderr.decode()[:200]}")
  script = f'{setup} || exit 97; exec "$@"'
  proc = subprocess.run(
    ["unshare", "-rm", "sh", "-c", script, "sh", *cmd],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
    env=subprocess_env(data_dir),
  )
  if proc.returncode == 97:
    pytest.skip(f"mount not permitted here: {proc.stderr[:200]}")
  return proc


@pytest.mark.slow
def test_read_only_and_full_workdirs_fail_with_the_cause(tmp_path):
  """A read-only bind mount (EROFS) and a full 4 KiB tmpfs (ENOSPC), each in a private mount
  namespace of the run alone."""
  ro, full = tmp_path / "ro", tmp_path / "full"
  ro.mkdir()
  full.mkdir()
  data_dir = str(tmp_path / "tfds")
  flags = [f"--config.data.data_dir={data_dir}"]
  proc = _in_private_mount(
    f"mount --bind -o ro {ro} {ro}", main_command(str(ro / "run"), *flags), data_dir
  )
  line = _one_error(proc)
  assert str(ro / "run") in line and "Read-only file system" in line
  fill = (
    f"mount -t tmpfs -o size=4k tmpfs {full} && (cat /dev/zero > {full}/fill 2>/dev/null; true)"
  )
  proc = _in_private_mount(fill, main_command(str(full), *flags), data_dir)
  line = _one_error(proc)
  assert str(full) in line and "No space left on device" in line


@pytest.mark.slow
def test_a_real_full_disk_during_a_save(tmp_path, data_dir, reference):
  """The same as the injected ENOSPC, on a 2 MiB tmpfs that a first run (4 steps) and a filler
  leave 40 KiB of: the save of step 8 fails inside TensorStore, whose error carries the errno."""
  fs, out = tmp_path / "fs", tmp_path / "out"
  fs.mkdir()
  out.mkdir()
  run = main_command(str(fs / "run"), f"--config.data.data_dir={data_dir}")
  first = " ".join([*run, "--config.train.num_steps=4"])
  setup = (
    f"mount -t tmpfs -o size=2m tmpfs {fs} && {first} >/dev/null 2>&1 && "
    f"free=$(df -k {fs} | awk 'NR==2 {{print $4}}') && "
    f"dd if=/dev/zero of={fs}/fill bs=1k count=$((free - 40)) 2>/dev/null"
  )
  # the full run, then (space freed) the same command again, then the workdir copied out
  then = f"{' '.join([*run, STEPS])}; echo $? > {out}/rc; rm {fs}/fill; {' '.join([*run, STEPS])}"
  cmd = ["sh", "-c", f"{then} >/dev/null 2>{out}/resumed.err; cp -r {fs}/run {out}/run"]
  proc = _in_private_mount(setup, cmd, data_dir, timeout=300)
  assert (out / "rc").read_text().strip() == "2", proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  errors = [x for x in lines if x.startswith("error:")]
  assert len(errors) == 1 and not foreign_lines(proc.stderr), proc.stderr[-3000:]
  assert f"checkpoint step 8 could not be written to {fs}/run/checkpoints" in errors[0]
  assert "No space left on device" in errors[0] and "(step 4) is kept" in errors[0]
  assert not foreign_lines((out / "resumed.err").read_text())
  assert_same(final_params(str(out / "run"), data_dir), reference)


@pytest.mark.slow
def test_a_checkpoint_without_dataset_metadata_still_loads(tmp_path, data_dir):
  """Checkpoints written before the dataset metadata was saved beside the state (no `dataset`
  item) load through the one loader and the eval mode, their metadata read from TFDS."""
  from research.train.restore import load_trained

  workdir = str(tmp_path / "old")
  run_main(workdir, data_dir, "--config.train.num_steps=4")
  step_dir = os.path.join(workdir, "checkpoints", "4")
  shutil.rmtree(os.path.join(step_dir, "dataset"))  # what an older checkpoint looks like
  trained = load_trained(workdir)
  assert trained.step == 4 and trained.info.image_shape == (8, 8, 1)
  assert trained.info.num_classes == 10 and trained.info.num_eval == 359
  proc = run_main(workdir, data_dir, "--mode=eval")
  assert '"num_examples": 359.0' in proc.stdout
