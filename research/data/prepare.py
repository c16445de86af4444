"""Prepares a TFDS dataset (downloads it, or generates an offline one) into a data dir.

Run it on a machine with internet for catalog datasets, then point config.data.data_dir at the
result (copy the folder, or use a shared gs:// bucket):

  python -m research.data.prepare --name=cifar10 --data_dir=gs://my-bucket/tfds
  python -m research.data.prepare --name=offline_mnist --data_dir=/tmp/tfds   # no internet needed
  python -m research.data.prepare --name=pix2pix/facades --data_dir=gs://my-bucket/tfds
  python -m research.data.prepare --name=cycle_gan/horse2zebra --data_dir=gs://my-bucket/tfds
  python -m research.data.prepare --config=experiments/ddpm_cifar10.py        # uses config.data

--name / --data_dir override the config's fields. Like research.main, it logs warnings and errors
only (TFDS's progress lines are INFO); pass --verbosity=0 to see those.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from research.data import pipeline
from research.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config; uses config.data.")
_NAME = flags.DEFINE_string("name", None, "TFDS dataset name (overrides config.data.name).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (overrides config.data.data_dir).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # research.main's level: warnings, not TFDS's progress
    logging.set_verbosity(logging.WARNING)
  data = types.SimpleNamespace()
  if _CONFIG.value is not None:
    data = types.SimpleNamespace(**_CONFIG.value.data.to_dict())
  if _NAME.value:
    data.name = _NAME.value
  if _DATA_DIR.value:
    data.data_dir = _DATA_DIR.value
  if not getattr(data, "name", None):
    print("error: pass --name=<tfds name> or --config=<experiment file>", file=sys.stderr)
    sys.exit(2)
  data.download = True
  try:
    pipeline.prepare(data)
    info = pipeline.dataset_info(data)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(
    f"prepared {data.name!r} in {getattr(data, 'data_dir', None) or 'the TFDS default dir'}: {info}"
  )


if __name__ == "__main__":
  app.run(main)
