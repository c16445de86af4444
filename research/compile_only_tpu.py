"""Quiets libtpu on a machine without TPUs, where it is installed only to compile for TPU slices.

With `libtpu` installed (``pip install -e ".[tpu-aot]"``, for ``benchmarks/aot.py``), JAX's first
backend initialisation loads the TPU plugin, which prints a page of warnings to stderr about TPU
environment variables when the machine has no TPU, on every run, and takes a lockfile that makes
every other process fail to compile for TPU. Setting those variables to harmless values first
(only when libtpu is installed and no TPU chip is attached; a user's own settings win) keeps
stderr clean and lets several processes compile at once. JAX then falls back to the CPU (or GPU)
as before, and compiling for a slice through `jax.experimental.topologies` works unchanged. On a
TPU VM nothing is touched.
"""

from __future__ import annotations

import glob
import importlib.util
import os

_TPU_ENV = {
  "TPU_ACCELERATOR_TYPE": "v5litepod-4",
  "TPU_WORKER_HOSTNAMES": "localhost",
  "TPU_SKIP_MDS_QUERY": "1",
  # Without TPUs there is no chip to guard: let several processes compile at once (libtpu's
  # /tmp/libtpu_lockfile otherwise fails every process after the first).
  "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips are Google PCI devices


def _tpu_attached() -> bool:
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return True
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def quiet_libtpu_without_tpus() -> None:
  """Sets the variables above that are not set yet (JAX's import sets TPU_SKIP_MDS_QUERY itself
  when it finds no chip); a user's own TPU_ACCELERATOR_TYPE or TPU_WORKER_HOSTNAMES wins."""
  if "TPU_ACCELERATOR_TYPE" in os.environ or "TPU_WORKER_HOSTNAMES" in os.environ:
    return
  if importlib.util.find_spec("libtpu") is None or _tpu_attached():
    return
  for key, value in _TPU_ENV.items():
    os.environ.setdefault(key, value)
