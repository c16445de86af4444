"""End-to-end runs of `research.main`: resume after SIGTERM / SIGKILL, restore onto another mesh,
sample and eval files, the multi-process path, and one-line errors."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import portpicker
import pytest

from tests.run_helpers import (
  assert_same,
  final_params,
  main_command,
  reference_run,
  run_main,
  subprocess_env,
)

pytestmark = pytest.mark.slow
STEPS = "--config.train.num_steps=12"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """An uninterrupted 12-step run: the parameters every interrupted run must end with."""
  return reference_run(tmp_path_factory, data_dir, STEPS)


_assert_same = assert_same


def _leaves(tree):
  import jax

  return jax.tree.leaves(tree)


def _start(workdir, data_dir, *flags, devices=1):
  cmd = main_command(workdir, f"--config.data.data_dir={data_dir}", *flags)
  return subprocess.Popen(
    cmd,
    env=subprocess_env(data_dir, devices),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait_for(proc, text, timeout=240):
  """Reads the child's output until `text` appears; returns everything read."""
  seen, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    seen.append(line)
    if text in line:
      return "".join(seen)
  proc.kill()
  raise AssertionError(f"{text!r} never appeared:\n{''.join(seen)[-3000:]}")


def test_sigterm_saves_and_resumes_to_the_same_parameters(tmp_path, data_dir, reference):
  workdir = str(tmp_path)
  # Slow the run down so SIGTERM lands mid-training: the step itself is fast.
  proc = _start(workdir, data_dir, STEPS, "--config.train.num_steps=400")
  _wait_for(proc, "step 6/")
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "SIGTERM: saved step" in out
  stopped = final_params(workdir, data_dir)
  assert 6 <= stopped["step"] < 400
  # Same command again (with the original length): resumes and finishes.
  run_main(workdir, data_dir, STEPS)
  # Steps past 12 were never taken... unless SIGTERM landed after 12; then compare up to there.
  if stopped["step"] <= 12:
    _assert_same(final_params(workdir, data_dir), reference)


def test_sigkill_at_any_moment_resumes_from_the_last_complete_checkpoint(
  tmp_path, data_dir, reference
):
  workdir = str(tmp_path)
  proc = _start(workdir, data_dir, STEPS)
  # The checkpoint of step 8 is written asynchronously right after its log line: kill then.
  _wait_for(proc, "step 8/")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  leftovers = os.listdir(os.path.join(workdir, "checkpoints"))
  # Usually a save is still in flight here ("<step>.orbax-checkpoint-tmp"): an incomplete
  # checkpoint that the resumed run must ignore.
  assert leftovers, leftovers
  run_main(workdir, data_dir, STEPS)
  assert not [f for f in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in f]
  _assert_same(final_params(workdir, data_dir), reference)


