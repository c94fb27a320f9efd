"""Predictor-ahead: the network runs window k+1 while window k is aligned, fused and committed.

Without it the loop is serial per window: predict (GPU busy), then align, fuse,
loop-verify and hand the commit to the writer (GPU idle). :class:`PredictAhead`
moves each window's ``predict`` into one worker thread and defers the window's
processing until the NEXT window has been handed to the worker, so the two
overlap. Results cannot change:

- Predictions are consumed strictly in submission order, and the same windows
  are predicted, from the same frames, as in the serial loop: a window's frames
  depend only on the source, the keyframe filter and the previous window's
  carry, which the serial loop would also form before predicting it.
- The next window is submitted only once the deferred window's prediction has
  succeeded (the worker is then idle only for the moment the main thread takes
  to hand over the next window). A deferred prediction that failed -- rejected
  (non-finite output), out of memory, or any other error -- goes through the
  serial code path (the ``serial`` window runner, with the ahead prediction as
  its first attempt: rejection, shrink and retry, or the error raised) before
  anything else is submitted, so the predictor sees exactly the
  serial loop's sequence of calls. The one remaining speculation: an
  out-of-memory error while the deferred window is *processed* (a loop-closure
  verification forward) retries that window smaller after the next one was
  submitted; that prediction is then waited for and dropped.
- Source-log rows are assigned to the window whose read made them pending, as
  in the serial loop, so every commit (and thus the store and a resume from it)
  is identical.
- Exceptions raised by ``predict`` in the worker are re-raised in the main
  thread when that window is processed.

The network never runs twice at once: :class:`SerializedPredictor` puts one
lock around every ``predict`` (the worker's and the loop closer's verification
windows), so GPU memory stays at one forward, which is what the memory planner
budgets.

This module wraps two stages it is handed, the predictor stage and the serial
window runner, and reaches into neither: it cuts windows with the
:class:`~da3stream.streaming.windows.WindowScheduler`, moves source-log rows
with :meth:`~da3stream.streaming.state.SourceLog.swap`, and only decides
*when* each step runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

__all__ = ["PredictAhead", "SerializedPredictor"]


class SerializedPredictor:
    """A predictor whose ``predict`` runs under one lock (other attributes pass through).

    Two threads (the predict-ahead worker and the loop closer in the main thread)
    share one network; the lock keeps one forward on the device at a time.
    """

    def __init__(self, inner: Any, lock: Optional[threading.Lock] = None) -> None:
        self._inner = inner
        self._lock = lock or threading.Lock()
        self.wait_seconds = 0.0
        """Seconds callers spent waiting for the lock (the other thread was predicting)."""

    @property
    def inner(self) -> Any:
        return self._inner

    def predict(self, batch, **kwargs):
        t0 = time.perf_counter()
        with self._lock:
            self.wait_seconds += time.perf_counter() - t0
            return self._inner.predict(batch, **kwargs)

    __call__ = predict

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_lock"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"SerializedPredictor({self._inner!r})"


@dataclass
class _Job:
    """A window handed to the worker, processed later."""

    window: list
    """The window's frames (carry first)."""
    n_carry: int
    """Frames shared with the previous window."""
    source_rows: list
    """Source-log rows pending when the window was formed (committed with it)."""
    future: cf.Future
    """The worker's ``predict(window)``."""


Serial = Callable[[list, int, Optional[Callable[[], Any]]], "tuple[list, int]"]
"""``serial(buffer, n_carry, first_prediction)``: process the next window of ``buffer`` (retrying smaller on
out-of-memory, ``first_prediction()`` as the first attempt's prediction); return the next buffer and carry count."""


