"""The prefetch thread of a frame source: a generator run in a daemon thread behind a bounded queue.

An exception in the thread is handed to the consumer and re-raised there as a
one-line :class:`~da3stream.errors.SourceError` naming the source
(:func:`reraise_in_consumer`); closing the prefetcher stops the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Iterator

from da3stream.errors import Da3StreamError, SourceError

log = logging.getLogger(__name__)

__all__ = ["Prefetcher", "reraise_in_consumer"]

_POLL_SECONDS = 0.05
"""How often a blocked prefetch thread checks whether the consumer has closed the source."""
_JOIN_SECONDS = 5.0
"""How long :meth:`Prefetcher.close` (and so :meth:`FrameSource.close`) waits for the prefetch thread to finish."""


def reraise_in_consumer(exc: BaseException, name: str) -> None:
    """Raise in the consumer: da3stream errors as they are, others as a one-line SourceError."""
    if isinstance(exc, (Da3StreamError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
    text = " ".join(str(exc).split()) or "no details"
    raise SourceError(f"{name}: reading failed ({type(exc).__name__}: {text})") from exc



class Prefetcher:
    """Runs a generator in a daemon thread, handing items over through a bounded queue."""

    def __init__(self, factory: Callable[[], Iterator], depth: int, name: str) -> None:
        self._factory = factory
        self._name = name
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"da3stream-prefetch {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        gen = self._factory()
        try:
            for item in gen:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(("error", exc))
        finally:
            gen.close()

    def _put(self, message) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            try:
                kind, payload = self._queue.get(timeout=_POLL_SECONDS * 10)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                if self._queue.empty():
                    if self._stop.is_set():
                        return
                    raise SourceError(f"{self._name}: the prefetch thread ended without a result")
                continue
            if kind == "item":
                yield payload
            elif kind == "end":
                return
            else:
                reraise_in_consumer(payload, self._name)

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning("%s: the prefetch thread did not stop within %.0f s", self._name, _JOIN_SECONDS)
