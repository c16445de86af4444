"""Files from anyone: a crafted pickle that would run a command is refused by every file loader of
the project (torch .pth in both layouts, with and without the checksum; the converted Inception
.npz; the reference-statistics cache), with a one-line error, and the command never runs."""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
from etils import epath

from research.data import safe_pickle
from research.errors import UserError
from research.eval import inception_weights as iw
from tests import torch_pth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = f"{os.system.__module__}.system"  # how pickle names os.system: posix.system


class _Command:
  """Unpickling this runs `touch <marker>` (a plain pickle.load would)."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
  path = tmp_path / "pwned"
  yield str(path)
  assert not path.exists(), "a crafted file ran a command"


def _refused(call, path: str, what: str = SYSTEM) -> UserError:
  with pytest.raises(UserError) as e:
    call()
  message = str(e.value)
  assert "\n" not in message and path in message and what in message, message
  return e.value


def test_the_payload_runs_under_plain_pickle(tmp_path):
  """The check of the check: the payload does run code when unpickled without restrictions."""
  path = tmp_path / "ran"
  pickle.loads(pickle.dumps(_Command(str(path)), protocol=2))  # noqa: S301
  assert path.exists()


_RECORDS = ("magic", "protocol", "sys_info", "state", "storage keys")


def _legacy_with(path: str, record: int, payload: bytes) -> None:
  state = {"w": torch_pth.tensor("0", np.arange(6, dtype=np.float32))}
  parts = torch_pth.legacy_records(state)
  parts[record] = payload
  with open(path, "wb") as f:
    f.write(b"".join(parts))


@pytest.mark.parametrize("record", range(len(_RECORDS)), ids=_RECORDS)
def test_legacy_pth_framing_records_are_refused(tmp_path, marker, record):
  path = str(tmp_path / "legacy.pth")
  _legacy_with(path, record, pickle.dumps(_Command(marker), protocol=2))
  out = str(tmp_path / "out.npz")
  _refused(lambda: iw.read_pth(path), path)
  _refused(lambda: iw.convert(path, out, expected_sha256=None), path)
  _refused(lambda: iw.convert(path, out), path, "sha256")  # the checksum fails first
  assert not os.path.exists(out)


def test_a_command_nested_in_the_state_dict_is_refused(tmp_path, marker):
  payload = pickle.dumps({"w": [1, (2, _Command(marker))]}, protocol=2)
  legacy = str(tmp_path / "legacy.pth")
  _legacy_with(legacy, 3, payload)
  _refused(lambda: iw.read_pth(legacy), legacy)
  archive = str(tmp_path / "nested.pth")
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("archive/data.pkl", payload)
  _refused(lambda: iw.read_pth(archive), archive)


def test_zip_pth_is_refused_with_and_without_checksum(tmp_path, marker, capsys):
  path = str(tmp_path / "archive.pth")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps(_Command(marker), protocol=2))
    z.writestr("archive/version", "3\n")
  out = str(tmp_path / "out.npz")
  _refused(lambda: iw.read_pth(path), path)
  _refused(lambda: iw.convert(path, out, expected_sha256=None), path)
  _refused(lambda: iw.convert(path, out), path, "sha256")
  assert iw.main([f"--src={path}", f"--out={out}", "--skip_checksum"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and err.count("\n") == 1 and SYSTEM in err
  assert not os.path.exists(out)


def test_tensor_views_outside_their_storage_are_refused(tmp_path):
  """A crafted stride would make as_strided read process memory beyond the file's bytes."""
  storage = torch_pth.Storage("s", np.arange(4, dtype=np.float32))
  for legacy in (False, True):
    for offset, shape, stride in ((0, (2,), (1 << 40,)), (3, (2,), (1,)), (-1, (1,), (1,))):
      path = str(tmp_path / f"view{legacy}{offset}.pth")
      torch_pth.write_pth(path, {"v": torch_pth.Tensor(storage, offset, shape, stride)}, legacy)
      _refused(lambda path=path: iw.read_pth(path), path, "tensor view")


