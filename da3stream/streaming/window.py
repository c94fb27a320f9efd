"""The values that move through the stages: a :class:`Window` and its :class:`AlignmentQuality`.

A window is formed from the keyframe buffer (carry frames first), then each
stage returns a new :class:`Window` with its part filled in::

    Window(frames, n_carry)          windows   (streaming/windows.py)
      .prediction                    predictor (stages/predict.py, stages/cameras.py)
      .prev_from_cur, .world_from_chunk, .quality, .segment
                                     alignment (stages/align.py)
      .points                        map       (stages/fuse.py)
      .loop_edges, .loop_world_from_chunk
                                     loops     (stages/loops.py)
    -> ChunkRecord                   store     (stages/commit.py)

:class:`Carry` is what one window leaves for the next: its overlap frames and
their prediction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import Prediction
from da3stream.io.store.records import ChunkStatus
from da3stream.streaming.fusion import FusedPoints

__all__ = ["AlignmentQuality", "Carry", "Window", "is_fallback"]


def is_fallback(status: int, reason: str) -> bool:
    """True when a window's sequential estimate came from the camera poses (a gated fallback), not the points."""
    return int(status) != ChunkStatus.OK and not (str(reason).endswith("_kept") or reason == "pose_disagreement")



@dataclass(frozen=True)
class AlignmentQuality:
    """How well a window was aligned to the previous one (``chunks/`` quality columns)."""

    inlier_ratio: float = 0.0
    """Fraction of correspondences within the inlier threshold."""
    residual: float = math.nan
    """Median depth-relative residual of the registration."""
    scale: float = math.nan
    """Scale of ``prev_from_cur``."""
    pose_disagreement: float = math.nan
    """Depth-relative disagreement of the registration with the camera-pose estimate."""
    status: ChunkStatus = ChunkStatus.OK
    """:class:`~da3stream.io.store.run_store.ChunkStatus` of the window."""
    reason: str = ""
    """Short reason when gated or a new segment ('' when fine); stored as ``flag_reason``."""
    n_points: int = 0
    """Correspondences the registration used (not stored)."""
    pose_reason: str = ""
    """Why the camera-pose estimate failed ('' when it did not; not stored)."""

    @classmethod
    def first(cls, status: ChunkStatus = ChunkStatus.FIRST) -> "AlignmentQuality":
        """The record of a window aligned to nothing (the first, or one without overlap)."""
        return cls(inlier_ratio=1.0, residual=0.0, scale=1.0, pose_disagreement=0.0, status=status)

    def replace(self, **changes: Any) -> "AlignmentQuality":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The stored columns, as :class:`~da3stream.io.store.run_store.ChunkRecord` fields."""
        return {"inlier_ratio": float(self.inlier_ratio), "residual": float(self.residual),
                "scale": float(self.scale), "pose_disagreement": float(self.pose_disagreement),
                "status": int(self.status), "flag_reason": str(self.reason)}

    @classmethod
    def from_dict(cls, row: dict) -> "AlignmentQuality":
        """Inverse of :meth:`to_dict` (one row of the chunk table)."""
        return cls(inlier_ratio=float(row["inlier_ratio"]), residual=float(row["residual"]),
                   scale=float(row["scale"]), pose_disagreement=float(row["pose_disagreement"]),
                   status=ChunkStatus(int(row["status"])), reason=str(row.get("flag_reason", "")))


@dataclass
class Carry:
    """The previous window's overlap frames: what the next window aligns against."""

    frames: list
    """list[Frame] of the overlap frames (empty after a resume until they are read again)."""
    prediction: Optional[Prediction]
    """Their prediction in the previous window's chunk frame (None without overlap)."""
    chunk_id: int
    """The window they came from."""
    rows: np.ndarray
    """(K,) int64 ``frames/`` rows of these frames."""


@dataclass(frozen=True)
class Window:
    """One window of frames and everything the stages found out about it."""

    chunk_id: int
    """Window number (= chunk id in the store)."""
    frames: list
    """list[Frame], carry frames first, in time order."""
    n_carry: int
    """Frames shared with the previous window."""
    prediction: Optional[Prediction] = None
    """The predictor's output for ``frames`` in this window's chunk frame."""
    prev_from_cur: Optional[Sim3] = None
    """Sequential alignment to the previous window; None when there is none (first window, new segment)."""
    world_from_chunk: Optional[Sim3] = None
    """This window's chunk frame in the world (before loop closure)."""
    quality: AlignmentQuality = field(default_factory=AlignmentQuality.first)
    """How the alignment went (status included)."""
    segment: int = 0
    """Trajectory segment of the window."""
    rgb_new: Optional[np.ndarray] = None
    """(n_new, h, w, 3) uint8 colours of the new frames on the depth grid."""
    points: Optional[FusedPoints] = None
    """Voxel-fused points of the new frames in the chunk frame."""
    loop_edges: tuple = ()
    """Loop candidates looked at for this window (accepted or not)."""
    loop_world_from_chunk: Optional[list] = None
    """New ``world_from_chunk`` of every window when a loop closure re-optimised the graph."""

    def replace(self, **changes: Any) -> "Window":
        return dataclasses.replace(self, **changes)

    @property
    def status(self) -> ChunkStatus:
        return self.quality.status

    @property
    def new(self) -> slice:
        """The new (not carried) frames' positions in the window."""
        return slice(self.n_carry, len(self.frames))

    @property
    def new_frames(self) -> list:
        return self.frames[self.n_carry:]

    @property
    def n_new(self) -> int:
        return len(self.frames) - self.n_carry

    @property
    def chunk_from_cam_new(self) -> np.ndarray:
        """(n_new, 4, 4) poses of the new frames in the chunk frame."""
        return self.prediction.world_from_cam[self.new]

    @property
    def world_from_cam_new(self) -> np.ndarray:
        """(n_new, 4, 4) poses of the new frames in the world (before loop closure)."""
        return self.world_from_chunk.apply_pose(self.chunk_from_cam_new)

    def new_indices(self) -> np.ndarray:
        return np.array([f.index for f in self.new_frames], np.int64)

    def new_timestamps(self) -> np.ndarray:
        return np.array([f.timestamp for f in self.new_frames], np.float64)
