"""TPU slices by their `gcloud` accelerator-type names, as compile-only devices of this machine.

``v4-32``, ``v5p-128`` count TensorCores (two per chip: 16 and 64 chips); ``v5litepod-16`` (also
``v5e-16``) and ``v6e-256`` count chips. Each maps to the topology string of
`jax.experimental.topologies` (``v4:2x2x4``, ``v5e:4x4``) and the chips per host of the real slice:
v4 and v5p hosts hold a 2x2x1 block of chips, v5e and v6e hosts 4 chips, or all 8 of a single-host
8-chip slice. v4 chips are compiled as megacores (one device per chip, as JAX sees a real v4).
Raw topology strings (``v5e:2x2``, ``v4:4x4x4``) are accepted too.
"""

from __future__ import annotations

import dataclasses
import math
import re

# Chips of a slice -> the topology's chip grid.
_GRID_3D = {
  4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
  256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16),
}  # fmt: skip
_GRID_2D = {
  1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
  256: (16, 16),
}  # fmt: skip
# gcloud prefix -> (topology prefix, TensorCores counted per chip in the name, grid table)
_FAMILIES = {
  "v4": ("v4", 2, _GRID_3D),
  "v5p": ("v5p", 2, _GRID_3D),
  "v5litepod": ("v5e", 1, _GRID_2D),
  "v5e": ("v5e", 1, _GRID_2D),
  "v6e": ("v6e", 1, _GRID_2D),
}
EXAMPLES = "v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v5p-128, v6e-8, v6e-256, or v5e:2x2"


class UnknownSlice(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str  # as given
  topology: str  # jax.experimental.topologies name, e.g. "v5e:4x4"
  chips: int
  chips_per_host: tuple[int, int, int]
  megacore: bool  # v4: one device per chip

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.chips_per_host)

  def topology_kwargs(self) -> dict:
    kw = {"chips_per_host_bounds": self.chips_per_host}
    if self.megacore:
      kw["chip_config_name"] = "megacore"
    return kw


def _host_block(family: str, grid: tuple[int, ...]) -> tuple[int, int, int]:
  chips = math.prod(grid)
  if family in ("v4", "v5p"):
    return (2, 2, 1)
  if chips <= 8:  # v5e / v6e single-host slices: up to 8 chips on one host
    return (grid[0], grid[1], 1)
  return (2, 2, 1)


def parse(name: str) -> Slice:
  """A gcloud accelerator type or a raw topology string -> its `Slice`; `UnknownSlice` if neither."""
  text = name.strip().lower()
  m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", text)
  if m:
    prefix, cores_per_chip, grids = _FAMILIES[m.group(1)]
    count = int(m.group(2))
    chips = count // cores_per_chip if count % cores_per_chip == 0 else 0
    if chips not in grids:
      sizes = ", ".join(f"{m.group(1)}-{c * cores_per_chip}" for c in grids)
      raise UnknownSlice(f"unknown slice {name!r}; {m.group(1)} slices are {sizes}")
    grid = grids[chips]
  else:
    m = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", text)
    if not m:
      raise UnknownSlice(f"unknown TPU slice {name!r}; use a name such as {EXAMPLES}")
    prefix = m.group(1)
    grid = tuple(int(x) for x in m.group(2).split("x"))
    chips = math.prod(grid)
    if prefix in ("v4", "v5p") and len(grid) != 3 or prefix in ("v5e", "v6e") and len(grid) != 2:
      dims = 3 if prefix in ("v4", "v5p") else 2
      raise UnknownSlice(
        f"topology {name!r}: {prefix} grids have {dims} dimensions; or use a name such as {EXAMPLES}"
      )
  topology = f"{prefix}:{'x'.join(map(str, grid))}"
  per_host = _host_block(prefix, grid)
  return Slice(name, topology, chips, per_host, megacore=prefix == "v4")


def devices(spec: Slice) -> list:
  """The compile-only devices of the slice (needs libtpu)."""
  from jax.experimental import topologies

  from research.compile_only_tpu import quiet_libtpu_without_tpus

  quiet_libtpu_without_tpus()

  desc = topologies.get_topology_desc(
    topology_name=spec.topology, platform="tpu", **spec.topology_kwargs()
  )
  return list(desc.devices)
