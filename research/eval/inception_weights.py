r"""Converts pytorch-fid's FID Inception weights (.pth) into Flax params (.npz), without torch.

  python -m research.eval.inception_weights --src=pt_inception-2015-12-05-6726825d.pth \
      --out=inception_fid.npz

The source is the 2015-12-05 TF graph's weights as ported by pytorch-fid (`FID_WEIGHTS_URL` in
pytorch_fid/inception.py). Its SHA-256 is checked before anything is read: torch hub names files
`<name>-<first 8 hex of sha256>.pth`, and the full digest (with the size) is the one quoted by
several independent projects that pin this file. Then point the evaluation at the output with
`--config.eval.inception_weights=<npz>` or `RESEARCH_INCEPTION_WEIGHTS=<npz>`.

The .pth is read without torch: both of torch.save's layouts (the zip archive of torch >= 1.6,
``<root>/data.pkl`` + ``<root>/data/<key>``, and the older single-stream "legacy" format, whose
framing records are pickles too) are read through `research.data.safe_pickle`: the only globals
honoured are torch's tensor-rebuild functions, storage classes and OrderedDict, mapped onto NumPy
stand-ins (every tensor view is checked against its storage); any other global is refused before
it can run, with a one-line error, whether or not the checksum is checked.

Mapping (`research.models.inception`): ``<block>.conv.weight`` [O, I, kh, kw] -> ``<block>/conv/
kernel`` [kh, kw, I, O], with the block's inference BatchNorm (eps = 1e-3, torchvision's
`BasicConv2d`) folded in, in float64: scale = gamma / sqrt(var + eps), kernel *= scale,
bias = beta - mean * scale. ``fc.weight`` [1008, 2048] -> ``fc/kernel`` [2048, 1008].
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from research.data import safe_pickle
from research.errors import UserError

FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FILE_NAME
SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
SIZE_BYTES = 95_628_359
BN_EPS = 1e-3  # torchvision BasicConv2d: nn.BatchNorm2d(out_channels, eps=0.001)
ENV_VAR = "RESEARCH_INCEPTION_WEIGHTS"
SOURCE_KEY = "__source_sha256__"  # stored in the .npz beside the params

CONVERT_COMMAND = "python -m research.eval.inception_weights --src=<pth> --out=<npz>"
HOW_TO_GET = (
  f"download {URL} (sha256 {SHA256[:16]}...) on a machine with internet, convert it with "
  f"`{CONVERT_COMMAND}`, and set config.eval.inception_weights or ${ENV_VAR} to the .npz"
)

# torch storage class name -> NumPy dtype (little-endian, as torch writes on x86 and ARM).
_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
  """Stand-in for a torch storage class (``torch.FloatStorage``, ...): only its dtype is used."""

  def __init__(self, dtype: type):
    self.dtype = np.dtype(dtype)


def _is_count(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _strided(storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
  """A tensor as torch stores it: `size` elements of a 1-D storage from `offset`, `stride` apart.

  The view is checked first: it stays inside the storage and has no more elements than it (a
  crafted stride would otherwise read memory outside the file's data).
  """
  if not (isinstance(storage, np.ndarray) and storage.ndim == 1):
    raise ValueError(f"a tensor on a {type(storage).__name__}, not a storage")
  dims = tuple(size) if isinstance(size, tuple | list) else None
  steps = tuple(stride) if isinstance(stride, tuple | list) else None
  if not (
    _is_count(offset)
    and dims is not None
    and steps is not None
    and len(dims) == len(steps)
    and all(map(_is_count, dims + steps))
  ):
    raise ValueError(f"bad tensor view (offset {offset!r}, size {size!r}, stride {stride!r})")
  if 0 in dims:
    return np.zeros(dims, storage.dtype)
  last = offset + sum((d - 1) * s for d, s in zip(dims, steps, strict=True))
  if last >= len(storage) or math.prod(dims) > len(storage):
    raise ValueError(f"a tensor view {dims} at {offset} outside its {len(storage)}-element storage")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], shape=dims, strides=tuple(s * item for s in steps), writeable=False
  )
  return np.array(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
  """torch._utils._rebuild_tensor_v2 onto NumPy (deferred while a legacy storage is unread)."""
  del requires_grad, hooks, meta
  if isinstance(storage, _LegacyStorage):
    return _DeferredTensor(storage, offset, size, stride)
  return _strided(storage, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):
  return _rebuild_tensor_v2(storage, offset, size, stride)


# The only globals a torch state_dict pickle may name, each mapped to a stand-in of this module.
_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
  ("collections", "OrderedDict"): OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _LegacyStorage:
  """A legacy-format storage: its bytes follow the pickle, so tensors on it are built afterwards."""

  def __init__(self, key: str, dtype: np.dtype, root: _LegacyStorage | None = None, view=None):
    self.key, self.dtype, self.root, self.view = key, dtype, root or self, view
    self.data: np.ndarray | None = None  # set on the root storage once its bytes are read

  def array(self) -> np.ndarray:
    data = self.root.data
    if data is None:
      raise ValueError(f"storage {self.root.key!r} has no bytes in the file")
    if self.view is None:
      return data
    _, offset, size = self.view  # (view key, element offset, element count)
    return data[offset : offset + size]


class _DeferredTensor:
  def __init__(self, storage: _LegacyStorage, offset: int, size, stride):
    self.storage, self.args = storage, (offset, size, stride)

  def resolve(self) -> np.ndarray:
    return _strided(self.storage.array(), *self.args)


def _storage_pid(pid: Any, n: int) -> tuple[np.dtype, str, Any]:
  """(dtype, key, last field) of a ('storage', type, key, location, ...) persistent id of n fields."""
  if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"):
    raise ValueError(f"unsupported persistent id {str(pid)[:80]}")
  if not (isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
    raise ValueError(f"bad storage record {str(pid)[:80]}")
  return pid[1].dtype, pid[2], pid[-1]


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise UserError(f"{path} is a zip but not a torch.save archive (no single data.pkl)")
    root = pkl[0][: -len("data.pkl")]
    limit = os.path.getsize(path)  # torch stores members uncompressed: none is larger

    def read(name: str) -> bytes:
      if z.getinfo(name).file_size > limit:
        raise ValueError(f"member {name} unpacks to more bytes than the archive holds")
      return z.read(name)

    storages: dict[tuple[str, str], np.ndarray] = {}  # one read per storage, however many views

    def load_storage(pid: Any) -> np.ndarray:
      dtype, key, numel = _storage_pid(pid, 5)
      if not _is_count(numel):
        raise ValueError(f"bad storage size {numel!r}")
      if (key, dtype.str) not in storages:
        raw = read(f"{root}data/{key}")
        storages[key, dtype.str] = np.frombuffer(raw, dtype.newbyteorder("<"), count=numel)
      return storages[key, dtype.str]

    return safe_pickle.load(io.BytesIO(read(pkl[0])), path, _TORCH_GLOBALS, load_storage)


def _load_legacy(path: str) -> Any:
  """torch < 1.6's format: magic, protocol, sys_info, the pickle, storage keys, raw storages."""
  with open(path, "rb") as f:
    try:
      magic = safe_pickle.load(f, path)
    except safe_pickle.RefusedGlobal:
      raise
    except UserError:
      magic = None
    if magic != _LEGACY_MAGIC:
      raise UserError(f"{path} is neither a torch zip archive nor a legacy torch.save file")
    safe_pickle.load(f, path)  # protocol version (1001)
    safe_pickle.load(f, path)  # sys_info: byte order and type sizes
    storages: dict[str, _LegacyStorage] = {}

    def load_storage(pid: Any) -> _LegacyStorage:
      dtype, key, view = _storage_pid(pid, 6)
      root = storages.setdefault(key, _LegacyStorage(key, dtype))
      if view is None:
        return root
      if not (isinstance(view, tuple) and len(view) == 3 and all(map(_is_count, view[1:]))):
        raise ValueError(f"bad storage view {str(view)[:80]}")
      return _LegacyStorage(key, dtype, root, view)

    obj = safe_pickle.load(f, path, _TORCH_GLOBALS, load_storage)
    keys = safe_pickle.load(f, path)  # the storage keys, in the order their bytes follow
    for key in keys if isinstance(keys, list) else ():
      (numel,) = struct.unpack("<q", f.read(8))
      st = storages[key]
      raw = f.read(max(numel, 0) * st.dtype.itemsize)
      if numel < 0 or len(raw) != numel * st.dtype.itemsize:
        raise ValueError(f"storage {key!r} is truncated")
      st.data = np.frombuffer(raw, st.dtype.newbyteorder("<"))
  if not isinstance(obj, Mapping):
    return obj
  return {k: v.resolve() if isinstance(v, _DeferredTensor) else v for k, v in obj.items()}


def read_pth(path: str) -> dict[str, np.ndarray]:
  """A torch.save'd state_dict (zip or legacy layout) -> {name: np.ndarray}, without torch.

  Only the globals of `_TORCH_GLOBALS` are honoured (any other is refused, before it can run);
  every failure is a one-line `UserError` naming `path`.
  """
  try:
    state = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except UserError:
    raise
  except Exception as e:  # a crafted or damaged file can raise almost anything
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise UserError(
      f"{path} is not a readable torch.save file ({type(e).__name__}: {first}); use the "
      f"official {FILE_NAME}"
    ) from None
  if not isinstance(state, Mapping):
    raise UserError(f"{path} holds a {type(state).__name__}, not a state_dict")
  return dict(state)


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """pytorch-fid state_dict -> flat Flax params {"Mixed_5b/branch1x1/conv/kernel": ...} (float32)."""
  out: dict[str, np.ndarray] = {}
  convs = sorted(k[: -len(".conv.weight")] for k in state if k.endswith(".conv.weight"))
  for block in convs:
    w = np.asarray(state[f"{block}.conv.weight"], np.float64)  # [O, I, kh, kw]
    try:
      gamma, beta, mean, var = (
        np.asarray(state[f"{block}.bn.{n}"], np.float64)  # [O] each
        for n in ("weight", "bias", "running_mean", "running_var")
      )
    except KeyError as e:
      raise UserError(f"weight file has {block}.conv.weight but no {e.args[0]}") from None
    scale = gamma / np.sqrt(var + BN_EPS)  # inference BatchNorm (Ioffe & Szegedy 2015, Alg. 1)
    prefix = block.replace(".", "/") + "/conv/"
    out[prefix + "kernel"] = (w.transpose(2, 3, 1, 0) * scale).astype(np.float32)  # [kh, kw, I, O]
    out[prefix + "bias"] = (beta - mean * scale).astype(np.float32)  # [O]
  if "fc.weight" not in state or "fc.bias" not in state:
    raise UserError("weight file has no fc.weight/fc.bias: it is not the 1008-way FID Inception")
  out["fc/kernel"] = np.asarray(state["fc.weight"], np.float32).T  # [2048, 1008]
  out["fc/bias"] = np.asarray(state["fc.bias"], np.float32)  # [1008]
  return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def check_against_model(params: Mapping[str, Any]) -> None:
  """Raises a UserError unless `params` has exactly the FID InceptionV3's names and shapes."""
  import jax
  import jax.numpy as jnp

  from research.models.inception import InceptionV3

  x = jnp.zeros((1, 75, 75, 3), jnp.uint8)
  expected = jax.eval_shape(InceptionV3().init, jax.random.key(0), x)["params"]
  want = {
    jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(expected)
  }
  got = {
    jax.tree_util.keystr(p): np.shape(a) for p, a in jax.tree_util.tree_leaves_with_path(params)
  }
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or extra or wrong:
    raise UserError(
      f"weights do not fit the FID InceptionV3: missing {missing[:3]}, unexpected {extra[:3]}, "
      f"wrong shapes {[(k, got[k], want[k]) for k in wrong[:3]]}; convert {FILE_NAME} with "
      f"`{CONVERT_COMMAND}`"
    )


def convert(src: str, out: str, expected_sha256: str | None = SHA256) -> str:
  """Checks `src`'s checksum, converts it and writes `out` (.npz); returns src's sha256."""
  if not os.path.exists(src):
    raise UserError(f"no weight file at {src}; {HOW_TO_GET}")
  digest = sha256_of(src)
  if expected_sha256 is not None and digest != expected_sha256:
    size = os.path.getsize(src)
    raise UserError(
      f"{src} has sha256 {digest}, not {expected_sha256} ({FILE_NAME}, {SIZE_BYTES} bytes; this "
      f"file has {size}); download it again from {URL}"
    )
  flat = convert_state_dict(read_pth(src))
  check_against_model(unflatten(flat))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp.npz"
  np.savez(tmp, **flat, **{SOURCE_KEY: np.array(digest)})
  os.replace(tmp, out)
  return digest


def load_params(path: str) -> tuple[dict[str, Any], str]:
  """A converted .npz -> (nested params for `InceptionV3`, the source .pth's sha256)."""
  if not os.path.exists(path):
    raise UserError(f"no Inception weights at {path}; {HOW_TO_GET}")
  arrays = safe_pickle.load_npz(path, path, f"convert it again with `{CONVERT_COMMAND}`")
  source = str(arrays.pop(SOURCE_KEY, "unknown"))
  flat = arrays
  params = unflatten(flat)
  check_against_model(params)
  return params, source


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help=f"the downloaded {FILE_NAME}")
  parser.add_argument("--out", required=True, help="the Flax params .npz to write")
  parser.add_argument(
    "--skip_checksum", action="store_true", help="convert a file whose sha256 is not the official"
  )
  args = parser.parse_args(argv)
  try:
    digest = convert(args.src, args.out, None if args.skip_checksum else SHA256)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out} (source sha256 {digest})")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
