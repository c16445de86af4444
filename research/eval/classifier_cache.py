"""The digits classifier of the sample metrics, trained once into a shared cache when it is missing.

The digits FID / KID / precision-recall / class entropy are read in the features of the project's
digits classifier (`experiments/digits_classifier.py`). A digits experiment's eval should not need
a manual step first, so `ensure_trained` trains it (about a minute on 2 CPU cores) the first time a
run needs it, with one printed line saying so and where, and every later run reuses it.

Where: ``config.eval.classifier_workdir`` when set (used as it is), else one entry per recipe in
the cache folder ``$RESEARCH_DIGITS_CLASSIFIER``, else ``$XDG_CACHE_HOME/research/digits_classifier``
(``~/.cache/...``): ``<cache>/<config.eval.classifier_data>``, with ``-<steps>steps`` appended when
``config.eval.classifier_steps`` is not the experiment's 400.

Concurrent processes: one trains while the others wait on a file lock beside the entry; it trains
into ``<entry>.partial-<pid>`` and renames that to the entry only when the run has finished, so no
process reads a half-written classifier (a run killed halfway leaves only a partial folder, which
the next holder of the lock removes). The classifier trains in a child process on the CPU: the
parent keeps its accelerators, and every machine gets the same deterministic network.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import ml_collections

import research
from research.errors import UserError

CACHE_ENV = "RESEARCH_DIGITS_CLASSIFIER"
DEFAULT_DATA = "offline_mnist"
DEFAULT_STEPS = 400  # experiments/digits_classifier.py's own
REPO = os.path.dirname(os.path.dirname(os.path.abspath(research.__file__)))
EXPERIMENT = os.path.join(REPO, "experiments", "digits_classifier.py")


def cache_root() -> str:
  """$RESEARCH_DIGITS_CLASSIFIER, else the user's cache folder."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.environ.get(CACHE_ENV) or os.path.join(base, "research", "digits_classifier")


def recipe(eval_config: ml_collections.ConfigDict | None) -> tuple[str, int]:
  """(the dataset the classifier trains on, its training steps)."""
  if eval_config is None:
    return DEFAULT_DATA, DEFAULT_STEPS
  data = eval_config.get("classifier_data") or DEFAULT_DATA
  return str(data), int(eval_config.get("classifier_steps") or DEFAULT_STEPS)


def workdir(eval_config: ml_collections.ConfigDict | None) -> str:
  """config.eval.classifier_workdir, else the cache entry of the configured recipe."""
  explicit = "" if eval_config is None else str(eval_config.get("classifier_workdir") or "")
  if explicit:
    return explicit
  data, steps = recipe(eval_config)
  name = data if steps == DEFAULT_STEPS else f"{data}-{steps}steps"
  return os.path.join(cache_root(), name)


def command(data: str, steps: int, into: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "research.main",
    f"--config={EXPERIMENT}:data={data},steps={steps}",
    f"--workdir={into}",
  ]


def is_trained(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints"))


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
  """An exclusive lock on `<path>.lock` (waits while another process holds it)."""
  parent = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(parent, exist_ok=True)
    handle = open(f"{os.path.abspath(path)}.lock", "a")  # noqa: SIM115  (held for the block)
  except OSError as e:
    raise UserError(
      f"cannot create the digits classifier's cache folder {parent}: {e.strerror}; set "
      f"${CACHE_ENV} to a folder you can write (or config.eval.feature_net='')"
    ) from None
  with handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _last_error(stderr: str) -> str:
  lines = [x for x in stderr.splitlines() if x.strip()]
  errors = [x.removeprefix("error: ") for x in lines if x.startswith("error:")]
  return (errors or lines or ["no output"])[-1][:300]


def ensure_trained(eval_config: ml_collections.ConfigDict | None) -> str:
  """The classifier's workdir, trained now (once, under the lock) when it holds no run."""
  path = workdir(eval_config)
  if is_trained(path) or "://" in path:  # a remote workdir is read as it is, never trained into
    return path
  data, steps = recipe(eval_config)
  if not os.path.exists(EXPERIMENT):
    raise UserError(
      f"no trained digits classifier in {path}, and {EXPERIMENT} (which trains one) is not beside "
      "the research package; train one and set config.eval.classifier_workdir to its workdir"
    )
  with _locked(path):
    if is_trained(path):  # another process trained it while this one waited
      return path
    if os.path.exists(path):
      raise UserError(
        f"{path} exists but holds no trained digits classifier; delete {path} and it is trained "
        "again"
      )
    folder, stem = os.path.split(os.path.abspath(path))
    for leftover in os.listdir(folder):  # of a process killed halfway (this one holds the lock)
      if leftover.startswith(f"{stem}.partial-"):
        shutil.rmtree(os.path.join(folder, leftover), ignore_errors=True)
    partial = f"{os.path.abspath(path)}.partial-{os.getpid()}"
    print(
      f"training the digits classifier of the sample metrics once ({data}, {steps} steps, about "
      f"a minute on 2 CPU cores) into {path}; later runs reuse it",
      file=sys.stderr,
      flush=True,
    )
    cmd = command(data, steps, partial)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not is_trained(partial):
      shutil.rmtree(partial, ignore_errors=True)
      raise UserError(
        f"training the digits classifier into {path} failed ({_last_error(done.stderr)}); "
        f"run `{' '.join(cmd[:4])} --workdir={path}` to see why"
      )
    os.replace(partial, path)
  return path
