"""Filesystem faults in one line: the workdir probe, an OSError's cause in words (however Orbax or
TensorStore wrapped it), and the quieting of what Orbax's aborted I/O leaves on stderr.

When a checkpoint read or write fails, `research.train.checkpoint.Checkpointer` raises one line;
the multi-line reports of the same failure from Orbax's threads (its logged tracebacks, asyncio's
"Task exception was never retrieved", Python's unraisable "Event loop is closed" and "coroutine was
never awaited") are dropped by the narrow filters installed here, and only those.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from etils import epath

from research.errors import UserError


def absolute(path: str) -> str:
  """Local paths made absolute; URLs (gs://...) kept as they are."""
  return path if "://" in path else os.path.abspath(path)


def causes(e: BaseException) -> Iterator[BaseException]:
  """`e`, what it was raised from, and the members of exception groups, each once."""
  todo, seen = [e], set()
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    yield x
    todo.extend([x.__cause__, x.__context__, *getattr(x, "exceptions", ())])


def first_line(e: BaseException, limit: int = 200) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  for cut in (" See full TensorStore details", " [tensorstore_spec"):
    text = text.split(cut)[0]
  return text if len(text) <= limit else text[: limit - 3] + "..."


def os_error(e: BaseException) -> OSError | None:
  """The OSError behind `e` (Orbax and TensorStore wrap them), or None."""
  for x in causes(e):
    if isinstance(x, OSError):
      return x
  return None


def fs_errno(e: BaseException) -> int | None:
  """The errno of the filesystem failure behind `e`: an OSError's, or the one TensorStore writes
  into its own errors (``[os_error_code='28']``); None when `e` is no filesystem failure."""
  for x in causes(e):
    if isinstance(x, OSError):
      return x.errno or 0
    found = re.search(r"os_error_code='?(\d+)", str(x))
    if found:
      return int(found.group(1))
  return None


def cause(e: BaseException) -> str:
  """A filesystem error in words: "No space left on device", "Permission denied", ..."""
  number = fs_errno(e)
  if number:
    return os.strerror(number)
  return first_line(os_error(e) or e)


def check_workdir(workdir: str, *, create: bool) -> None:
  """Creates `workdir` (train) or checks it exists (sample, eval), then writes and removes a probe
  file, so a path that cannot hold a run fails in a second, as one line, before any data or JAX."""
  path = epath.Path(absolute(workdir))
  probe = path / f".write-probe-{socket.gethostname()}-{os.getpid()}"
  try:
    if not create and not path.exists():
      raise UserError(f"no checkpoint in {path}/checkpoints; train first with --mode=train")
    if path.exists() and not path.is_dir():
      raise UserError(f"--workdir={workdir} is not a directory; pass a directory")
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("research")
    probe.unlink()
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001  (gs:// backends raise their own types)
    try:
      probe.unlink(missing_ok=True)  # created but not written: a full disk
    except Exception:  # noqa: BLE001
      pass
    raise UserError(
      f"cannot use --workdir={workdir}: {cause(e)}; pass a directory this user can write to"
    ) from None


def _through_orbax(tb: Any) -> bool:
  while tb is not None:
    if "orbax" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


# TensorStore's errors read "NOT_FOUND: Error opening ...", "OUT_OF_RANGE: Error reading ...".
_TENSORSTORE_STATUS = re.compile(r"[A-Z][A-Z_]+: Error (opening|reading|writing) ")


class _AbortedIOLogFilter(logging.Filter):
  """Drops the multi-line log reports (tracebacks) of Orbax I/O that failed, which `Checkpointer`
  raises as one line: Orbax's own reports of a save that failed on the filesystem (absl logger),
  and asyncio's "Task/Future exception was never retrieved" for Orbax's sibling reads of a damaged
  checkpoint, abandoned once the first one failed (TensorStore's futures: their traceback may not
  pass through Orbax, but their error is a TensorStore status line), and for TensorStore's sibling
  writes of a save that ran out of space (whose error carries the errno) (asyncio logger)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or not record.exc_info:
      return True
    if record.name == "asyncio":
      exc, tb = record.exc_info[1], record.exc_info[2]
      never_retrieved = "never retrieved" in str(record.msg)
      abandoned_io = fs_errno(exc) is not None or _TENSORSTORE_STATUS.match(str(exc)) is not None
      return not (_through_orbax(tb) or (never_retrieved and abandoned_io))
    return "orbax" not in record.pathname or fs_errno(record.exc_info[1]) is None


def _quiet_unraisable() -> None:
  """After a damaged read or a failed write, TensorStore's pending callbacks find Orbax's event loop
  closed and the reads' coroutines die unawaited; Python reports each (dozens of tracebacks, from
  other threads, while the error is still on its way up) through the unraisable hook. Those, and
  only those, are dropped: `Checkpointer` reports the failure in one line. (Installed with the
  first Checkpointer, since they can come before the error reaches it.)"""
  if getattr(sys.unraisablehook, "_research_quiet", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    exc, obj = unraisable.exc_value, unraisable.object
    loop_closed = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
    orbax_read = "orbax" in getattr(getattr(obj, "cr_code", None), "co_filename", "")
    if not (loop_closed or orbax_read):
      previous(unraisable)

  hook._research_quiet = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook
  # Their coroutines, abandoned unawaited: a read of a damaged step, a write of a failed save.
  warnings.filterwarnings("ignore", "coroutine '(_read_array|async_serialize)", RuntimeWarning)


def join_orbax_threads(timeout: float = 120.0) -> None:
  """After a failed save, Orbax's other writer threads of that step may still be running: waits for
  them, so none is cut off at exit (where it fails again, with a traceback)."""
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax."):
      try:
        thread.join(max(0.0, deadline - time.monotonic()))
      except Exception:  # noqa: BLE001  (Orbax's threads re-raise their own failure on join)
        pass


def innermost(e: BaseException) -> BaseException:
  """The root cause (TensorStore's status line rather than Orbax's long wrapper)."""
  for _ in range(32):  # a chain can loop
    inner = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    if inner is None:
      break
    e = inner
  return e


_LOG_FILTER = _AbortedIOLogFilter()


def quiet_aborted_io() -> None:
  """Installs the filters (once; idempotent)."""
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_LOG_FILTER)  # a logger's filters are a set
  _quiet_unraisable()