class PredictAhead:
    """Runs ``predict`` one window ahead in a worker thread (see the module docstring).

    Args:
        predict: the predictor stage, ``predict(frames) -> Prediction``.
        serial: the serial window runner (see :data:`Serial`).
        scheduler: the :class:`~da3stream.streaming.windows.WindowScheduler` that cuts windows.
        source_log: the run's :class:`~da3stream.streaming.state.SourceLog`.
        timer_add: ``(name, seconds)`` callback for the wait timings.
    """

    def __init__(self, predict: Callable[[list], Any], serial: Serial, scheduler: Any, source_log: Any,
                 timer_add: Optional[Callable[[str, float], None]] = None) -> None:
        self._predict = predict
        self._serial = serial
        self._scheduler = scheduler
        self._log = source_log
        self.pending: Optional[_Job] = None
        self._timer_add = timer_add or (lambda name, dt: None)
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="da3stream-predict")
        self.n_submitted = 0
        self.n_dropped = 0
        """Predictions made ahead and dropped (the window before them was retried smaller while processed)."""

    # ------------------------------------------------------------------ steps
    def run_window(self, buffer: list, n_carry: int) -> tuple[list, int]:
        """Submit the next window of ``buffer`` and process the window submitted before it meanwhile.

        The previous window's prediction is awaited first: when it failed, nothing
        is submitted and the serial path handles it (see the module docstring).

        Returns the buffer and carry count the serial loop would have after the
        submitted window (the carry of its last ``overlap`` frames plus the rest).
        """
        prev = self.pending
        if prev is not None:
            self._wait(prev)
            if prev.future.exception() is not None:  # rejected, out of memory or broken: the serial path decides
                self.pending = None
                _, buf, nc = self._finish(prev, buffer, n_carry, None)
                return buf, nc
        window = self._scheduler.cut(buffer, n_carry)
        job = self._submit(window, n_carry)
        self.pending = job
        if prev is not None:
            ok, buf, nc = self._finish(prev, buffer, n_carry, job)
            if not ok:
                return buf, nc
        return self._scheduler.after(window, buffer)

    def finish(self, buffer: list, n_carry: int) -> tuple[list, int]:
        """Process the window still in flight (before a scene cut, at the end of the stream)."""
        prev, self.pending = self.pending, None
        if prev is None:
            return buffer, n_carry
        _, buf, nc = self._finish(prev, buffer, n_carry, None)
        return buf, nc

    def close(self) -> None:
        """Drop a window still in flight (waiting for its prediction) and stop the worker."""
        job, self.pending = self.pending, None
        self._drop(job)
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ internals
    def _submit(self, window: list, n_carry: int) -> _Job:
        rows = self._log.swap([])
        self.n_submitted += 1
        return _Job(window, n_carry, rows, self._pool.submit(self._predict, window))

    def _wait(self, job: _Job) -> None:
        """Block until ``job``'s prediction has ended (the wait is timed as ``predict_wait``)."""
        if not job.future.done():
            t0 = time.perf_counter()
            cf.wait([job.future])
            self._timer_add("predict_wait", time.perf_counter() - t0)

    def _result(self, job: _Job):
        self._wait(job)
        return job.future.result()

    def _finish(self, prev: _Job, buffer: list, n_carry: int, job: Optional[_Job]):
        """Process ``prev`` through the serial path; ``(speculation_ok, buffer, n_carry)`` after it.

        ``buffer`` / ``n_carry`` are what the serial loop holds after ``prev``
        succeeds: ``prev``'s carry, then every frame read after ``prev``'s window.
        """
        later = self._log.swap(prev.source_rows)  # rows read after the last submission
        prev_buffer = prev.window + buffer[n_carry:]
        try:
            buf, nc = self._serial(prev_buffer, prev.n_carry, lambda: self._result(prev))
        except BaseException:
            if job is not None:
                self.pending = None
                self._drop(job)
            raise
        leftover = self._log.swap([])  # rows of a rejected window, committed with the next one
        ok = nc == n_carry and len(buf) == len(buffer) and all(a is b for a, b in zip(buf, buffer))
        if job is None:
            self._log.swap(leftover + later)
        elif ok:
            job.source_rows = leftover + job.source_rows
            self._log.swap(later)
        else:
            log.info("window of frames %s-%s was retried smaller; dropping the prediction made ahead",
                     _first_index(prev.window), _last_index(prev.window))
            self.pending = None
            self._drop(job)
            self.n_dropped += 1
            self._log.swap(leftover + job.source_rows + later)
        return ok, buf, nc

    def _drop(self, job: Optional[_Job]) -> None:
        """Wait for ``job`` to end and ignore its outcome (its prediction and any error it raised).

        Never cancelled, even when it has not started: whether a queued job had
        started would be a race, and the predictor must see the same sequence of
        calls in every run (a retry also needs the device memory the job holds).
        """
        if job is None:
            return
        self._wait(job)
        if job.future.exception() is not None:
            log.debug("dropped ahead prediction failed: %s", job.future.exception())


def _first_index(frames: list) -> Any:
    return getattr(frames[0], "index", "?") if frames else "?"


def _last_index(frames: list) -> Any:
    return getattr(frames[-1], "index", "?") if frames else "?"
