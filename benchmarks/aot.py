r"""Compiles an experiment for a TPU slice on this machine, no TPU needed: does it fit, what it gathers.

  pip install -e ".[tpu-aot]"      # libtpu, XLA's TPU compiler (no TPU hardware needed)
  python -m benchmarks.aot --config=experiments/ddpm_cifar10.py:bf16 --topology=v5litepod-16
  python -m benchmarks.aot --config=experiments/ddpm_cifar10.py --topology=v4-32 \
      --config.mesh.fsdp=4 --config.batch_size=512
  python -m benchmarks.aot --config=experiments/transgan_cifar10.py --topology=v5p-8 --find_max_batch

`--topology` takes `gcloud` accelerator types (``v4-32``, ``v5litepod-16``, ``v5p-128``, ``v6e-256``;
`benchmarks.tpu_slices`) or raw topology strings (``v5e:2x2``). The state is abstract (shapes and
shardings from `jax.eval_shape` on the slice's mesh; no parameter is materialised) and the programs
are the ones a run compiles: the train step of `research.train.loop` (`jit_train_step`, state
donated), the sampler of ``--mode=sample`` (``config.sample.num_samples`` images) and the held-out
eval step (``config.eval.batch_size``). One JSON line per program, the train step first: slice,
chips, hosts, mesh, per-chip batch, per-chip bytes (arguments, temporaries, outputs, aliased and
their total), the chip's HBM and whether the total fits with ``--headroom`` to spare, XLA's FLOPs
per chip, and the collectives of the optimised HLO (count and bytes per kind).

FLOPs: the train step's are `research.train.throughput.step_flops` (scans unrolled, so critic
repeats and micro-batches count) over the chips; the sampler's and eval step's are XLA's cost
analysis of the compiled program, which counts a loop body (one sampling step) once
(``"loop_bodies": "once"``).

``--find_max_batch``: the largest per-chip train batch that fits (powers of two, then bisection).
A train step that does not fit is a one-line error (exit 1) after its JSON line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

import research  # noqa: F401  (quiets libtpu's warnings on a machine without TPUs)
from benchmarks import tpu_slices
from research import cli
from research.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5litepod-16 or v5e:2x2.")
_PROGRAMS = flags.DEFINE_list("programs", ["train_step", "sample", "eval"], "What to compile.")
_FIND_MAX = flags.DEFINE_bool("find_max_batch", False, "Search the largest per-chip batch.")
_HEADROOM = flags.DEFINE_float("headroom", 0.05, "Share of HBM to leave free for a 'fits'.")
_IMAGE_SHAPE = flags.DEFINE_string("image_shape", None, "H,W,C; default: the dataset's.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Label classes; default: the dataset's.")

LIBTPU_INSTALL = 'pip install -e ".[tpu-aot]"'
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2}
_DTYPE_BYTES |= {"bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_DTYPE_BYTES |= {"c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(
  r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<suffix>-start|-done)?\("
)


def check_libtpu() -> None:
  import importlib.util

  if importlib.util.find_spec("libtpu") is None:
    raise UserError(f"libtpu is not installed (XLA's TPU compiler); run {LIBTPU_INSTALL}")


def array_bytes(shape_text: str) -> list[int]:
  """Bytes of each array in an HLO shape (``f32[8,128]{1,0}``, or a tuple of them)."""
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    size = 1
    for d in filter(None, dims.split(",")):
      size *= int(d)
    out.append(size * _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4))
  return out


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """Count and result bytes per collective kind in optimised HLO text. An asynchronous pair
  (``-start`` / ``-done``) is counted once, at its ``-start``, with the result array of its tuple
  (the last; all-reduce-start's shape is its result)."""
  out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.search(line)
    if not m or m.group("suffix") == "-done":
      continue
    sizes = array_bytes(m.group("shape"))
    if not sizes:
      continue
    kind = out[m.group("op")]
    kind["count"] += 1
    if m.group("suffix") == "-start" and m.group("shape").startswith("(") and len(sizes) > 1:
      kind["bytes"] += sizes[1] if m.group("op") == "collective-permute" else sizes[-1]
    else:
      kind["bytes"] += sum(sizes)
  return out


@dataclasses.dataclass
class Target:
  """A TPU slice and its compile-only devices."""

  slice: tpu_slices.Slice
  devices: list

  @classmethod
  def create(cls, name: str) -> Target:
    check_libtpu()
    try:
      spec = tpu_slices.parse(name)
    except tpu_slices.UnknownSlice as e:
      raise UserError(str(e)) from None
    return cls(spec, tpu_slices.devices(spec))

  @property
  def chip(self):
    from research.train import accelerators

    return accelerators.chip(self.devices[0].device_kind)


def dataset_info(config: Any, image_shape: str | None = None, num_classes: int | None = None):
  """The dataset's shapes: --image_shape / --num_classes, the prepared dataset's metadata, or
  the TFDS builder's features (no data needed: the accelerator datasets are rarely here)."""
  from research import data

  if image_shape:
    shape = tuple(int(x) for x in image_shape.split(","))
    return data.DatasetInfo(shape, num_classes, 0, 0)
  try:
    return data.dataset_info(config.data)
  except UserError:
    pass
  try:
    import tensorflow_datasets as tfds

    from research.data import tfds_source

    builder = tfds.builder(config.data.name, try_gcs=False)
    size = tfds_source.field(config.data, "image_size")
    shape = tfds_source.image_shape(builder, size)
    return data.DatasetInfo(shape, tfds_source.num_classes(builder), 0, 0)
  except Exception as e:
    raise UserError(
      f"no metadata for dataset {config.data.name!r} here ({cli.one_line(e)[:120]}); "
      "pass --image_shape=H,W,C and --num_classes=N"
    ) from None


def abstract_batch(config: Any, info: Any, batch_size: int, sharding: Any, eval_split: bool):
  """ShapeDtypeStructs of a pipeline batch (`research.data.pipeline`), split over the mesh."""
  import jax
  import jax.numpy as jnp

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)

  batch = {"image": spec(info.image_shape, jnp.uint8)}
  input_shape = getattr(info, "input_shape", None)
  if input_shape is not None:  # paired / unpaired translation data
    batch["input"] = spec(input_shape, jnp.uint8)
  if info.num_classes is not None:
    batch["label"] = spec((), jnp.int32)
  if int(config.data.get("text_length", 0) or 0) > 0:
    batch["text"] = spec((int(config.data.text_length),), jnp.int32)
  if eval_split:
    batch["mask"] = spec((), jnp.float32)
    if input_shape is not None:
      batch["input_mask"] = spec((), jnp.float32)
  return batch