def test_restore_onto_a_different_device_count(tmp_path, data_dir, reference):
  workdir = str(tmp_path)
  run_main(workdir, data_dir, "--config.train.num_steps=4", devices=4)
  run_main(workdir, data_dir, STEPS, "--config.mesh.fsdp=2", devices=2)
  resumed = final_params(workdir, data_dir)
  assert resumed["step"] == 12
  for x, y in zip(_leaves(resumed["params"]), _leaves(reference["params"]), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_sample_and_eval_write_their_files(tmp_path, data_dir):
  # A relative --workdir, as in the README (Orbax itself needs absolute paths).
  workdir = str(tmp_path / "run")
  run_main(
    "run",
    data_dir,
    "--config.train.num_steps=4",
    "--config.train.sample_every=2",
    "--config.train.eval_every=4",
    cwd=str(tmp_path),
  )
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
    "step_0000002.png",
    "step_0000004.png",
  ]
  events = [f for f in os.listdir(os.path.join(workdir, "tensorboard")) if "tfevents" in f]
  assert len(events) == 1
  tags = _event_tags(os.path.join(workdir, "tensorboard", events[0]))
  assert {"model/loss", "model/grad_norm", "model/lr", "eval/iwae8_nll_nats", "samples"} <= tags
  run_main(workdir, data_dir, "--mode=sample")
  with np.load(os.path.join(workdir, "samples.npz")) as f:
    images = f["images"]
  assert images.shape == (16, 8, 8, 1) and images.dtype == np.uint8
  for name in ("samples.png", "reconstructions.png", "interpolation.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 100
  proc = run_main(workdir, data_dir, "--mode=eval")
  results = json.load(open(os.path.join(workdir, "eval.json")))
  assert results["step"] == 4
  assert results["neg_elbo_nats"] >= results["iwae8_nll_nats"] > 0
  assert '"iwae8_nll_nats"' in proc.stdout


def _event_tags(path):
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

  return {v.tag for event in EventFileLoader(path).Load() for v in event.summary.value}


def test_two_processes_reach_the_same_parameters_as_one(tmp_path, data_dir):
  """The real multi-host path: 2 processes x 2 CPU devices (gloo) against 1 process x 4 devices.

  Global batch = the whole 64-example split, unshuffled, so both layouts see identical batches.
  """
  flags = [
    STEPS,
    "--config.data.split=train[:64]",
    "--config.batch_size=64",
    "--config.data.shuffle_buffer=0",
    "--config.train.checkpoint_every=6",
  ]
  single = str(tmp_path / "single")
  run_main(single, data_dir, *flags, devices=4)
  multi = str(tmp_path / "multi")
  port = portpicker.pick_unused_port()
  procs = [
    subprocess.Popen(
      main_command(
        multi,
        f"--config.data.data_dir={data_dir}",
        *flags,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      env=subprocess_env(data_dir, devices=2),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
  assert "on 4 devices" in outs[0]
  a, b = final_params(single, data_dir, *flags), final_params(multi, data_dir, *flags)
  assert a["step"] == b["step"] == 12
  for x, y in zip(_leaves(a["params"]), _leaves(b["params"]), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "flags,expected",
  [
    (["--config.model.name=unet9000"], "unknown model 'unet9000'"),
    (["--config.task.name=gpt7"], "unknown task 'gpt7'"),
    (["--config.batch_size=30"], "does not divide by the 4 devices"),
    (["--config.data.name=cifar10", "--config.data.data_dir={empty}"], "not prepared"),
    (["--mode=eval"], "no checkpoint"),
    (["--config.train.num_stepz=3"], 'Did you mean "num_steps"'),
    (["--config.train.num_steps=abc"], "--config.train.num_steps=abc"),
    (["--config.optim.model.schedule=cosinus"], "unknown schedule 'cosinus'"),
    (["--config.task.likelihood=gaussian"], "unknown likelihood 'gaussian'"),
    (["--config.train.log_every=0"], "config.train.log_every=0 must be at least 1"),
    (["--config.train.grad_accum=3"], "does not split into 3 micro-batches"),
    (["--config.eval.batch_size=62"], "set config.eval.batch_size to a multiple of 4"),
    (["--config.model.channels=(8,16,32,64)"], "config.model does not fit the data (8, 8, 1)"),
    (["--config.model.dtype=bf16"], "unknown dtype 'bf16'"),
  ],
)
def test_bad_input_gets_a_one_line_error(tmp_path, data_dir, flags, expected):
  empty = tmp_path / "empty"
  empty.mkdir()
  flags = [f.format(empty=empty) for f in flags]
  proc = run_main(str(tmp_path / "w"), data_dir, *flags, devices=4, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_bad_config_file_or_argument_gets_a_one_line_error(tmp_path):
  for config, expected in [
    ("experiments/nope.py", "No such file"),
    ("experiments/vae_mnist.py:runlocl", "unknown config argument 'runlocl'"),
  ]:
    proc = run_main(str(tmp_path), str(tmp_path), config=config, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr


def test_checkpoint_from_another_config_is_refused(tmp_path, data_dir):
  workdir = str(tmp_path)
  run_main(workdir, data_dir, "--config.train.num_steps=4")
  proc = run_main(workdir, data_dir, STEPS, "--config.model.hidden=48", check=False)
  assert proc.returncode == 2
  assert "another config" in proc.stderr and "model.hidden: 32 -> 48" in proc.stderr


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path)
  run_main(workdir, data_dir, "--config.train.num_steps=4")
  # A learning rate of 1e30 blows the parameters up within a step or two of resuming.
  proc = run_main(workdir, data_dir, STEPS, "--config.optim.model.learning_rate=1e30", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = [x for x in proc.stderr.splitlines() if x.startswith("error:")][0]
  assert "became non-finite at step" in line and "last good checkpoint (step 4)" in line
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
