"""Test helpers: write torch.save-format files without torch, and pytorch-fid's Inception shapes.

`write_pth` produces the layouts torch.save writes for a state_dict of tensors: the zip archive
(torch >= 1.6: ``archive/data.pkl`` with persistent-id storages in ``archive/data/<key>``) and the
legacy stream (magic, protocol, sys_info, pickle, storage keys, raw storages). Pickles use protocol
2 with the same globals torch emits (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

_STORAGE_NAMES = {
  np.dtype(np.float32): "FloatStorage",
  np.dtype(np.float64): "DoubleStorage",
  np.dtype(np.int64): "LongStorage",
}


class _Global:
  """Pickled as a GLOBAL opcode `module.name` (torch need not be importable)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle's save_reduce wants a callable
    raise NotImplementedError


class Storage:
  def __init__(self, key: str, data: np.ndarray):
    self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class Tensor:
  """A tensor as torch pickles it: a view (offset, shape, element strides) of a storage."""

  def __init__(self, storage: Storage, offset: int, shape: tuple, stride: tuple):
    self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

  def __reduce__(self):
    rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
    return rebuild, (self.storage, self.offset, self.shape, self.stride, False, OrderedDict())


def tensor(key: str, array: np.ndarray) -> Tensor:
  """A contiguous tensor with its own storage."""
  array = np.asarray(array)
  strides = tuple(s // array.itemsize for s in array.strides) if array.ndim else ()
  return Tensor(Storage(key, array), 0, array.shape, strides)


class _Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table we can extend
  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages: dict[str, Storage] = {}

  def _save_global_stub(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

  dispatch[_Global] = _save_global_stub

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    self.storages[obj.key] = obj
    kind = _Global("torch", _STORAGE_NAMES[obj.data.dtype])
    pid = ("storage", kind, obj.key, "cpu", obj.data.size)
    return (*pid, None) if self.legacy else pid


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_records(state: dict[str, Tensor]) -> list[bytes]:
  """The legacy stream's parts in order: magic, protocol, sys_info, the state pickle, the storage
  keys (five pickles), then each storage's element count and bytes."""
  buf = io.BytesIO()
  pickler = _Pickler(buf, legacy=True)
  pickler.dump(OrderedDict(state))
  keys = sorted(pickler.storages)
  records = [
    pickle.dumps(LEGACY_MAGIC, protocol=2),
    pickle.dumps(1001, protocol=2),
    pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
    buf.getvalue(),
    pickle.dumps(keys, protocol=2),
  ]
  for key in keys:
    data = pickler.storages[key].data
    records.append(struct.pack("<q", data.size) + data.tobytes())
  return records


def write_pth(path: str, state: dict[str, Tensor], legacy: bool = False) -> None:
  if legacy:
    with open(path, "wb") as f:
      f.write(b"".join(legacy_records(state)))
    return
  buf = io.BytesIO()
  pickler = _Pickler(buf, legacy)
  pickler.dump(OrderedDict(state))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    for key, st in pickler.storages.items():
      z.writestr(f"archive/data/{key}", st.data.astype(st.data.dtype.newbyteorder("<")).tobytes())
    z.writestr("archive/version", "3\n")


def _a(prefix, cin, pool):
  return [
    (f"{prefix}.branch1x1", 64, cin, 1, 1),
    (f"{prefix}.branch5x5_1", 48, cin, 1, 1),
    (f"{prefix}.branch5x5_2", 64, 48, 5, 5),
    (f"{prefix}.branch3x3dbl_1", 64, cin, 1, 1),
    (f"{prefix}.branch3x3dbl_2", 96, 64, 3, 3),
    (f"{prefix}.branch3x3dbl_3", 96, 96, 3, 3),
    (f"{prefix}.branch_pool", pool, cin, 1, 1),
  ]


def _c(prefix, c7):
  return [
    (f"{prefix}.branch1x1", 192, 768, 1, 1),
    (f"{prefix}.branch7x7_1", c7, 768, 1, 1),
    (f"{prefix}.branch7x7_2", c7, c7, 1, 7),
    (f"{prefix}.branch7x7_3", 192, c7, 7, 1),
    (f"{prefix}.branch7x7dbl_1", c7, 768, 1, 1),
    (f"{prefix}.branch7x7dbl_2", c7, c7, 7, 1),
    (f"{prefix}.branch7x7dbl_3", c7, c7, 1, 7),
    (f"{prefix}.branch7x7dbl_4", c7, c7, 7, 1),
    (f"{prefix}.branch7x7dbl_5", 192, c7, 1, 7),
    (f"{prefix}.branch_pool", 192, 768, 1, 1),
  ]


def _e(prefix, cin):
  return [
    (f"{prefix}.branch1x1", 320, cin, 1, 1),
    (f"{prefix}.branch3x3_1", 384, cin, 1, 1),
    (f"{prefix}.branch3x3_2a", 384, 384, 1, 3),
    (f"{prefix}.branch3x3_2b", 384, 384, 3, 1),
    (f"{prefix}.branch3x3dbl_1", 448, cin, 1, 1),
    (f"{prefix}.branch3x3dbl_2", 384, 448, 3, 3),
    (f"{prefix}.branch3x3dbl_3a", 384, 384, 1, 3),
    (f"{prefix}.branch3x3dbl_3b", 384, 384, 3, 1),
    (f"{prefix}.branch_pool", 192, cin, 1, 1),
  ]


# (module, out channels, in channels, kh, kw) of every BasicConv2d in pytorch-fid's
# fid_inception_v3() (torchvision Inception3 with FIDInceptionA/C/E blocks, no aux head).
PYTORCH_FID_CONVS = [
  ("Conv2d_1a_3x3", 32, 3, 3, 3),
  ("Conv2d_2a_3x3", 32, 32, 3, 3),
  ("Conv2d_2b_3x3", 64, 32, 3, 3),
  ("Conv2d_3b_1x1", 80, 64, 1, 1),
  ("Conv2d_4a_3x3", 192, 80, 3, 3),
  *_a("Mixed_5b", 192, 32),
  *_a("Mixed_5c", 256, 64),
  *_a("Mixed_5d", 288, 64),
  ("Mixed_6a.branch3x3", 384, 288, 3, 3),
  ("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1),
  ("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3),
  ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3),
  *_c("Mixed_6b", 128),
  *_c("Mixed_6c", 160),
  *_c("Mixed_6d", 160),
  *_c("Mixed_6e", 192),
  ("Mixed_7a.branch3x3_1", 192, 768, 1, 1),
  ("Mixed_7a.branch3x3_2", 320, 192, 3, 3),
  ("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1),
  ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
  ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1),
  ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3),
  *_e("Mixed_7b", 1280),
  *_e("Mixed_7c", 2048),
]


def random_pytorch_fid_state(seed: int = 0) -> dict[str, np.ndarray]:
  """A random state_dict with exactly pytorch-fid's keys and shapes (566 entries)."""
  rng = np.random.default_rng(seed)
  state: dict[str, np.ndarray] = {}
  for name, cout, cin, kh, kw in PYTORCH_FID_CONVS:
    fan_in = cin * kh * kw
    w = rng.normal(scale=np.sqrt(2.0 / fan_in), size=(cout, cin, kh, kw))
    state[f"{name}.conv.weight"] = w.astype(np.float32)
    state[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f"{name}.bn.bias"] = rng.normal(scale=0.1, size=cout).astype(np.float32)
    state[f"{name}.bn.running_mean"] = rng.normal(scale=0.1, size=cout).astype(np.float32)
    state[f"{name}.bn.running_var"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    state[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  state["fc.weight"] = rng.normal(scale=0.02, size=(1008, 2048)).astype(np.float32)
  state["fc.bias"] = rng.normal(scale=0.1, size=1008).astype(np.float32)
  return state


def as_tensors(state: dict[str, np.ndarray]) -> dict[str, Tensor]:
  return {k: tensor(str(i), v) for i, (k, v) in enumerate(state.items())}