@dataclasses.dataclass
class Abstract:
  """Everything a run would build before its first step, as shapes and shardings only."""

  config: Any
  info: Any
  task: Any
  optimizers: Any
  mesh: Any
  state: Any  # TrainState of ShapeDtypeStructs with shardings
  shardings: Any

  @classmethod
  def build(cls, config: Any, info: Any, devices: list) -> Abstract:
    import jax

    from research.train import setup
    from research.train import sharding as shd
    from research.train import state as state_lib
    from research.train.optim import make_optimizers

    jax.config.update("jax_threefry_partitionable", True)
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    setup.validate(config, mesh)
    task = setup.build_task(config, info)
    tc = config.train
    optimizers = make_optimizers(config.optim, task.parts, tc.num_steps, tc.part_steps.to_dict())
    has_labels = info.num_classes is not None
    make = state_lib.state_factory(
      task,
      optimizers,
      info.image_shape,
      has_labels,
      config.seed,
      tc.ema_decay > 0,
      input_shape=getattr(info, "input_shape", None),
    )
    shapes = jax.eval_shape(make)
    shardings = shd.state_shardings(shapes, mesh, config.mesh.fsdp_min_size)
    state = state_lib.abstract_state(shapes, shardings)
    return cls(config, info, task, optimizers, mesh, state, shardings)

  def batch(self, batch_size: int, eval_split: bool = False):
    from research.train import sharding as shd

    sharding = shd.batch_sharding(self.mesh)
    return abstract_batch(self.config, self.info, batch_size, sharding, eval_split)

  def key(self):
    import jax

    from research.train import sharding as shd

    dtype = jax.eval_shape(lambda: jax.random.key(0)).dtype
    return jax.ShapeDtypeStruct((), dtype, sharding=shd.replicated(self.mesh))


@dataclasses.dataclass
class Compiled:
  program: str
  batch_size: int  # global
  compile_s: float
  compiled: Any = None  # None when XLA refused it for memory
  flops: float | None = None  # all chips together (train step) or per chip (others)
  error: str = ""  # XLA's out-of-memory message


