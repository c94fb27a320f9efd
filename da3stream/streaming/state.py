"""The run state: what every committed window leaves behind, and what a resume rebuilds.

:class:`RunState` holds the chunk table (``world_from_chunk``), the per-frame
chunk poses the trajectory is derived from, the carry the next window aligns
against and the trajectory segment. :class:`SourceLog` holds the source-log
rows read since the last commit. Both change only when a window is committed
(:meth:`RunState.commit`) or rejected, and :mod:`da3stream.streaming.resume`
rebuilds both from the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from da3stream.alignment.smoothing import blend_frame_poses
from da3stream.io.store.records import SkipReason
from da3stream.streaming.window import Carry, Window

log = logging.getLogger(__name__)

__all__ = ["RunState", "SourceLog", "skip_code"]


@dataclass
class RunState:
    """Everything the next window depends on (see the module docstring)."""

    world_from_chunk: list = field(default_factory=list)
    """list[Sim3]: every committed window's chunk frame in the world."""
    segment: int = 0
    """Trajectory segment of the last committed window."""
    carry: Optional[Carry] = None
    """The last window's overlap frames, or None (the next window starts a new segment)."""
    n_frames: int = 0
    """Committed ``frames/`` rows."""
    n_points: int = 0
    """Committed map points."""
    frame_chunk_ids: list = field(default_factory=list)
    """Per window: (n_new,) int32 chunk id of its rows."""
    frame_chunk_from_cam: list = field(default_factory=list)
    """Per window: (n_new, 4, 4) chunk-frame poses of its rows."""
    carry_poses: dict = field(default_factory=dict)
    """chunk id -> (rows, chunk_from_cam) of the frames it re-predicted from the previous window."""
    segment_reason: str = ""
    """Why the next window starts a new segment (set when a window is rejected or at a scene cut)."""
    n_rejected_windows: int = 0
    """Windows dropped because their prediction was unusable."""

    @property
    def next_chunk_id(self) -> int:
        return len(self.world_from_chunk)

    def last_chunk_from_cam(self) -> np.ndarray:
        """(4, 4) chunk-frame pose of the last committed frame (identity when there is none)."""
        if self.frame_chunk_from_cam and len(self.frame_chunk_from_cam[-1]):
            return self.frame_chunk_from_cam[-1][-1]
        return np.eye(4)

    def new_rows(self, n_new: int) -> np.ndarray:
        """(n_new,) int64 ``frames/`` rows the next window's new frames get."""
        return np.arange(self.n_frames, self.n_frames + n_new, dtype=np.int64)

    def carried_rows(self, window: Window) -> np.ndarray:
        """(n_carry,) int64 rows of the frames ``window`` shares with the previous window."""
        return np.asarray(self.carry.rows if (self.carry is not None and window.n_carry) else np.zeros(0), np.int64)

    def carry_chunk_from_cam(self, window: Window) -> Optional[np.ndarray]:
        """(n_carry, 4, 4) poses of the shared frames in ``window``'s chunk frame, when it was aligned."""
        if window.n_carry and window.prev_from_cur is not None:
            return window.prediction.world_from_cam[: window.n_carry].copy()
        return None

    def next_carry(self, window: Window, overlap: int) -> Carry:
        """The last ``overlap`` frames of ``window`` with their prediction and rows: what the next window aligns to."""
        frames = window.frames
        k = min(overlap, len(frames))
        rows = self.new_rows(window.n_new)
        all_rows = np.concatenate([self.carry.rows, rows]) if (self.carry is not None and window.n_carry) else rows
        return Carry(
            frames=frames[len(frames) - k:] if k else [],
            prediction=window.prediction.subset(slice(len(frames) - k, len(frames))) if k else None,
            chunk_id=window.chunk_id,
            rows=all_rows[len(all_rows) - k:] if k else np.zeros(0, np.int64),
        )

    def commit(self, window: Window, carry: Carry) -> None:
        """Take in a committed window (before any loop-closure rewrite of the chunk table)."""
        carried = self.carry_chunk_from_cam(window)
        self.world_from_chunk.append(window.world_from_chunk)
        if carried is not None:
            self.carry_poses[window.chunk_id] = (self.carry.rows.copy(), carried)
        self.frame_chunk_ids.append(np.full(window.n_new, window.chunk_id, np.int32))
        self.frame_chunk_from_cam.append(window.chunk_from_cam_new.copy())
        self.n_frames += window.n_new
        self.n_points += len(window.points)
        self.segment = window.segment
        self.segment_reason = ""
        if window.loop_world_from_chunk is not None:
            self.world_from_chunk = list(window.loop_world_from_chunk)
        self.carry = carry

    def start_segment(self, reason: str) -> None:
        """The next window aligns to nothing (a scene cut, or its predecessor was rejected)."""
        self.carry = None
        self.segment_reason = reason

    def world_poses(self) -> np.ndarray:
        """(F, 4, 4) world_from_cam of every committed frame from the chunk table.

        Frames shared by two windows are cross-faded between the two windows'
        estimates so the trajectory does not jump where windows meet.
        """
        if not self.frame_chunk_from_cam:
            return np.zeros((0, 4, 4))
        chunk_ids = np.concatenate(self.frame_chunk_ids)
        chunk_from_cam = np.concatenate(self.frame_chunk_from_cam)
        out = np.empty_like(chunk_from_cam)
        for c, W in enumerate(self.world_from_chunk):
            sel = chunk_ids == c
            if sel.any():
                out[sel] = W.apply_pose(chunk_from_cam[sel])
        for c, (rows, carry_from_cam) in self.carry_poses.items():
            k = len(rows)
            if k == 0 or c >= len(self.world_from_chunk):
                continue
            pose_next = self.world_from_chunk[c].apply_pose(carry_from_cam)
            weights = (np.arange(k) + 1.0) / (k + 1.0)
            out[rows] = blend_frame_poses(out[rows], pose_next, weights)
        return out

    def chunk_table(self) -> np.ndarray:
        """(C, 8) stored ``world_from_chunk`` of every window."""
        return np.stack([W.to_array() for W in self.world_from_chunk])


