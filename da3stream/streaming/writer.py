"""A single background thread that applies store writes in order.

The pipeline hands each commit to :class:`AsyncWriter` and goes on with the next
window while Blosc compression and disk I/O run (they release the GIL). The
queue is bounded, so a slow disk applies back-pressure instead of growing
memory. Writes are applied strictly in submission order, which keeps the
store's commit sequence identical to a synchronous run. An exception raised by
a write is re-raised in the caller at the next :meth:`submit` or :meth:`flush`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

_STOP = object()


class AsyncWriter:
    """Ordered, bounded, exception-propagating background executor for store writes."""

    def __init__(self, max_pending: int = 2, *, threaded: bool = True) -> None:
        self._threaded = threaded and max_pending > 0
        self._error: Optional[BaseException] = None
        self._failed = False  # after a failed write no later one is applied (it would build on the missing one)
        self.busy_seconds = 0.0
        self.wait_seconds = 0.0
        if self._threaded:
            self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
            self._thread = threading.Thread(target=self._loop, name="da3stream-writer", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if not self._failed:
                    t0 = time.perf_counter()
                    try:
                        item()
                    except BaseException as exc:  # re-raised in the caller
                        self._error = exc
                        self._failed = True
                    self.busy_seconds += time.perf_counter() - t0
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue ``fn``; blocks while ``max_pending`` writes are waiting."""
        self._raise_pending()
        if not self._threaded:
            t0 = time.perf_counter()
            fn()
            self.busy_seconds += time.perf_counter() - t0
            return
        t0 = time.perf_counter()
        self._queue.put(fn)
        self.wait_seconds += time.perf_counter() - t0

    def flush(self) -> None:
        """Wait until every queued write has been applied; re-raise the first failure."""
        if self._threaded:
            t0 = time.perf_counter()
            self._queue.join()
            self.wait_seconds += time.perf_counter() - t0
        self._raise_pending()

    def close(self) -> None:
        """Apply what is queued, stop the thread and re-raise a pending failure."""
        if self._threaded and self._thread.is_alive():
            self._queue.join()
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_pending()