@contextlib.contextmanager
def _without_persistent_cache():
  """JAX's persistent cache stores a compile-only TPU executable but cannot load it back ("must be
  constructed with a Client"): off around these compiles, even where the process turned it on (the
  tests do). JAX decides once per process whether the cache is used, hence the resets."""
  import jax
  from jax._src import compilation_cache

  was_on = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", was_on)
    compilation_cache.reset_cache()


def _compile(program: str, jitted: Any, args: tuple, batch_size: int) -> tuple[Any, Compiled]:

  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  try:
    with _without_persistent_cache():
      compiled = lowered.compile()
  except Exception as e:  # XLA:TPU refuses a program beyond HBM at compile time
    text = cli.one_line(e)
    if "RESOURCE_EXHAUSTED" not in text and "memory" not in text.lower():
      raise
    return lowered, Compiled(program, batch_size, time.perf_counter() - t0, error=text[:400])
  return lowered, Compiled(program, batch_size, time.perf_counter() - t0, compiled)


def _train_step(ab: Abstract) -> tuple[Any, Any, Any]:
  from research.train.loop import step_config
  from research.train.step import jit_train_step

  cfg = step_config(ab.config)
  jitted = jit_train_step(ab.task, ab.optimizers, cfg, ab.mesh, ab.shardings)
  return cfg, jitted, ab.batch(int(ab.config.batch_size))


def train_step_flops(ab: Abstract, lowered: Any = None) -> float | None:
  """The train step's FLOPs, all chips together (lowered only: no compile)."""
  from research.train.throughput import step_flops

  cfg, jitted, batch = _train_step(ab)
  lowered = lowered or jitted.lower(ab.state, batch)
  return step_flops(lowered, ab.task, ab.optimizers, cfg, ab.mesh, ab.shardings, ab.state, batch)


def compile_train_step(ab: Abstract) -> Compiled:
  _, jitted, batch = _train_step(ab)
  lowered, out = _compile("train_step", jitted, (ab.state, batch), int(ab.config.batch_size))
  flops = train_step_flops(ab, lowered)
  out.flops = flops / ab.mesh.devices.size if flops else None
  return out


def compile_sample(ab: Abstract) -> Compiled:
  import jax

  from research.train import sharding as shd

  n = int(ab.config.sample.num_samples)
  sampler = jax.jit(lambda v, r: ab.task.sample(v, r, n), out_shardings=shd.batch_sharding(ab.mesh))
  variables = ab.state.variables(use_ema=bool(ab.config.sample.use_ema))
  return _compile("sample", sampler, (variables, ab.key()), n)[1]


def compile_eval(ab: Abstract) -> Compiled:
  import jax

  n = int(ab.config.eval.batch_size)
  variables = ab.state.variables(use_ema=bool(ab.config.sample.use_ema))
  batch = ab.batch(n, eval_split=True)
  return _compile("eval", jax.jit(ab.task.eval_sums), (variables, batch, ab.key()), n)[1]


PROGRAMS = {"train_step": compile_train_step, "sample": compile_sample, "eval": compile_eval}


def _used_bytes(error: str) -> int | None:
  """The bytes XLA says a refused program needs ("... HLO temporaries (85.08G) exceeds ...")."""
  m = re.search(r"\(([0-9.]+)([KMGT])?\) exceeds", error) or re.search(
    r"Used ([0-9.]+)([KMGT])? of", error
  )
  if not m:
    return None
  scale = {None: 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)]
  return int(float(m.group(1)) * scale)


