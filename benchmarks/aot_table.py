r"""The README's dry-run table: configs x TPU slices x FSDP off/on, as markdown rows (and JSON lines).

  python -m benchmarks.aot_table --configs=experiments/ddpm_cifar10.py,experiments/dit_mnist.py \
      --slices=v5litepod-8,v5p-8,v4-32 [--find_max_batch] > table.md

Each cell is `benchmarks.aot`'s train step at the config's own (paper) batch, once data parallel and
once with FSDP over every chip (``config.mesh.fsdp`` = chips, ``fsdp_min_size`` as configured):
per-chip GiB, whether it fits, and the collectives that change. Compiling is CPU work only, so
a machine with more cores fills the table faster (the CIFAR-10 UNet takes about 13 minutes per
compile on 2 cores); ``--find_max_batch`` adds the largest per-chip batch (about 15 compiles each).
"""

from __future__ import annotations

import importlib.util
import json
import sys

from absl import app, flags, logging

import research  # noqa: F401  (quiets libtpu's warnings on a machine without TPUs)
from benchmarks import aot
from research.errors import UserError

_CONFIGS = flags.DEFINE_list("configs", None, "Experiment files, each optionally with :args.")
_SLICES = flags.DEFINE_list("slices", ["v5litepod-8", "v5p-8", "v4-32"], "TPU slices.")
# --find_max_batch and --headroom are benchmarks.aot's flags.


def _collectives(line: dict) -> str:
  kinds = {k: v for k, v in line.get("collectives", {}).items() if v["count"]}
  return ", ".join(f"{v['count']} {k} ({v['bytes'] / 2**20:.0f} MiB)" for k, v in kinds.items())


def _load(path: str):
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def cell(config, info, target: aot.Target, fsdp: int, find_max: bool) -> dict:
  trial = config.copy_and_resolve_references()
  with trial.unlocked():
    trial.mesh.data, trial.mesh.fsdp = -1, fsdp
  ab = aot.Abstract.build(trial, info, target.devices)
  line = aot.report(aot.compile_train_step(ab), target, ab, headroom=aot._HEADROOM.value)
  if find_max:
    line["max_per_chip_batch"] = aot.find_max_batch(trial, info, target, aot._HEADROOM.value)[
      "max_per_chip_batch"
    ]
  return line


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  print(
    "| config | slice | FSDP | batch (per chip) | GiB per chip | fits | max per-chip batch "
    "| collectives |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for spec in _CONFIGS.value:
    path, _, arg = spec.partition(":")
    config = _load(path).get_config(arg or None)
    info = aot.dataset_info(config)
    for name in _SLICES.value:
      target = aot.Target.create(name)
      for fsdp in (1, len(target.devices)):
        try:
          line = cell(config, info, target, fsdp, aot._FIND_MAX.value)
        except UserError as e:
          line = {"error": str(e), "batch_size": config.batch_size, "per_chip_batch": None}
        print(json.dumps({"config": spec, "fsdp": fsdp, **line}), file=sys.stderr, flush=True)
        gib = line.get("gib_per_chip") or (line.get("bytes_per_chip", {}).get("total") or 0) / 2**30
        print(
          f"| `{spec.split('/')[-1]}` | {name} | {'on' if fsdp > 1 else 'off'} | "
          f"{line['batch_size']} ({line['per_chip_batch']}) | {gib:.2f} | "
          f"{line.get('fits', line.get('error', '?'))} | {line.get('max_per_chip_batch', '-')} | "
          f"{_collectives(line)} |",
          flush=True,
        )


if __name__ == "__main__":
  flags.mark_flag_as_required("configs")
  app.run(main)
