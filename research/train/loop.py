"""The one training loop: resume, steps, logging, sample grids, evaluation, checkpoints, preemption.

Nothing in the loop waits on the devices except at log, sample, eval and checkpoint intervals: the
step is dispatched asynchronously with the state donated, and metrics stay on device until a log
step fetches them.
"""

from __future__ import annotations

import collections
import itertools
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from research import data
from research.errors import UserError
from research.eval import images as image_io
from research.eval import run as eval_run
from research.train import restore, setup
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.metrics_writer import MetricsWriter, format_progress
from research.train.optim import make_schedule
from research.train.step import StepConfig, jit_train_step
from research.train.throughput import Throughput, step_flops

# Steps dispatched ahead of the devices. The loop never waits on the step it just dispatched, only
# on the one this many steps back, so the devices stay busy while the host cannot run unboundedly
# ahead (which holds queued batches in memory and can deadlock XLA:CPU's in-process collectives).
MAX_STEPS_IN_FLIGHT = 2


class NonFiniteError(UserError):
  """The loss or a gradient norm became NaN/inf; the last good checkpoint is kept."""


class Preemption:
  """SIGTERM -> save at the current step and exit cleanly.

  With several processes, JAX's preemption service (on after `jax.distributed.initialize`) catches
  SIGTERM and agrees on one step for every process; alone, a Python signal handler sets a flag.
  """

  def __init__(self):
    self.flag = False
    self.multi = jax.process_count() > 1
    if not self.multi:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.flag = True

  def reached(self, step: int) -> bool:
    if self.multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.flag

  def restore(self) -> None:
    if not self.multi:
      signal.signal(signal.SIGTERM, self._previous)


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
  return StepConfig(
    ema_decay=float(config.train.ema_decay),
    grad_accum=int(config.train.grad_accum),
    part_steps=tuple(sorted(config.train.part_steps.to_dict().items())),
    split_repeats=bool(config.train.split_repeats),
  )


def _check_finite(state: state_lib.TrainState, exp: setup.Experiment, at_step: int) -> None:
  bad_step = int(jax.device_get(state.nonfinite_step))
  if bad_step < 0:
    return
  name = state_lib.nonfinite_metric_names(exp.task.parts)[
    int(jax.device_get(state.nonfinite_metric))
  ]
  exp.checkpointer.wait()
  last = exp.checkpointer.latest_step()
  raise NonFiniteError(
    f"{name} became non-finite at step {bad_step + 1} (run stopped at step {at_step}); "
    f"the last good checkpoint (step {last}) is kept in {exp.checkpointer.directory}; "
    "lower the learning rate or set config.optim.<part>.grad_clip_norm"
  )


def _write_sample_grid(exp, sample_fn, state, step: int, writer: MetricsWriter) -> None:
  rng = jax.random.fold_in(
    jax.random.key(exp.config.seed), 1_000_003
  )  # fixed: same noise every time
  out = sample_fn(state.variables(use_ema=exp.config.sample.use_ema), rng)
  images = np.asarray(multihost_utils.process_allgather(out["images"], tiled=True))
  if jax.process_index() == 0:
    image_io.save_grid(images, f"{exp.workdir}/samples/step_{step:07d}.png")
    writer.image(step, "samples", image_io.grid(images))


def _eval_summary(results: dict[str, float]) -> str:
  """The headline eval numbers for the console (all of them go to TensorBoard)."""
  skip = ("class_fraction/", "_std", "kid_subset_size", "fid_reference_n", "class_entropy_max")
  skip += ("nn_train_n", "_heldout", "copying_cells")
  shown = {k: v for k, v in results.items() if not any(s in k for s in skip)}
  return " ".join(f"{k}={v:.4g}" for k, v in shown.items())


