"""Reading files that anyone may have written: pickles through an allow-list, .npz without pickles.

Every pickle the project reads goes through `load`: an unpickler whose `find_class` returns only
the globals the caller names (each mapped to the project's own stand-in, never the real import) and
refuses any other with a one-line `UserError` naming the file and the global. Without globals a
pickle can only build plain data (numbers, strings, tuples, lists, dicts, sets), so no code runs.

Every .npz the project reads goes through `load_npz`: `np.load(..., allow_pickle=False)` (object
arrays, the pickles inside .npy files, are refused), all arrays read at once, any failure a
one-line `UserError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from research.errors import UserError


class RefusedGlobal(UserError):
  """A pickle asked for a global outside the allow-list (what a code-running pickle does)."""


def _reason(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


class _Unpickler(pickle.Unpickler):
  def __init__(
    self,
    file: IO[bytes],
    where: str,
    allowed: Mapping[tuple[str, str], Any],
    persistent_load: Callable[[Any], Any] | None,
  ):
    super().__init__(file)
    self._where, self._allowed, self._persistent = where, allowed, persistent_load

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._allowed:
      return self._allowed[(module, name)]
    raise RefusedGlobal(
      f"{self._where} asks for the global {module}.{name}, which such a file never needs (it could "
      "run code); refused: use a file from a trusted source"
    )

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent is None:
      raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
    return self._persistent(pid)


def load(
  file: IO[bytes],
  where: str,
  allowed: Mapping[tuple[str, str], Any] | None = None,
  persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
  """One pickle from `file` (read from its current position), using only `allowed` globals.

  `where` names the file in errors. `allowed` maps (module, name) to the object to use instead
  (none by default: plain data only); `persistent_load` resolves persistent ids (none: refused).
  A refused global raises `RefusedGlobal`; any other failure a `UserError`.
  """
  try:
    return _Unpickler(file, where, allowed or {}, persistent_load).load()
  except UserError:
    raise
  except Exception as e:  # a crafted or damaged file can raise almost anything
    raise UserError(
      f"{where} is not a readable pickle ({_reason(e)}); use an intact file"
    ) from None


def load_npz(file: str | IO[bytes], where: str, fix: str) -> dict[str, np.ndarray]:
  """Every array of the .npz `file` (a path or an open binary file), without unpickling anything.

  `where` names the file and `fix` says what to do about a bad one, in the one-line `UserError`.
  """
  try:
    z = np.load(file, allow_pickle=False)
  except Exception as e:  # not a zip, a .npy of objects, truncated, ...
    raise UserError(f"{where} is not a plain-array .npz ({_reason(e)}); {fix}") from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise UserError(f"{where} is a single .npy array, not an .npz archive; {fix}")
  with z:
    try:
      return {k: z[k] for k in z.files}
    except Exception as e:  # object arrays (pickles), damaged members, ...
      raise UserError(f"{where} is not a plain-array .npz ({_reason(e)}); {fix}") from None