def report(c: Compiled, target: Target, ab: Abstract, headroom: float) -> dict[str, Any]:
  """The JSON line of one compiled program."""
  from research.train.throughput import cost_flops

  chips = len(target.devices)
  chip = target.chip
  hbm = chip.memory_bytes if chip else None
  line: dict[str, Any] = {
    "program": c.program,
    "slice": target.slice.name,
    "topology": target.slice.topology,
    "device_kind": target.devices[0].device_kind,
    "chips": chips,
    "hosts": target.slice.hosts,
    "mesh": {k: int(v) for k, v in ab.mesh.shape.items()},
    "batch_size": c.batch_size,
    "per_chip_batch": c.batch_size / chips,
    "compile_s": round(c.compile_s, 2),
  }
  if c.compiled is None:
    used = _used_bytes(c.error)
    line |= {"bytes_per_chip": {"total": used}, "hbm_bytes": hbm, "fits": False}
    return line | {"xla_error": c.error}
  mem = c.compiled.memory_analysis()
  sizes = {
    "arguments": int(mem.argument_size_in_bytes),
    "temporaries": int(mem.temp_size_in_bytes),
    "outputs": int(mem.output_size_in_bytes),
    "aliased": int(mem.alias_size_in_bytes),
  }
  total = sizes["arguments"] + sizes["temporaries"] + sizes["outputs"] - sizes["aliased"]
  sizes["total"] = max(total, int(getattr(mem, "peak_memory_in_bytes", 0) or 0))
  line["bytes_per_chip"] = sizes
  line["gib_per_chip"] = round(sizes["total"] / 2**30, 3)
  line["hbm_bytes"] = hbm
  if hbm:
    line["fits"] = sizes["total"] <= (1 - headroom) * hbm
    line["hbm_free"] = round(1 - sizes["total"] / hbm, 4)
  flops = c.flops if c.program == "train_step" else cost_flops(c.compiled)
  line["flops_per_chip"] = flops
  if c.program != "train_step":
    line["loop_bodies"] = "once"
  line["collectives"] = collectives(c.compiled.as_text())
  return line


def find_max_batch(config: Any, info: Any, target: Target, headroom: float) -> dict[str, Any]:
  """The largest per-chip batch whose train step fits: doubling from 1, then bisection."""
  chips = len(target.devices)

  def fits(per_chip: int) -> tuple[bool, dict[str, Any]]:
    trial = config.copy_and_resolve_references()
    with trial.unlocked():
      trial.batch_size = per_chip * chips
    ab = Abstract.build(trial, info, target.devices)
    line = report(compile_train_step(ab), target, ab, headroom)
    return bool(line.get("fits")), line

  best, best_line, lo, hi = 0, None, 0, None
  per_chip = 1
  while hi is None:
    ok, line = fits(per_chip)
    if ok:
      best, best_line, lo, per_chip = per_chip, line, per_chip, per_chip * 2
      if per_chip > 2**16:
        break
    else:
      hi = per_chip
  while hi is not None and hi - lo > 1:
    mid = (lo + hi) // 2
    ok, line = fits(mid)
    best, best_line, lo, hi = (mid, line, mid, hi) if ok else (best, best_line, lo, mid)
  return {"program": "find_max_batch", "max_per_chip_batch": best, "at_max": best_line}


def does_not_fit(line: dict[str, Any], headroom: float) -> str:
  total, hbm = line["bytes_per_chip"].get("total"), line["hbm_bytes"]
  used = f"{total / 2**30:.2f} GiB" if total else "more than it has"
  return (
    f"{line['program']} does not fit on {line['slice']}: {used} per chip vs "
    f"{(1 - headroom) * hbm / 2**30:.2f} GiB usable of {hbm / 2**30:.0f} GiB HBM; lower "
    "config.batch_size, raise config.mesh.fsdp, or set config.model.remat=True"
  )


def run(config: Any, topology: str, programs: list[str], find_max: bool, headroom: float) -> int:
  unknown = [p for p in programs if p not in PROGRAMS]
  if unknown:
    raise UserError(f"unknown --programs {unknown}; choose from {list(PROGRAMS)}")
  target = Target.create(topology)
  info = dataset_info(config, _IMAGE_SHAPE.value, _NUM_CLASSES.value)
  if find_max:
    print(json.dumps(find_max_batch(config, info, target, headroom)), flush=True)
    return 0
  ab = Abstract.build(config, info, target.devices)
  status = 0
  for program in programs:
    line = report(PROGRAMS[program](ab), target, ab, headroom)
    print(json.dumps(line), flush=True)
    if line.get("fits") is False and program == "train_step":
      print(f"error: {does_not_fit(line, headroom)}", file=sys.stderr)
      status = 1
  return status


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _TOPOLOGY.value:
    raise app.UsageError("--config and --topology are required, e.g. --topology=v5litepod-16")
  logging.set_verbosity(logging.WARNING)
  try:
    sys.exit(run(_CONFIG.value, _TOPOLOGY.value, _PROGRAMS.value, _FIND_MAX.value, _HEADROOM.value))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, _CONFIG))