class SourceLog:
    """Source-log rows ``(index, timestamp, kept, skip code)`` read since the last commit.

    Each commit takes the rows up to its last frame: frames read beyond it (left
    in the buffer by an out-of-memory retry, or read while the window was
    predicted ahead) are logged with the window that commits them, else a
    resume after this commit would take them for already processed and skip them.
    """

    def __init__(self, last_read: int = -1) -> None:
        self.pending: list[tuple[int, float, bool, int]] = []
        self.last_read = int(last_read)
        """Highest source index logged before a resume (-1 for a new run)."""
        self._skip_cursor = 0  # entries of the source's ``skipped`` list already logged
        self.n_skipped = 0
        """Frames logged as skipped by this run (source skips and rejected windows)."""

    def read(self, index: int, timestamp: float, kept: bool) -> None:
        self.pending.append((int(index), float(timestamp), bool(kept), 0))

    def take_through(self, last_index: int) -> list:
        """Remove and return the rows with index <= ``last_index`` (what a commit of that frame logs)."""
        rows = [r for r in self.pending if r[0] <= last_index]
        self.pending = [r for r in self.pending if r[0] > last_index]
        return rows

    def swap(self, rows: list) -> list:
        """Replace the pending rows by ``rows``; return the old ones (the predict-ahead thread's bookkeeping)."""
        old, self.pending = self.pending, list(rows)
        return old

    def record_skipped(self, src, before: Optional[int]) -> None:
        """Log the source's skipped frames with index < ``before`` (all for None) not logged before a resume."""
        skipped = getattr(src, "skipped", [])
        while self._skip_cursor < len(skipped) and (before is None or skipped[self._skip_cursor][0] < before):
            index, reason = skipped[self._skip_cursor]
            self._skip_cursor += 1
            if index > self.last_read:
                self.pending.append((int(index), float("nan"), False, skip_code(reason)))
                self.n_skipped += 1

    def reject(self, indices: set) -> None:
        """Log the frames of a rejected window as skipped (their prediction was unusable)."""
        code = int(SkipReason.PREDICTION_REJECTED)
        self.pending = [(i, t, False, code) if i in indices else (i, t, k, r) for i, t, k, r in self.pending]
        self.n_skipped += len(indices)


def skip_code(reason: str) -> int:
    """``source/skipped_reason`` code of a source's skip message (wrong-size frames are invalid, the rest undecodable)."""
    return int(SkipReason.INVALID if "aspect ratio" in reason else SkipReason.DECODE_ERROR)
