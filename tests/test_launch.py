"""Tests for the launch/ scripts, with stand-ins for `gcloud` and `python` on PATH.

The stand-in gcloud appends its argv (one JSON list per line) to $GCLOUD_LOG and exits 0,
so the tests check the exact gcloud commands the scripts build. The remote command lines
that would run on the TPU workers are also run here, in a fake home directory, to check
that quoting, the pid file and the stop-by-pid logic work end to end.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU_SCRIPTS = [
  "tpu_create.sh",
  "tpu_setup.sh",
  "tpu_run.sh",
  "tpu_logs.sh",
  "tpu_stop.sh",
  "tpu_delete.sh",
]
ALL_SCRIPTS = TPU_SCRIPTS + ["gpu_local.sh"]
SYS_PATH = "/usr/local/bin:/usr/bin:/bin"
TPU = ["compute", "tpus", "tpu-vm"]
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

# Arguments for research.main that need careful quoting on their way to the workers.
TRICKY_ARGS = [
  "--config=experiments/vae_mnist.py:runlocal,batch=8",
  "--workdir=gs://bucket/runs/my run",
  '--config.note=it\'s $HOME "q" `x` a;b & c',
  "--config.optim.lr=1e-3",
]

FAKE_GCLOUD = """\
#!{python}
import json, os, shutil, sys
with open(os.environ["GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
dest = os.environ.get("FAKE_SCP_COPY")
if dest and sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "scp"]:
  shutil.copytree(sys.argv[6], dest)  # scp --recurse SRC NAME:DEST
"""

# Stand-in for the python that research.main runs under: records its argv and environment,
# then waits for SIGTERM (as the trainer would, to save a checkpoint) and exits.
FAKE_PYTHON = """\
#!{python}
import json, os, signal, sys, time
out = os.environ["FAKE_PYTHON_OUT"]
def on_term(*_):
  open(out + ".term", "w").write("TERM")
  sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
keys = ["RESEARCH_DISTRIBUTED", "TFDS_DATA_DIR", "XLA_PYTHON_CLIENT_MEM_FRACTION",
        "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "MY_FLAG"]
rec = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(),
       "env": {{k: os.environ[k] for k in keys if k in os.environ}}}}
with open(out + ".tmp", "w") as f:
  json.dump(rec, f)
os.rename(out + ".tmp", out)
if os.environ.get("FAKE_PYTHON_WAIT"):
  print("training...", flush=True)
  time.sleep(20)
"""


def write_exe(path: Path, text: str) -> Path:
  path.write_text(text)
  path.chmod(0o755)
  return path


@pytest.fixture
def env(tmp_path):
  """Environment with the stand-in gcloud first on PATH and no TPU settings inherited."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_exe(bin_dir / "gcloud", FAKE_GCLOUD.format(python=sys.executable))
  e = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR")}
  e.update(PATH=f"{bin_dir}:{SYS_PATH}", GCLOUD_LOG=str(tmp_path / "gcloud.log"))
  return e


