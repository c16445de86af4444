"""The train state: named parts, each with parameters, optimizer state, EMA and other collections.

Creation is sharded from the start: `jax.eval_shape` gives the abstract state, `state_shardings`
assigns a NamedSharding to every leaf, and a jitted init with those ``out_shardings`` materialises
each parameter directly on its devices (no host copy of the full model, as FSDP needs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from research.tasks.base import Batch, Task, Variables
from research.train import sharding as shd


@flax.struct.dataclass
class PartState:
  params: Any
  opt_state: Any
  ema_params: Any  # same tree as params, or {} when EMA is off
  collections: dict[str, Any]  # non-parameter variables (batch_stats, ...)


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], completed steps
  rng: jax.Array  # uint32 [2], raw key data of the run's one key
  parts: dict[str, PartState]
  # First step whose loss or gradient norm was not finite (-1: none yet) and which metric it was
  # (index into `nonfinite_metric_names`). Kept in the state so the loop checks it without a host
  # sync per step.
  nonfinite_step: jax.Array  # int32 []
  nonfinite_metric: jax.Array  # int32 []

  def variables(self, use_ema: bool = False) -> Variables:
    """``{part: {"params": ..., **collections}}``, with EMA parameters when asked and kept."""
    out = {}
    for name, p in self.parts.items():
      params = p.ema_params if (use_ema and p.ema_params) else p.params
      out[name] = {"params": params, **p.collections}
    return out


def nonfinite_metric_names(parts: tuple[str, ...]) -> list[str]:
  return [f"{p}/{m}" for p in parts for m in ("loss", "grad_norm")]


def create_state(
  task: Task,
  optimizers: dict[str, optax.GradientTransformation],
  example_batch: Batch,
  seed: int,
  use_ema: bool,
) -> TrainState:
  key = jax.random.key(seed)
  init_key, run_key = jax.random.split(key)
  variables = task.init(init_key, example_batch)
  parts = {}
  for name in task.parts:
    v = dict(variables[name])
    params = v.pop("params")
    parts[name] = PartState(
      params=params,
      opt_state=optimizers[name].init(params),
      ema_params=jax.tree.map(jnp.copy, params) if use_ema and name in task.ema_parts else {},
      collections=v,
    )
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    rng=jax.random.key_data(run_key),
    parts=parts,
    nonfinite_step=jnp.full((), -1, jnp.int32),
    nonfinite_metric=jnp.full((), -1, jnp.int32),
  )


def example_batch(
  image_shape: tuple[int, int, int],
  has_labels: bool,
  n: int = 1,
  input_shape: tuple[int, int, int] | None = None,
) -> Batch:
  """Zeros with the pipeline's shapes and dtypes, for initialisation (`input_shape`: paired and
  unpaired data's 'input' images, `research.data.DatasetInfo.input_shape`)."""
  batch = {"image": jnp.zeros((n, *image_shape), jnp.uint8)}
  if input_shape is not None:
    batch["input"] = jnp.zeros((n, *input_shape), jnp.uint8)
  if has_labels:
    batch["label"] = jnp.zeros((n,), jnp.int32)
  return batch


def state_factory(
  task: Task,
  optimizers: dict[str, optax.GradientTransformation],
  image_shape: tuple[int, int, int],
  has_labels: bool,
  seed: int,
  use_ema: bool,
  input_shape: tuple[int, int, int] | None = None,
) -> Callable[[], TrainState]:
  """A no-argument function creating the initial state, for `jax.eval_shape` and `jax.jit`."""
  example = example_batch(image_shape, has_labels, input_shape=input_shape)
  return functools.partial(create_state, task, optimizers, example, seed, use_ema)


def init_sharded(make: Callable[[], TrainState], mesh: Mesh, fsdp_min_size: int = 2**14):
  """The initial state, created sharded on `mesh` (no full host copy), and its shardings."""
  shardings = shd.state_shardings(jax.eval_shape(make), mesh, fsdp_min_size)
  return jax.jit(make, out_shardings=shardings)(), shardings


def abstract_state(state_shapes: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target for Orbax on the current mesh."""
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, shardings
  )


def param_count(state: TrainState) -> dict[str, int]:
  return {
    name: int(sum(x.size for x in jax.tree.leaves(p.params))) for name, p in state.parts.items()
  }
