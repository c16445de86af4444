"""Test set-up: 8 fake CPU devices (before JAX starts), quiet TF, a persistent compile cache."""

import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("RESEARCH_JAX_CACHE", os.path.expanduser("~/.cache/research_jax_tests"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
jax.config.update("jax_compilation_cache_dir", os.environ["RESEARCH_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _private_classifier_cache(tmp_path_factory):
  """Tests never train into (or read) the user's digits-classifier cache; subprocesses inherit it."""
  os.environ["RESEARCH_DIGITS_CLASSIFIER"] = str(tmp_path_factory.mktemp("classifier_cache"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data_dir per test session, where the offline datasets get built once."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory, data_dir):
  """dataset -> the workdir of a tiny digits classifier of it, trained once per session."""
  from research.train import loop
  from tests.run_helpers import tiny_classifier_config

  trained: dict[str, str] = {}

  def get(dataset: str = "offline_digits") -> str:
    if dataset not in trained:
      workdir = str(tmp_path_factory.mktemp("digits_classifier"))
      loop.train(tiny_classifier_config(data_dir, dataset=dataset), workdir)
      trained[dataset] = workdir
    return trained[dataset]

  return get
