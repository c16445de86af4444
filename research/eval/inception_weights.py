r"""Converts pytorch-fid's FID Inception weights (.pth) into Flax params (.npz), without torch.

  python -m research.eval.inception_weights --src=pt_inception-2015-12-05-6726825d.pth \
      --out=inception_fid.npz

The source is the 2015-12-05 TF graph's weights as ported by pytorch-fid (`FID_WEIGHTS_URL` in
pytorch_fid/inception.py). Its SHA-256 is checked before anything is read: torch hub names files
`<name>-<first 8 hex of sha256>.pth`, and the full digest (with the size) is the one quoted by
several independent projects that pin this file. Then point the evaluation at the output with
`--config.eval.inception_weights=<npz>` or `RESEARCH_INCEPTION_WEIGHTS=<npz>`.

The .pth is read without torch: both of torch.save's layouts (the zip archive of torch >= 1.6,
``<root>/data.pkl`` + ``<root>/data/<key>``, and the older single-stream "legacy" format) are
unpickled with a restricted `pickle.Unpickler` that maps torch's tensor-rebuild functions and
storage persistent ids onto NumPy arrays; any other global in the pickle is refused.

Mapping (`research.models.inception`): ``<block>.conv.weight`` [O, I, kh, kw] -> ``<block>/conv/
kernel`` [kh, kw, I, O], with the block's inference BatchNorm (eps = 1e-3, torchvision's
`BasicConv2d`) folded in, in float64: scale = gamma / sqrt(var + eps), kernel *= scale,
bias = beta - mean * scale. ``fc.weight`` [1008, 2048] -> ``fc/kernel`` [2048, 1008].
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

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
  def __init__(self, dtype: type):
    self.dtype = np.dtype(dtype)


def _strided(storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
  """A tensor as torch stores it: `size` elements of a 1-D storage from `offset`, `stride` apart."""
  if len(size) == 0:
    return np.array(storage[offset])
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
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


class _LegacyStorage:
  """A legacy-format storage: its bytes follow the pickle, so tensors on it are built afterwards."""

  def __init__(self, dtype: np.dtype, root: _LegacyStorage | None = None, view: Any = None):
    self.dtype, self.root, self.view = dtype, root or self, view
    self.data: np.ndarray | None = None  # set on the root storage once its bytes are read

  def array(self) -> np.ndarray:
    data = self.root.data
    assert data is not None, "storage bytes not read"
    if self.view is None:
      return data
    _, offset, size = self.view  # (view key, element offset, element count)
    return data[offset : offset + size]


class _DeferredTensor:
  def __init__(self, storage: _LegacyStorage, offset: int, size, stride):
    self.storage, self.args = storage, (offset, size, stride)

  def resolve(self) -> np.ndarray:
    return _strided(self.storage.array(), *self.args)


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a torch state_dict onto NumPy; refuses every global but the few a state_dict uses."""

  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if (module, name) == ("torch._utils", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise pickle.UnpicklingError(f"refusing global {module}.{name} in a weight file")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    return self._load_storage(pid)


def _load_zip(path: str) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise UserError(f"{path} is a zip but not a torch.save archive (no single data.pkl)")
    root = pkl[0][: -len("data.pkl")]

    def load_storage(pid):
      _, storage_type, key, _location, numel = pid[:5]
      raw = z.read(f"{root}data/{key}")
      return np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"), count=numel)

    return _TorchUnpickler(io.BytesIO(z.read(pkl[0])), load_storage).load()


def _load_legacy(path: str) -> dict[str, np.ndarray]:
  """torch < 1.6's format: magic, protocol, sys_info, the pickle, storage keys, raw storages."""
  with open(path, "rb") as f:
    try:
      magic = pickle.load(f)
    except Exception:
      magic = None
    if magic != _LEGACY_MAGIC:
      raise UserError(f"{path} is neither a torch zip archive nor a legacy torch.save file")
    pickle.load(f)  # protocol version (1001)
    pickle.load(f)  # sys_info: byte order and type sizes
    storages: dict[str, _LegacyStorage] = {}

    def load_storage(pid):
      _, storage_type, key, _location, _numel, view = pid
      root = storages.setdefault(key, _LegacyStorage(storage_type.dtype))
      return root if view is None else _LegacyStorage(storage_type.dtype, root, view)

    obj = _TorchUnpickler(f, load_storage).load()
    for key in pickle.load(f):  # the storage keys, in the order their bytes follow
      (numel,) = struct.unpack("<q", f.read(8))
      st = storages[key]
      st.data = np.frombuffer(f.read(numel * st.dtype.itemsize), st.dtype.newbyteorder("<"))
  return {k: v.resolve() if isinstance(v, _DeferredTensor) else v for k, v in obj.items()}


def read_pth(path: str) -> dict[str, np.ndarray]:
  """A torch.save'd state_dict (zip or legacy layout) -> {name: np.ndarray}, without torch."""
  if zipfile.is_zipfile(path):
    state = _load_zip(path)
  else:
    state = _load_legacy(path)
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
  with np.load(path) as z:
    flat = {k: z[k] for k in z.files if k != SOURCE_KEY}
    source = str(z[SOURCE_KEY]) if SOURCE_KEY in z.files else "unknown"
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
