"""The data pipeline's stderr stays clean: a first offline build, reading from it, and the
"not prepared" error print no line from TFDS, absl or tf.data (each run in a fresh process, since
the lines came from a first TFDS / TensorFlow use)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
  # A user's environment: conftest's TF_CPP_MIN_LOG_LEVEL=3 would hide tf.data's C++ warnings
  # (jax sets it to 1 when unset, which shows them); JAX on CPU: no accelerator probe lines.
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
    [sys.executable, "-c", code, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


_BUILD_AND_READ = """
import sys, types
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from research import data

c = types.SimpleNamespace(name="offline_digits", data_dir=sys.argv[1], split="train",
                          eval_split="test", shuffle_buffer=100, prefetch=1)
data.prepare(c)  # the first build, in an empty data_dir
print(data.dataset_info(c))
sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P("data"))
it = data.train_iterator(c, global_batch_size=8, sharding=sharding, seed=0)
batch = next(it)  # one batch, then stop: less than an epoch read
it.close()
print("train", batch["image"].shape)
print("eval", sum(1 for _ in data.eval_iterator(c, global_batch_size=64, sharding=sharding)))
"""


def test_first_offline_build_and_a_batch_print_nothing_on_stderr(tmp_path):
  result = _run(_BUILD_AND_READ, str(tmp_path / "tfds"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == ""
  lines = result.stdout.splitlines()
  where = tmp_path / "tfds" / "offline_digits" / "1.0.0"
  assert lines[0] == f"generating offline_digits in {where} (once; later runs reuse it)"
  info = "DatasetInfo(image_shape=(8, 8, 1), num_classes=10, num_train=1438, num_eval=359"
  assert lines[1].startswith(info) and lines[2:] == ["train (8, 8, 8, 1)", "eval 6"]


_NOT_PREPARED = """
import sys, types
from research import data
from research.errors import UserError

c = types.SimpleNamespace(name="mnist", data_dir=sys.argv[1], split="train", eval_split="test")
try:
  data.dataset_info(c)
except UserError as e:
  print(f"error: {e}", file=sys.stderr)
  sys.exit(2)
"""


def test_not_prepared_catalog_dataset_is_exactly_one_line(tmp_path):
  result = _run(_NOT_PREPARED, str(tmp_path / "empty"))
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: dataset 'mnist'")
  assert "is not prepared in" in result.stderr and "research.data.prepare" in result.stderr
  assert result.stdout == ""
