"""The TPU dry run (`benchmarks.aot`): the real step compiled for TPU slices on this CPU machine, with
XLA's TPU compiler from libtpu (`pip install -e ".[dev]"` installs it on Linux x86-64)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys

import pytest

from benchmarks import aot, tpu_slices
from research import data
from research.errors import UserError
from tests.run_helpers import REPO, load_config

_LINUX_X86 = platform.system() == "Linux" and platform.machine() == "x86_64"
needs_libtpu = pytest.mark.skipif(
  not _LINUX_X86 and importlib.util.find_spec("libtpu") is None,
  reason="libtpu ships for Linux x86-64 only",
)
DIGITS = data.DatasetInfo((8, 8, 1), 10, 0, 0)


def _vae(arg: str = "", **overrides):
  config = load_config(os.path.join(REPO, "tests", "configs", "vae_tiny.py"), arg)
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = value
  return config


def _line(config, slice_name: str, program: str = "train_step", info=DIGITS) -> dict:
  target = aot.Target.create(slice_name)
  ab = aot.Abstract.build(config, info, target.devices)
  return aot.report(aot.PROGRAMS[program](ab), target, ab, headroom=0.05)


# ------------------------------------------------------------------------------ fast, no compiler


@pytest.mark.parametrize(
  "name, topology, chips, hosts",
  [
    ("v4-8", "v4:2x2x1", 4, 1),
    ("v4-32", "v4:2x2x4", 16, 4),
    ("v5litepod-8", "v5e:2x4", 8, 1),
    ("v5litepod-16", "v5e:4x4", 16, 4),
    ("v5p-8", "v5p:2x2x1", 4, 1),
    ("v5p-128", "v5p:4x4x4", 64, 16),
    ("v6e-256", "v6e:16x16", 256, 64),
    ("v5e:2x2", "v5e:2x2", 4, 1),
  ],
)
def test_gcloud_names_map_to_topologies_chips_and_hosts(name, topology, chips, hosts):
  spec = tpu_slices.parse(name)
  assert (spec.topology, spec.chips, spec.hosts) == (topology, chips, hosts)


@pytest.mark.parametrize("name", ["v4-6", "v7-8", "tpu", "v5e:2x2x2"])
def test_an_unknown_slice_is_one_line_naming_the_known_ones(name):
  with pytest.raises(UserError) as e:
    aot.Target.create(name)
  assert "\n" not in str(e.value) and ("v5litepod-16" in str(e.value) or "v4-8" in str(e.value))


def test_missing_libtpu_is_one_line_with_the_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  with pytest.raises(UserError, match=r'libtpu is not installed.*pip install -e "\.\[tpu-aot\]"'):
    aot.Target.create("v5litepod-4")


def test_collectives_are_counted_with_their_result_bytes():
  hlo = """
  %all-gather.1 = f32[64,128]{1,0:T(8,128)} all-gather(f32[16,128]{1,0} %p), channel_id=1
  %ags = (bf16[4,8]{1,0}, bf16[16,8]{1,0}) all-gather-start(bf16[4,8]{1,0} %q), channel_id=2
  %agd = bf16[16,8]{1,0} all-gather-done((bf16[4,8]{1,0}, bf16[16,8]{1,0}) %ags)
  ROOT %all-reduce = f32[]{:T(128)} all-reduce(%fusion), channel_id=3
  %rs = f32[8]{0} reduce-scatter(f32[32]{0} %g), channel_id=4, dimensions={0}
  %cp = (f32[2,2]{1,0}, f32[2,2]{1,0}, u32[], u32[]) collective-permute-start(%x), channel_id=5
  %fusion.7 = f32[64,128]{1,0} fusion(%all-gather.1), kind=kLoop
  """
  out = aot.collectives(hlo)
  assert out["all-gather"] == {"count": 2, "bytes": 64 * 128 * 4 + 16 * 8 * 2}
  assert out["all-reduce"] == {"count": 1, "bytes": 4}
  assert out["reduce-scatter"] == {"count": 1, "bytes": 32}
  assert out["collective-permute"] == {"count": 1, "bytes": 16}
  assert out["all-to-all"] == {"count": 0, "bytes": 0}


def test_an_undownloaded_catalog_dataset_takes_its_shapes_from_the_tfds_builder(tmp_path):
  config = load_config(os.path.join(REPO, "experiments", "ddpm_cifar10.py"))
  with config.unlocked():
    config.data.data_dir = str(tmp_path)
  info = aot.dataset_info(config)
  assert (info.image_shape, info.num_classes) == ((32, 32, 3), 10)


# ---------------------------------------------------------------------------- compiled for TPUs


@needs_libtpu
@pytest.mark.parametrize("slice_name, hosts", [("v5litepod-4", 1), ("v5litepod-16", 4)])
def test_the_tiny_vae_compiles_for_a_single_and_a_multi_host_slice(slice_name, hosts):
  line = _line(_vae(), slice_name)
  assert (line["hosts"], line["device_kind"]) == (hosts, "TPU v5 lite")
  assert line["per_chip_batch"] == 32 / line["chips"] and line["fits"] is True
  sizes = line["bytes_per_chip"]
  assert sizes["arguments"] > 0 and sizes["aliased"] > 0  # the state is donated
  assert line["flops_per_chip"] > 0
  assert line["collectives"]["all-reduce"]["count"] >= 1  # data parallel: gradients are summed


@needs_libtpu
def test_sampler_and_eval_step_compile_too():
  config = _vae()
  assert _line(config, "v5litepod-4", "sample")["fits"] is True
  assert _line(config, "v5litepod-4", "eval")["flops_per_chip"] > 0


@needs_libtpu
def test_a_tiny_gan_with_critic_repeats_compiles_and_counts_each_repeat():
  config = load_config(os.path.join(REPO, "experiments", "transgan_digits.py"), "runlocal")
  with config.unlocked():
    config.batch_size = 32
    config.train.split_repeats = False  # each critic update sees the whole batch: 2x its work
    config.model.generator.update({"dim": 16, "depths": (1, 1)})
    config.model.discriminator.update({"dim": 16, "depth": 1})
    config.train.part_steps.disc = 2
  line = _line(config, "v5litepod-4")  # two parts, the critic's two updates a scan
  assert line["fits"] is True and line["flops_per_chip"] > 0
  with config.unlocked():
    config.train.part_steps.disc = 1
  target = aot.Target.create("v5litepod-4")
  once = aot.train_step_flops(aot.Abstract.build(config, DIGITS, target.devices))
  # The critic's second update is counted (XLA's own count sees a scan's body once).
  assert line["flops_per_chip"] * 4 > 1.3 * once


@needs_libtpu
def test_fsdp_shards_the_state_and_gathers_the_parameters():
  base = {"model.hidden": 512, "mesh.fsdp_min_size": 1024}
  dp = _line(_vae("model=mlp_vae", **base), "v5litepod-4")
  fsdp = _line(_vae("model=mlp_vae", **base, **{"mesh.fsdp": 4}), "v5litepod-4")
  assert fsdp["mesh"] == {"data": 1, "fsdp": 4}
  ratio = dp["bytes_per_chip"]["arguments"] / fsdp["bytes_per_chip"]["arguments"]
  assert 3.0 < ratio <= 4.0, ratio
  assert dp["collectives"]["all-gather"]["count"] == 0
  assert fsdp["collectives"]["all-gather"]["count"] > 0


@needs_libtpu
def test_a_batch_far_beyond_hbm_does_not_fit_and_the_cli_says_so_in_one_line():
  args = [
    sys.executable,
    "-m",
    "benchmarks.aot",
    f"--config={os.path.join(REPO, 'tests', 'configs', 'vae_tiny.py')}",
    "--topology=v5litepod-4",
    "--programs=train_step",
    "--image_shape=256,256,1",
    "--num_classes=10",
    "--config.batch_size=65536",
  ]
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["fits"] is False and line["per_chip_batch"] == 16384
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  assert "does not fit on v5litepod-4" in proc.stderr and "GiB HBM" in proc.stderr


@needs_libtpu
@pytest.mark.slow
def test_find_max_batch_brackets_the_largest_batch_that_fits():
  # 6.4M hidden units: the state (parameters, Adam's moments, EMA) holds nearly all of a v5e's
  # 16 GiB, so the largest per-chip batch is tiny (4 when written: 6 compiles, doubling to 8 then
  # bisecting through 6 and 5; 5M hidden units gave 72 and 15 compiles).
  config = _vae("model=mlp_vae", **{"model.hidden": 6_400_000})
  target = aot.Target.create("v5litepod-4")
  out = aot.find_max_batch(config, DIGITS, target, headroom=0.05)
  best = out["max_per_chip_batch"]
  assert 2 <= best <= 64 and out["at_max"]["fits"] and out["at_max"]["per_chip_batch"] == best
  with config.unlocked():
    config.batch_size = (best + 1) * 4
  ab = aot.Abstract.build(config, DIGITS, target.devices)
  assert aot.report(aot.compile_train_step(ab), target, ab, 0.05)["fits"] is False


@needs_libtpu
def test_libtpu_without_tpus_leaves_stderr_clean():
  code = "import research, jax; jax.devices(); print(jax.default_backend())"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0 and proc.stdout.strip() == "cpu"
  assert proc.stderr == "", proc.stderr
