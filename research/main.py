"""The one entry point.

  python -m research.main --config=experiments/vae_mnist.py:runlocal --workdir=/tmp/vae \
      [--mode=train|sample|eval] [--config.train.num_steps=500 ...]

Re-running the same command on the same workdir resumes from its newest complete checkpoint. The
workdir (local or gs://) is created and probed with a file first: one that cannot be written is a
one-line error before any data or JAX work.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from research import cli  # noqa: E402
from research.errors import UserError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local or gs://).", required=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to do.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  os.environ.get("RESEARCH_DISTRIBUTED", "") == "1",
  "Call jax.distributed.initialize() (TPU pods; also set by RESEARCH_DISTRIBUTED=1).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _init_jax() -> None:
  """Multi-host set-up (before any other JAX call) and the persistent compilation cache."""
  import jax

  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  cli.use_compilation_cache()


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config-file and override problems as one-line errors."""
  return cli.parse_flags(argv, _CONFIG)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/vae_mnist.py:runlocal")
  logging.set_verbosity(logging.WARNING)
  try:
    from research.train.faults import check_workdir

    # Before any data preparation or compile: a workdir that cannot hold the run fails at once.
    check_workdir(_WORKDIR.value, create=_MODE.value == "train")
    _init_jax()
    from research.eval import run as eval_run
    from research.train import loop

    modes = {"train": loop.train, "sample": eval_run.run_sample, "eval": eval_run.run_eval}
    modes[_MODE.value](_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
