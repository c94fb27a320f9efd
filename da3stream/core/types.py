"""The predictor interface: :class:`FrameBatch` in, :class:`Prediction` out.

This is the seam other tools plug into (see docs/CONVENTIONS.md). The engine
needs only the four required :class:`Prediction` fields; every optional field
is ``None`` when a predictor does not produce it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from da3stream.errors import PredictionError, ShapeError, check_shape


@dataclass
class FrameBatch:
    """N frames of one window, in time order, at the source's original resolution."""

    images: np.ndarray
    """(N, H, W, 3) uint8 RGB."""
    indices: np.ndarray
    """(N,) int64 frame index in the source."""
    timestamps: np.ndarray
    """(N,) float64 seconds."""

    def __post_init__(self) -> None:
        check_shape("FrameBatch.images", self.images, ("N", None, None, 3), "u")
        n = self.images.shape[0]
        check_shape("FrameBatch.indices", self.indices, (n,), "iu")
        check_shape("FrameBatch.timestamps", self.timestamps, (n,), "fiu")
        if self.images.dtype != np.uint8:
            raise ShapeError(f"FrameBatch.images: expected dtype uint8, got {self.images.dtype}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Prediction:
    """Per-window output, all in one chunk-local world frame (any gauge and scale)."""

    depth: np.ndarray
    """(N, h, w) float32 z-depth along the camera +z axis."""
    conf: np.ndarray
    """(N, h, w) float32 confidence, higher is more reliable."""
    world_from_cam: np.ndarray
    """(N, 4, 4) float64 camera-to-chunk-frame rigid transforms (OpenCV axes)."""
    intrinsics: np.ndarray
    """(N, 3, 3) float64 pinhole intrinsics for the (h, w) depth grid."""
    rays: Optional[np.ndarray] = None
    """(N, h', w', 6) ray origin (3) and direction (3) in the chunk frame, or None."""
    ray_conf: Optional[np.ndarray] = None
    """(N, h', w') confidence of ``rays``, or None."""
    descriptors: Optional[np.ndarray] = None
    """(N, D) float32 L2-normalised global descriptors for place recognition, or None."""
    metric_depth: Optional[np.ndarray] = None
    """(N, h, w) float32 metric depth in metres, or None."""
    sky: Optional[np.ndarray] = None
    """(N, h, w) bool sky mask, or None."""

    def __len__(self) -> int:
        return int(self.depth.shape[0])

    def validate(self, n_frames: int | None = None) -> "Prediction":
        """Check shapes, dtypes and finiteness; raise :class:`PredictionError` on violation.

        Returns ``self`` with required arrays cast to their contract dtypes.
        """
        try:
            check_shape("Prediction.depth", self.depth, ("N", "h", "w"), "f")
            n, h, w = self.depth.shape
            if n_frames is not None and n != n_frames:
                raise ShapeError(f"Prediction.depth: expected {n_frames} frames, got {n}")
            check_shape("Prediction.conf", self.conf, (n, h, w), "f")
            check_shape("Prediction.world_from_cam", self.world_from_cam, (n, 4, 4), "f")
            check_shape("Prediction.intrinsics", self.intrinsics, (n, 3, 3), "f")
            if self.rays is not None:
                check_shape("Prediction.rays", self.rays, (n, None, None, 6), "f")
                if self.ray_conf is not None:
                    check_shape("Prediction.ray_conf", self.ray_conf, (n,) + self.rays.shape[1:3], "f")
            if self.descriptors is not None:
                check_shape("Prediction.descriptors", self.descriptors, (n, None), "f")
            if self.metric_depth is not None:
                check_shape("Prediction.metric_depth", self.metric_depth, (n, h, w), "f")
            if self.sky is not None:
                check_shape("Prediction.sky", self.sky, (n, h, w), "b")
        except ShapeError as exc:
            raise PredictionError(str(exc)) from None
        for name in ("world_from_cam", "intrinsics"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise PredictionError(f"Prediction.{name}: contains NaN or inf")
        self.depth = np.asarray(self.depth, dtype=np.float32)
        self.conf = np.asarray(self.conf, dtype=np.float32)
        self.world_from_cam = np.asarray(self.world_from_cam, dtype=np.float64)
        self.intrinsics = np.asarray(self.intrinsics, dtype=np.float64)
        return self

    def subset(self, idx) -> "Prediction":
        """A new Prediction holding only the frames selected by ``idx`` (index array or slice)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = None if v is None else v[idx]
        return Prediction(**kw)


@runtime_checkable
class Predictor(Protocol):
    """Anything that turns a :class:`FrameBatch` into a :class:`Prediction`."""

    def predict(self, batch: FrameBatch) -> Prediction:  # pragma: no cover - protocol
        ...