def run(script, *args, env, extra_env=None, check=True):
  e = dict(env, **(extra_env or {}))
  p = subprocess.run(
    ["bash", str(LAUNCH / script), *args], env=e, capture_output=True, text=True, timeout=30
  )
  if check and p.returncode != 0:
    raise AssertionError(
      f"{script} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    )
  return p


def calls(env):
  log = Path(env["GCLOUD_LOG"])
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def remote_command(call):
  """The --command value of a recorded `tpu-vm ssh` call."""
  assert call[:4] == TPU + ["ssh"], call
  return call[call.index("--command") + 1]


def only_call(env):
  (c,) = calls(env)
  return c


# ---------------------------------------------------------------- generic behaviour


@pytest.mark.parametrize("script", ALL_SCRIPTS + ["common.sh"])
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_script_header_and_help(script, env):
  text = (LAUNCH / script).read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in text
  assert os.access(LAUNCH / script, os.X_OK)
  p = run(script, "--help", env=env)
  assert f"Usage: launch/{script}" in p.stdout
  assert calls(env) == []


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_missing_name_prints_usage(script, env):
  p = run(script, env=env, check=False)
  assert p.returncode != 0
  assert f"Usage: launch/{script}" in p.stderr
  assert calls(env) == []


def test_unknown_option_is_an_error(env):
  p = run("tpu_create.sh", "pod", "--zonee=x", env=env, check=False)
  assert p.returncode == 2 and "unknown option: --zonee=x" in p.stderr
  assert calls(env) == []


def test_dry_run_prints_instead_of_running(env):
  p = run("tpu_create.sh", "pod", "--dry-run", env=env, extra_env={"PROJECT": "my project"})
  assert calls(env) == []
  (line,) = p.stdout.splitlines()
  assert shlex.split(line) == [
    "gcloud",
    *TPU,
    "create",
    "pod",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--zone=us-central2-b",
    "--project=my project",
  ]
  p = run("tpu_run.sh", "pod", "--", *TRICKY_ARGS, env=env, extra_env={"DRY_RUN": "1"})
  assert calls(env) == []
  assert shlex.split(p.stdout)[:5] == ["gcloud", *TPU, "ssh"]


# ---------------------------------------------------------------- create / delete


def test_create_defaults(env):
  run("tpu_create.sh", "my-pod", env=env)
  assert only_call(env) == TPU + [
    "create",
    "my-pod",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--zone=us-central2-b",
  ]


def test_create_from_env_and_flags(env):
  extra = {
    "ZONE": "europe-west4-a",
    "ACCELERATOR_TYPE": "v3-32",
    "PROJECT": "proj",
    "PREEMPTIBLE": "1",
    "GCLOUD_FLAGS": "--verbosity=error",
  }
  run("tpu_create.sh", "pod", env=env, extra_env=extra)
  run(
    "tpu_create.sh",
    "--zone",
    "us-west4-a",
    "pod2",
    "--accelerator-type=v5litepod-16",
    "--version=v2-alpha-tpuv5-lite",
    "--spot",
    "--",
    "--network=my-net",
    env=env,
    extra_env=extra,
  )
  assert calls(env) == [
    TPU
    + [
      "create",
      "pod",
      "--accelerator-type=v3-32",
      "--version=tpu-ubuntu2204-base",
      "--preemptible",
      "--zone=europe-west4-a",
      "--project=proj",
      "--verbosity=error",
    ],
    TPU
    + [
      "create",
      "pod2",
      "--accelerator-type=v5litepod-16",
      "--version=v2-alpha-tpuv5-lite",
      "--spot",
      "--preemptible",
      "--network=my-net",
      "--zone=us-west4-a",
      "--project=proj",
      "--verbosity=error",
    ],
  ]


def test_delete_is_quiet(env):
  run("tpu_delete.sh", "my-pod", "--zone=us-east1-d", env=env)
  assert only_call(env) == TPU + ["delete", "my-pod", "--quiet", "--zone=us-east1-d"]


# ---------------------------------------------------------------- setup


@pytest.fixture
def fake_repo(tmp_path):
  repo = tmp_path / "checkout"
  (repo / "research").mkdir(parents=True)
  (repo / "research" / "__init__.py").write_text("")
  (repo / "research" / "main.py").write_text("print('hi')\n")
  (repo / "requirements-tpu.txt").write_text("flax\n")
  (repo / ".gitignore").write_text("venv/\n/workdirs/\n__pycache__/\n")
  for junk in ["venv/bin/python", "workdirs/run/ckpt", "research/__pycache__/main.pyc"]:
    (repo / junk).parent.mkdir(parents=True, exist_ok=True)
    (repo / junk).write_text("junk")
  (repo / "gone.py").write_text("")
  git = ["git", "-C", str(repo)]
  subprocess.run([*git, "init", "-q"], check=True)
  subprocess.run([*git, "add", "research/main.py", "gone.py"], check=True)
  (repo / "gone.py").unlink()  # tracked but deleted: must not break the copy
  return repo


def test_setup_copies_repo_and_installs(env, fake_repo, tmp_path):
  copied = tmp_path / "copied"
  run(
    "tpu_setup.sh",
    "my-pod",
    env=env,
    extra_env={"REPO_DIR": str(fake_repo), "FAKE_SCP_COPY": str(copied)},
  )
  scp, ssh = calls(env)
  assert scp[:5] == TPU + ["scp", "--recurse"]
  assert Path(scp[5]).name == "research" and not Path(scp[5]).exists()  # staged copy, cleaned up
  assert scp[6:] == ["my-pod:", "--worker=all", "--zone=us-central2-b"]
  files = sorted(str(p.relative_to(copied)) for p in copied.rglob("*") if p.is_file())
  assert files == [".gitignore", "requirements-tpu.txt", "research/__init__.py", "research/main.py"]

  assert ssh[:6] == TPU + ["ssh", "my-pod", "--worker=all"]
  cmd = remote_command(ssh)
  steps = [
    "cd ~/research",
    "python3 -m venv ~/venv",
    ". ~/venv/bin/activate",
    f"pip install -U 'jax[tpu]' -f {LIBTPU}",
    "pip install -r requirements-tpu.txt",
    "pip install -e .",
  ]
  positions = [cmd.index(s) for s in steps]
  assert positions == sorted(positions), cmd
  subprocess.run(["bash", "-n", "-c", cmd], check=True)


def test_setup_git_clone_mode(env):
  extra = {
    "REPO_URL": "https://example.com/me/research.git",
    "REPO_REF": "my branch",
    "JAX_TPU_SPEC": "jax[tpu]==0.4.35",
  }
  run("tpu_setup.sh", "pod", env=env, extra_env=extra)
  cmd = remote_command(only_call(env))  # no scp
  assert "git clone https://example.com/me/research.git ~/research" in cmd
  assert "git checkout 'my branch'" in cmd
  assert f"pip install -U 'jax[tpu]==0.4.35' -f {LIBTPU}" in cmd
  assert cmd.index("git clone") < cmd.index("pip install -e .")


def test_setup_remote_command_is_idempotent(env, fake_repo, tmp_path):
  """Runs the worker-side setup twice in a fake home: the venv is created once, pip runs in order."""
  run("tpu_setup.sh", "pod", env=env, extra_env={"REPO_DIR": str(fake_repo)})
  cmd = remote_command(calls(env)[1])
  home, fbin, log = tmp_path / "home", tmp_path / "worker_bin", tmp_path / "worker.log"
  (home / "research").mkdir(parents=True)
  fbin.mkdir()
  write_exe(
    fbin / "python3",
    textwrap.dedent("""\
    #!/bin/bash
    echo "python3 $*" >> "$WORKER_LOG"
    [ "$1 $2" = "-m venv" ] || exit 1
    mkdir -p "$3/bin"
    echo "export PATH=\\"$3/bin:\\$PATH\\"" > "$3/bin/activate"
    printf '#!/bin/bash\\necho "pip $(basename "$PWD") $*" >> "$WORKER_LOG"\\n' > "$3/bin/pip"
    chmod +x "$3/bin/pip"
    """),
  )
  write_exe(fbin / "sudo", '#!/bin/bash\necho "sudo $*" >> "$WORKER_LOG"; exit 1\n')
  worker_env = {"HOME": str(home), "PATH": f"{fbin}:{SYS_PATH}", "WORKER_LOG": str(log)}
  for _ in range(2):
    p = subprocess.run(
      ["bash", "-c", cmd], env=worker_env, capture_output=True, text=True, timeout=10
    )
    assert p.returncode == 0, p.stderr
    assert "setup done on" in p.stdout
  pip_runs = [
    "pip research install -q -U pip",
    f"pip research install -U jax[tpu] -f {LIBTPU}",
    "pip research install -r requirements-tpu.txt",
    "pip research install -e .",
  ]
  assert log.read_text().splitlines() == [f"python3 -m venv {home}/venv"] + pip_runs * 2


# ---------------------------------------------------------------- run / stop / logs


def test_run_command(env):
  run(
    "tpu_run.sh",
    "pod",
    "--",
    *TRICKY_ARGS,
    env=env,
    extra_env={"TFDS_DATA_DIR": "gs://b/tensorflow datasets"},
  )
  call = only_call(env)
  assert call[:6] == TPU + ["ssh", "pod", "--worker=all"]
  assert call[-1] == "--zone=us-central2-b"
  cmd = remote_command(call)
  assert "cd ~/research && . ~/venv/bin/activate || exit 1" in cmd
  assert (
    "RESEARCH_DISTRIBUTED=1 TFDS_DATA_DIR='gs://b/tensorflow datasets' nohup python -m research.main "
    in cmd
  )
  assert (
    "--config=experiments/vae_mnist.py:runlocal,batch=8 '--workdir=gs://bucket/runs/my run'" in cmd
  )
  assert "> ~/research_run.log 2>&1 < /dev/null &\necho $! > ~/research_run.pid" in cmd
  subprocess.run(["bash", "-n", "-c", cmd], check=True)


def test_run_without_tfds_dir_passes_none(env):
  run("tpu_run.sh", "pod", "--", "--config=experiments/x.py", env=env)
  cmd = remote_command(only_call(env))
  assert "TFDS_DATA_DIR" not in cmd
  assert "RESEARCH_DISTRIBUTED=1 nohup python -m research.main --config=experiments/x.py >" in cmd


def test_run_needs_args(env):
  p = run("tpu_run.sh", "pod", env=env, check=False)
  assert p.returncode == 2 and "Usage:" in p.stderr and calls(env) == []


def test_stop_command(env):
  run("tpu_stop.sh", "pod", env=env)
  call = only_call(env)
  assert call[:6] == TPU + ["ssh", "pod", "--worker=all"]
  cmd = remote_command(call)
  assert "kill -TERM $(cat ~/research_run.pid)" in cmd
  assert "killall" not in cmd and "pkill" not in cmd
  subprocess.run(["bash", "-n", "-c", cmd], check=True)


def test_run_then_stop_on_a_fake_worker(env, tmp_path):
  """Runs the worker-side run/stop commands for real: quoting, pid file, SIGTERM, no double start."""
  extra = {
    "TFDS_DATA_DIR": "gs://b/tfds",
    "PASS_ENV": "MY_FLAG",
    "MY_FLAG": "a b",
    "STOP_TIMEOUT": "10",
  }
  run("tpu_run.sh", "pod", "--", *TRICKY_ARGS, env=env, extra_env=extra)
  run("tpu_stop.sh", "pod", env=env, extra_env=extra)
  run_cmd, stop_cmd = (remote_command(c) for c in calls(env))

  home, out = tmp_path / "home", tmp_path / "python.json"
  (home / "research").mkdir(parents=True)
  (home / "venv" / "bin").mkdir(parents=True)
  (home / "venv" / "bin" / "activate").write_text('export PATH="$HOME/venv/bin:$PATH"\n')
  write_exe(home / "venv" / "bin" / "python", FAKE_PYTHON.format(python=sys.executable))
  worker_env = {
    "HOME": str(home),
    "PATH": SYS_PATH,
    "FAKE_PYTHON_OUT": str(out),
    "FAKE_PYTHON_WAIT": "1",
  }

  def worker(cmd):
    return subprocess.run(
      ["bash", "-c", cmd], env=worker_env, capture_output=True, text=True, timeout=15
    )

  pid = None
  try:
    p = worker(run_cmd)  # returns at once: python is in the background, detached from the pipes
    assert p.returncode == 0, p.stderr
    assert "started pid" in p.stdout
    deadline = time.time() + 10
    while not out.exists() and time.time() < deadline:
      time.sleep(0.02)
    rec = json.loads(out.read_text())
    pid = rec["pid"]
    assert rec["argv"] == ["-m", "research.main", *TRICKY_ARGS]
    assert rec["cwd"] == str(home / "research")
    assert rec["env"] == {
      "RESEARCH_DISTRIBUTED": "1",
      "TFDS_DATA_DIR": "gs://b/tfds",
      "MY_FLAG": "a b",
    }
    assert int((home / "research_run.pid").read_text()) == pid

    p = worker(run_cmd)  # a second start is refused while the first runs
    assert p.returncode == 1 and "already running" in p.stderr

    p = worker(stop_cmd)
    assert p.returncode == 0, p.stderr
    assert "stopped" in p.stdout
    assert (tmp_path / "python.json.term").read_text() == "TERM"
    assert not (home / "research_run.pid").exists()
    assert "training..." in (home / "research_run.log").read_text()

    p = worker(stop_cmd)  # nothing left to stop: still succeeds
    assert p.returncode == 0 and "no run going" in p.stdout
  finally:
    if pid is not None:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def test_logs(env):
  run("tpu_logs.sh", "pod", env=env)
  run("tpu_logs.sh", "pod", "all", env=env)
  run("tpu_logs.sh", "pod", "--worker=3", env=env, extra_env={"TAIL_LINES": "5"})
  c0, call_all, c3 = calls(env)
  assert c0 == TPU + [
    "ssh",
    "pod",
    "--worker=0",
    "--command",
    "tail -n 100 -F ~/research_run.log",
    "--zone=us-central2-b",
  ]
  assert "--worker=all" in call_all
  assert "--worker=3" in c3 and remote_command(c3) == "tail -n 5 -F ~/research_run.log"


# ---------------------------------------------------------------- local GPU


def test_gpu_local_execs_research_main(env, tmp_path):
  out = tmp_path / "python.json"
  fake = write_exe(tmp_path / "bin" / "python", FAKE_PYTHON.format(python=sys.executable))
  e = dict(env, FAKE_PYTHON_OUT=str(out), CUDA_VISIBLE_DEVICES="1")
  subprocess.run(
    ["bash", str(LAUNCH / "gpu_local.sh"), *TRICKY_ARGS], env=e, check=True, timeout=30
  )
  rec = json.loads(out.read_text())
  assert rec["argv"] == ["-m", "research.main", *TRICKY_ARGS]
  assert rec["env"] == {
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "CUDA_VISIBLE_DEVICES": "1",
  }

  out.unlink()
  fake.rename(tmp_path / "my_python")  # PYTHON picks the interpreter; presets are kept
  e.update(PYTHON=str(tmp_path / "my_python"), XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")
  del e["CUDA_VISIBLE_DEVICES"]
  subprocess.run(
    ["bash", str(LAUNCH / "gpu_local.sh"), "--workdir=w"], env=e, check=True, timeout=30
  )
  rec = json.loads(out.read_text())
  assert rec["argv"] == ["-m", "research.main", "--workdir=w"]
  assert rec["env"] == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "TF_CPP_MIN_LOG_LEVEL": "3"}
