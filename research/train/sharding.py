"""Device mesh and shardings: data parallel by default, FSDP parameter sharding when configured.

The mesh has two axes, ``("data", "fsdp")``. A batch is split over both (every device sees a different
slice of the global batch). Parameters are replicated over ``data``; with ``fsdp > 1`` each large
parameter is split along its largest dimension that divides by the ``fsdp`` size (the big_vision
"fsdp" rule), and XLA inserts the all-gathers and reduce-scatters.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.errors import UserError

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
  """A ``(data, fsdp)`` mesh over `devices` (default: all); -1 means "the rest of the devices"."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise UserError("config.mesh.data and config.mesh.fsdp are both -1; set one of them")
  if data == -1:
    data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if data > 0 and n % data == 0 else 0
  if data * fsdp != n:
    raise UserError(
      f"config.mesh data={data} x fsdp={fsdp} does not match the {n} devices; "
      "set config.mesh.data=-1 to use all devices"
    )
  # Auto axes (jax.sharding.Mesh's default; jax.make_mesh would default to Explicit).
  return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Dim 0 split over every device of the mesh; other dims whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(
      f"global batch size {batch_size} does not divide by the {n} devices; "
      f"set {what} to a multiple of {n}"
    )


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """Splits the largest dimension divisible by `fsdp_size`; small arrays stay replicated."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp_min_size: int = 2**14) -> Any:
  """NamedShardings for every leaf of an abstract (``jax.eval_shape``) state."""
  fsdp_size = mesh.shape["fsdp"]

  def leaf_sharding(leaf: Any) -> NamedSharding:
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, fsdp_spec(shape, fsdp_size, fsdp_min_size))

  return jax.tree.map(leaf_sharding, abstract_state)