def train(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Trains (or resumes) the experiment in `workdir`; returns the final state."""
  exp = setup.build(config, workdir)
  tc = config.train
  start, num_steps = exp.restored_step or 0, tc.num_steps
  is_main = jax.process_index() == 0
  state = exp.state
  if start >= num_steps:
    exp.checkpointer.close()
    print(f"workdir already holds step {start} >= train.num_steps={num_steps}", file=sys.stderr)
    return state

  batch_sharding = shd.batch_sharding(exp.mesh)
  step_cfg = step_config(config)
  step_fn = jit_train_step(exp.task, exp.optimizers, step_cfg, exp.mesh, exp.shardings)
  grid_size = config.sample.grid_size
  sample_fn = jax.jit(lambda v, r: exp.task.sample(v, r, grid_size))
  schedules = {p: make_schedule(config.optim[p], num_steps) for p in exp.task.parts}
  writer = MetricsWriter(workdir, enabled=is_main)
  batches = data.train_iterator(
    config.data,
    global_batch_size=config.batch_size,
    sharding=batch_sharding,
    seed=config.seed,
    start_step=start,
    text_tokenizer=exp.info.text_tokenizer,
  )
  if is_main:
    counts = state_lib.param_count(state)
    print(
      f"training {config.task.name} {counts} params from step {start} to {num_steps} "
      f"on {exp.mesh.devices.size} devices, mesh {dict(exp.mesh.shape)}",
      file=sys.stderr,
    )
  preemption = Preemption()
  dataset = restore.dataset_json(exp.info)
  evaluation = None  # built at the first eval: its jitted functions and feature network, once
  in_flight: collections.deque = collections.deque()
  try:
    # Compiled once, before the first step, so its FLOPs are counted once (MFU in the progress
    # line) and the first interval's speed does not include the compilation.
    first = next(batches)
    lowered = step_fn.lower(state, first)
    compiled_step = lowered.compile()
    flops = step_flops(
      lowered, exp.task, exp.optimizers, step_cfg, exp.mesh, exp.shardings, state, first
    )
    throughput = Throughput.create(flops, float(tc.get("peak_tflops", 0.0)))
    last_time, last_step = time.time(), start
    steps = range(start + 1, num_steps + 1)  # `step` counts completed steps
    inputs = itertools.chain([first], batches)
    del first
    for step, batch in zip(steps, inputs, strict=False):
      state, metrics = compiled_step(state, batch)
      in_flight.append(metrics)
      if len(in_flight) > MAX_STEPS_IN_FLIGHT:
        jax.block_until_ready(in_flight.popleft())
      if step % tc.log_every == 0 or step == num_steps:
        _check_finite(state, exp, step)
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        values.update({f"{p}/lr": float(s(step - 1)) for p, s in schedules.items()})
        now = time.time()
        rate = (step - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, step
        speed = throughput.metrics(rate)
        if is_main:
          line = format_progress(step, num_steps, values, rate, config.batch_size, speed)
          print(line, flush=True)
          writer.scalars(step, {**values, "steps_per_sec": rate, **speed})
          writer.flush()
      preempted = preemption.reached(step)
      if preempted or step % tc.checkpoint_every == 0 or step == num_steps:
        _check_finite(state, exp, step)
        exp.checkpointer.save(step, state, setup.config_dict(config), dataset, force=True)
      if tc.sample_every and (step % tc.sample_every == 0 or step == num_steps):
        _write_sample_grid(exp, sample_fn, state, step, writer)
      if tc.eval_every and step % tc.eval_every == 0:
        if evaluation is None:
          evaluation = eval_run.Evaluation(config, exp.task, exp.mesh, exp.info, workdir)
        num = config.eval.train_num_samples or config.eval.num_samples
        results = evaluation(state.variables(use_ema=config.sample.use_ema), int(num))
        results = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        if is_main:
          writer.scalars(step, {f"eval/{k}": v for k, v in results.items()})
          print(f"eval step {step}: " + _eval_summary(results), flush=True)
      if preempted:
        print(f"SIGTERM: saved step {step}; re-run the same command to resume", file=sys.stderr)
        break
  finally:
    try:  # waits for the last save, still under the SIGTERM handler; raises its failure
      exp.checkpointer.close()
    finally:
      preemption.restore()
      writer.close()
      if hasattr(batches, "close"):
        batches.close()
  return state
