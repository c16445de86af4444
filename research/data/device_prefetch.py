"""Host batches to global `jax.Array`s, a few batches ahead, on a background thread.

`DevicePrefetcher` wraps an iterator of local numpy batches. A daemon thread pulls from it, turns
each leaf into a global array with `jax.make_array_from_process_local_data` (the transfer to the
devices starts there) and keeps up to `size` of them in a queue, so the training loop does not wait
on host work. An exception in the thread is re-raised by `next()` in the consumer. The thread holds
no reference to the prefetcher, so dropping the prefetcher (or calling `close()`) stops it; it never
keeps the process alive.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Self

import jax
import numpy as np

_POLL_S = 0.1  # How often a blocked worker checks whether it should stop.
_LIVE: weakref.WeakSet[DevicePrefetcher] = weakref.WeakSet()


class _End:
  """Queue marker: the host iterator is exhausted."""


class _Failure:
  """Queue marker: the host iterator or the conversion raised `error`."""

  def __init__(self, error: BaseException):
    self.error = error


def leaf_sharding(sharding: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
  """Every leaf's sharding: dim 0 over `sharding.spec[0]` (the batch axes), the rest replicated."""
  spec0 = sharding.spec[0] if len(sharding.spec) else None
  return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(spec0))


def to_global(
  batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding
) -> dict[str, jax.Array]:
  """Local numpy batch -> dict of global arrays sharded over the batch axes."""
  target = leaf_sharding(sharding)
  return {
    k: jax.make_array_from_process_local_data(target, np.asarray(v)) for k, v in batch.items()
  }


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
  """Puts `item`, waking up now and then to honour `stop`. False if stopped first."""
  while not stop.is_set():
    try:
      q.put(item, timeout=_POLL_S)
      return True
    except queue.Full:
      continue
  return False


def _worker(
  source: Iterator[Any], convert: Callable[[Any], Any], q: queue.Queue, stop: threading.Event
) -> None:
  try:
    for host_batch in source:
      if stop.is_set() or not _put(q, convert(host_batch), stop):
        return
    _put(q, _End(), stop)
  except BaseException as e:  # noqa: BLE001  # Handed to the consumer, who re-raises it.
    _put(q, _Failure(e), stop)


class DevicePrefetcher(Iterator[dict[str, jax.Array]]):
  """An iterator of global batches, `size` of them prepared ahead on a daemon thread.

  With `size <= 0` it converts each batch synchronously in `next()`.
  """

  def __init__(
    self,
    source: Iterator[dict[str, np.ndarray]],
    sharding: jax.sharding.NamedSharding,
    size: int = 2,
    name: str = "device_prefetch",
  ):
    self._convert = lambda b: to_global(b, sharding)
    self._done = False
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._source: Iterator[dict[str, np.ndarray]] | None = None
    if size <= 0:
      self._source = source
      return
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._thread = threading.Thread(
      target=_worker, args=(source, self._convert, self._queue, self._stop), name=name, daemon=True
    )
    self._thread.start()
    _LIVE.add(self)

  def __iter__(self) -> Self:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self._done:
      raise StopIteration
    if self._thread is None:
      try:
        return self._convert(next(self._source))
      except StopIteration:
        self._done = True
        raise
    item = self._queue.get()
    if isinstance(item, _End):
      self._done = True
      raise StopIteration
    if isinstance(item, _Failure):
      self._done = True
      raise item.error
    return item

  def close(self, timeout: float | None = 5.0) -> None:
    """Stops the worker thread and drops the prepared batches. Idempotent."""
    self._done = True
    self._stop.set()
    self._source = None
    if self._thread is not None:
      while True:  # Unblock a worker waiting on a full queue.
        try:
          self._queue.get_nowait()
        except queue.Empty:
          break
      if timeout and self._thread is not threading.current_thread():
        self._thread.join(timeout)

  def __del__(self) -> None:
    try:
      self._stop.set()  # No join here: the worker notices within _POLL_S and exits.
    except AttributeError:  # __init__ failed half-way.
      pass

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


@atexit.register
def _stop_all() -> None:
  """Stops live workers before interpreter teardown (tf.data dislikes dying mid-`next`)."""
  for prefetcher in list(_LIVE):
    prefetcher.close(timeout=1.0)
