"""Predictor stage: one window's frames -> a checked :class:`~da3stream.core.types.Prediction`.

The stage builds the :class:`~da3stream.core.types.FrameBatch`, conditions it
on known cameras when a pose prior is given, checks the output against the
Prediction contract, rejects a window whose output is unusable as a whole
(:class:`~da3stream.errors.RejectedWindow`: non-finite cameras, no finite
depth), fits poses to the ray map (:mod:`.cameras`), puts a known
calibration in place of the predicted intrinsics and masks scattered
non-finite depth. It runs in the predict-ahead worker thread when
``predict_ahead`` is on, so it touches nothing of the run state.

Out of memory: the window scheduler retries the whole window smaller
(:meth:`~da3stream.streaming.windows.WindowScheduler.shrink_after_oom`),
since the retried window holds other frames; :func:`free_accelerator_memory`
runs between the tries.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from da3stream.core.types import FrameBatch, Prediction, Predictor
from da3stream.errors import PredictionError, RejectedWindow
from da3stream.streaming.stages.cameras import poses_from_rays, use_known_intrinsics

log = logging.getLogger(__name__)

__all__ = ["KnownCameras", "PredictStage", "accepts_kwarg", "check_finite_cameras", "free_accelerator_memory"]


@dataclass(frozen=True)
class KnownCameras:
    """Known cameras a window's prediction is conditioned on (``source.poses``, source calibration)."""

    prior: Any
    """:class:`~da3stream.io.sources.priors.PosePrior` of the known poses."""
    intrinsics: Optional[np.ndarray]
    """(3, 3) calibration of the source at the original resolution, or None."""
    max_diff: float
    """``source.pose_max_diff``: largest frame-to-pose time difference, seconds."""
    time_offset: float = 0.0
    """Seconds added to frame times to look up the prior."""


class PredictStage:
    """``stage(frames) -> Prediction`` (see the module docstring).

    Args:
        predictor: the network (or any object with ``predict(batch)``).
        pose_source: ``align.pose_source`` (``"head"`` keeps the camera head's poses).
        timer_add: ``(name, value)`` callback for timings and counters (thread-safe).
    """

    def __init__(self, predictor: Predictor, *, pose_source: str, timer_add: Callable[[str, float], None]) -> None:
        self.predictor = predictor
        self.pose_source = pose_source
        self.known: Optional[KnownCameras] = None
        """Set once the source is open, when the run is conditioned on known cameras."""
        self.known_intrinsics: Optional[np.ndarray] = None
        """(3, 3) calibration of the frames as delivered (``FrameSource.intrinsics``), set once the source is open.

        It replaces the predicted intrinsics of every window (:func:`~.cameras.use_known_intrinsics`). The
        predictor is conditioned on it only together with known poses: DA3's camera encoder encodes the
        whole camera of every view (translation, rotation, field of view), and the official network
        builds the camera token only when extrinsics are given (intrinsics alone are ignored), so ours
        refuses intrinsics without poses rather than invent them."""
        self._timer_add = timer_add
        self.poses_from_rays = False
        """True once a window's poses were fitted to its ray map (they stay ray-fitted after a known
        calibration drops the rays); the alignment then takes its rotation from the cameras."""

    def __call__(self, frames: list) -> Prediction:
        batch = FrameBatch(
            images=np.stack([f.image for f in frames]),
            indices=np.array([f.index for f in frames], np.int64),
            timestamps=np.array([f.timestamp for f in frames], np.float64),
        )
        kw = {}
        if self.known is not None:
            from da3stream.io.sources.priors import conditioning_kwargs

            k = self.known
            kw = conditioning_kwargs(k.prior, batch.timestamps, k.intrinsics, max_diff=k.max_diff,
                                     time_offset=k.time_offset)
            self._timer_add("conditioned_windows", float(bool(kw)))
        t0 = time.perf_counter()
        pred = self.predictor.predict(batch, **kw)
        self._timer_add("predict", time.perf_counter() - t0)
        self._timer_add("predicted_frames", len(frames))
        if not isinstance(pred, Prediction):
            raise PredictionError(f"predictor returned {type(pred).__name__}, expected Prediction")
        check_finite_cameras(pred, frames)
        pred.validate(len(frames))
        finite = np.isfinite(pred.depth)
        finite &= np.isfinite(pred.conf)
        if not finite.any():
            raise RejectedWindow(f"window of frames {frames[0].index}-{frames[-1].index}: no finite depth")
        bad = None if finite.all() else ~finite
        if poses_from_rays(pred, frames, self.pose_source):
            self.poses_from_rays = True
        if self.known_intrinsics is not None:
            use_known_intrinsics(pred, self.known_intrinsics, frames[0].image.shape[:2], self.predictor)
        if bad is not None:
            n_bad = int(bad.sum())
            self._timer_add("nonfinite_depth_values", n_bad)
            log.warning("window of frames %d-%d: %d non-finite depth/conf values masked", frames[0].index,
                        frames[-1].index, n_bad)
            pred.depth = np.where(bad, 0.0, pred.depth).astype(np.float32)
            pred.conf = np.where(bad, 0.0, pred.conf).astype(np.float32)
        return pred


def check_finite_cameras(pred: Prediction, frames: list) -> None:
    """Raise :class:`RejectedWindow` when camera poses or intrinsics hold NaN/inf (after the shape checks pass)."""
    arrays = {name: getattr(pred, name) for name in ("world_from_cam", "intrinsics")}
    if all(isinstance(a, np.ndarray) and a.dtype.kind == "f" and np.all(np.isfinite(a)) for a in arrays.values()):
        return
    placeholders = {k: (np.zeros_like(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a)
                    for k, a in arrays.items()}
    dataclasses.replace(pred, **placeholders).validate(len(frames))  # a shape or dtype violation still raises
    names = ", ".join(k for k, a in arrays.items() if not np.all(np.isfinite(a)))
    raise RejectedWindow(f"window of frames {frames[0].index}-{frames[-1].index}: predicted {names} contain NaN or inf")


def accepts_kwarg(fn: Callable, name: str) -> bool:
    """True when ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def free_accelerator_memory() -> None:
    """Return cached GPU memory to the driver (between out-of-memory retries)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
