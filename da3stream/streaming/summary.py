"""What a run did: the :class:`RunSummary` :func:`~da3stream.streaming.pipeline.reconstruct` returns, and its timer."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

__all__ = ["RunSummary", "Timer", "model_info"]


@dataclass
class RunSummary:
    """What a run did; returned by :func:`reconstruct`."""

    store: str
    status: str = "running"
    n_read: int = 0
    n_keyframes: int = 0
    n_frames: int = 0
    n_chunks: int = 0
    n_gated: int = 0
    n_segments: int = 1
    n_loops: int = 0
    n_loop_candidates: int = 0
    n_points: int = 0
    n_skipped: int = 0
    chunk_size: int = 0
    overlap: int = 0
    resumed: bool = False
    model: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def new_frame_fraction(self) -> float:
        """Fraction of predicted frames that were new (not overlap re-predictions)."""
        predicted = self.timings.get("predicted_frames", 0)
        return float(self.n_frames) / predicted if predicted else 0.0


class Timer:
    """Seconds (and counters) per stage, added from the main thread and the predict-ahead worker."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()  # the predict-ahead worker adds too

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + dt

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - t0)


def model_info(predictor: Any) -> dict:
    """Model identity for the store: id, weight hash, whether the weights are random."""
    return {
        "id": str(getattr(predictor, "model_id", type(predictor).__name__)),
        "weights_sha256": getattr(predictor, "weights_sha256", None),
        "weights_random": bool(getattr(predictor, "weights_random", False)),
        "simulated": bool(getattr(predictor, "simulated", False)),
        "class": f"{type(predictor).__module__}.{type(predictor).__qualname__}",
    }