def _npz_payloads(tmp_path, marker) -> dict[str, str]:
  """Files named .npz that hold pickles: an object array, a bare pickle, an object .npy."""
  files = {}
  files["object array"] = str(tmp_path / "object.npz")
  np.savez(files["object array"], a=np.array([_Command(marker)], dtype=object))
  files["bare pickle"] = str(tmp_path / "bare.npz")
  with open(files["bare pickle"], "wb") as f:
    pickle.dump(_Command(marker), f, protocol=2)
  files["object npy"] = str(tmp_path / "npy.npz")
  with open(files["object npy"], "wb") as f:
    np.save(f, np.array([_Command(marker)], dtype=object))
  return files


def test_inception_npz_with_pickles_is_refused(tmp_path, marker):
  import ml_collections

  from research.eval import feature_nets

  for path in _npz_payloads(tmp_path, marker).values():
    _refused(lambda path=path: iw.load_params(path), path, "")
    cfg = ml_collections.ConfigDict({"inception_weights": path, "inception_allow_unofficial": True})
    load = feature_nets.FEATURE_NETS.get("inception_v3")
    _refused(lambda cfg=cfg, load=load: load(cfg), path, "")


def test_reference_stats_cache_with_pickles_is_refused(tmp_path, marker):
  from research.eval import reference_stats

  conv = {"format": 1, "dataset": "x", "feature_dim": 3, "num_images": 5}
  for name, bad in _npz_payloads(tmp_path, marker).items():
    entry = epath.Path(tmp_path) / re.sub(r"\W", "_", name)
    os.replace(bad, entry.with_suffix(".npz"))
    entry.with_suffix(".json").write_text(json.dumps(conv))
    _refused(lambda entry=entry: reference_stats._load(entry, conv), str(entry), ".npz")
  good = epath.Path(tmp_path) / "good"
  good.with_suffix(".json").write_text(json.dumps(conv))
  np.savez(good.with_suffix(".npz"), mu=np.zeros(3), sigma=np.eye(3), features=np.ones((2, 3)))
  assert reference_stats._load(good, conv).features.shape == (2, 3)
  np.savez(good.with_suffix(".npz"), mu=np.zeros(3), sigma=np.eye(4), features=np.ones((2, 3)))
  _refused(lambda: reference_stats._load(good, conv), str(good), "sigma float64 (4, 4)")


def test_safe_pickle_allows_only_named_globals(tmp_path, marker):
  from collections import OrderedDict

  data = {"a": [1, 2.5, "x", b"y", (None, True)], "s": {3}}
  assert safe_pickle.load(_bytes(pickle.dumps(data, protocol=4)), "f") == data
  ordered = pickle.dumps(OrderedDict(a=1), protocol=2)
  with pytest.raises(safe_pickle.RefusedGlobal, match="f asks for the global collections.Ordered"):
    safe_pickle.load(_bytes(ordered), "f")
  allowed = {("collections", "OrderedDict"): OrderedDict}
  assert safe_pickle.load(_bytes(ordered), "f", allowed) == OrderedDict(a=1)
  with pytest.raises(UserError, match=r"^f is not a readable pickle \(.*\); use an intact file$"):
    safe_pickle.load(_bytes(b"\x80\x02garbage"), "f")


def _bytes(raw: bytes):
  import io

  return io.BytesIO(raw)


# Raw readers that run code or unpickle: only research/data/safe_pickle.py may call pickle, and
# every np.load must say allow_pickle=False.
_FORBIDDEN = re.compile(
  r"\b(pickle\.(loads?|Unpickler)|torch\.load|marshal\.loads?|shelve\.|joblib\.|dill\.|"
  r"cloudpickle\.)|np\.load\((?![^)]*allow_pickle=False)"
)


def test_no_unrestricted_loader_in_the_project():
  offenders = []
  for folder, _, names in os.walk(os.path.join(ROOT, "research")):
    for name in names:
      path = os.path.join(folder, name)
      if not name.endswith(".py") or path.endswith(os.path.join("data", "safe_pickle.py")):
        continue
      with open(path) as f:
        for i, line in enumerate(f, 1):
          if _FORBIDDEN.search(line):
            offenders.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
  assert not offenders, offenders
