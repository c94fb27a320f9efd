"""The values a run store takes and returns: status and skip codes, a window's record, loop edges, point blocks.

:class:`LoopEdge` is the one definition of a loop edge: the loop closer
(:mod:`da3stream.streaming.loops.closer`) builds them and the store writes and
reads them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["ChunkRecord", "ChunkStatus", "LoopEdge", "PointBlock", "SkipReason", "SourceRows"]


class ChunkStatus(IntEnum):
    """``chunks/status`` codes."""

    OK = 0
    GATED = 1  # alignment failed a quality gate; a fallback estimate was used
    FIRST = 2  # the run's first window
    NEW_SEGMENT = 3  # no usable alignment to the previous window: a new segment starts


class SkipReason(IntEnum):
    """``source/skipped_reason`` codes (``kept`` says whether the frame became a keyframe)."""

    NONE = 0  # read fine (kept, or dropped by the keyframe filter)
    DECODE_ERROR = 1
    INVALID = 2  # wrong size, empty or otherwise unusable image
    SUBSAMPLED = 3  # dropped by stride / fps subsampling
    PREDICTION_REJECTED = 4  # read fine, but its window's prediction was unusable (NaN/inf cameras) and dropped


@dataclass(frozen=True)
class SourceRows:
    """Frames read from the source since the last commit."""

    index: np.ndarray
    """(S,) int64 frame index in the source (decode order, before subsampling)."""
    timestamp: np.ndarray
    """(S,) float64 seconds."""
    kept: np.ndarray
    """(S,) bool: the frame became a keyframe."""
    skipped_reason: np.ndarray
    """(S,) int8 :class:`SkipReason` codes."""


@dataclass(frozen=True)
class LoopEdge:
    """A loop-closure candidate between an older window ``chunk_i`` and a newer window ``chunk_j``, verified or not.

    The loop closer makes one per candidate it considers; every edge becomes a
    ``loop_candidates/`` row, accepted edges also a ``loops/`` row (and a
    pose-graph edge). Any object with these attribute names is accepted in its place.
    """

    chunk_i: int
    """Older window (node) id: the chunk of the matched earlier frame."""
    chunk_j: int
    """Newer window (node) id: the chunk of the later (query) frame."""
    frame_i: int
    """``frames/`` row of the matched earlier frame."""
    frame_j: int
    """``frames/`` row of the query frame."""
    i_from_j: Optional[Any] = None
    """Sim3 (or (8,) [s, quat_xyzw, t]) mapping chunk-j frame points into the chunk-i frame; None when no estimate exists."""
    similarity: float = math.nan
    """Descriptor cosine similarity of the candidate pair."""
    inlier_ratio: float = math.nan
    """Smaller inlier ratio of the two verification halves (NaN when not verified)."""
    residual: float = math.nan
    """Larger median depth-relative residual of the two halves (NaN when not verified)."""
    scale: float = math.nan
    """Scale of ``i_from_j`` (NaN when not verified; not stored separately, filled on read)."""
    accepted: bool = True
    """Passed every check (becomes a pose-graph edge)."""
    reason: str = ""
    """Rejection reason token; ``""`` when accepted."""


@dataclass(frozen=True)
class ChunkRecord:
    """Everything one window commits. F new frames of depth grid (h, w), P map points.

    Fill it from plain numpy arrays; floats are converted to the stored dtypes
    (depth/conf to float16, clipped to +-65504). ``frame_stop`` and ``n_new``
    may be left None (derived); when given they are checked.
    """

    chunk_id: int
    """Window number; must equal the store's committed ``n_chunks``."""
    frame_start: int
    """First ``frames/`` row the window covers, overlap frames included."""
    frame_index: np.ndarray
    """(F,) int64 source index of each new frame."""
    frame_timestamp: np.ndarray
    """(F,) float64 seconds."""
    chunk_from_cam: np.ndarray
    """(F, 4, 4) float64 rigid camera poses in this window's chunk frame."""
    world_from_cam: np.ndarray
    """(F, 4, 4) float64 camera poses in the world frame (derived)."""
    intrinsics: np.ndarray
    """(F, 3, 3) float64 pinhole intrinsics at the ORIGINAL image resolution."""
    depth: np.ndarray
    """(F, h, w) float z-depth in chunk units, on the depth grid."""
    world_from_chunk: Any
    """Sim3 or (8,) [s, quat_xyzw, t]: this window's frame in the world (derived)."""
    conf: Optional[np.ndarray] = None
    """(F, h, w) float confidence (required when the store keeps conf)."""
    rgb: Optional[np.ndarray] = None
    """(F, h, w, 3) uint8 colour on the depth grid (required when the store keeps rgb)."""
    descriptors: Optional[np.ndarray] = None
    """(F, D) float32 global descriptors (required when the store was created with descriptor_dim)."""
    frame_stop: Optional[int] = None
    """One past the last ``frames/`` row (= committed n_frames + F)."""
    n_new: Optional[int] = None
    """F."""
    chunk_from_prev: Optional[Any] = None
    """Sim3 or (8,): the sequential alignment measurement; None/NaN when there is none."""
    carry_rows: Optional[np.ndarray] = None
    """(K,) int64 ``frames/`` rows of the overlap frames this window re-predicted."""
    carry_chunk_from_cam: Optional[np.ndarray] = None
    """(K, 4, 4) float64 poses of those overlap frames in THIS window's chunk frame."""
    inlier_ratio: float = math.nan
    residual: float = math.nan
    scale: float = math.nan
    pose_disagreement: float = math.nan
    status: int = ChunkStatus.OK
    """:class:`ChunkStatus` code."""
    flag_reason: str = ""
    """Short reason when gated / a new segment ('' when fine)."""
    segment: int = 0
    """Trajectory segment (increments after a window that could not be aligned)."""
    points_xyz: Optional[np.ndarray] = None
    """(P, 3) float32 fused points in this window's chunk frame."""
    points_rgb: Optional[np.ndarray] = None
    """(P, 3) uint8 colours (required with points_xyz)."""
    points_conf: Optional[np.ndarray] = None
    """(P,) float confidence (NaN when None)."""
    source_index: Optional[np.ndarray] = None
    """(S,) int64 source rows read since the last commit (see :class:`SourceRows`)."""
    source_timestamp: Optional[np.ndarray] = None
    """(S,) float64."""
    source_kept: Optional[np.ndarray] = None
    """(S,) bool."""
    source_skipped: Optional[np.ndarray] = None
    """(S,) int :class:`SkipReason` codes."""
    loop_edges: Sequence[Any] = ()
    """:class:`LoopEdge`-like objects considered while processing this window."""
    state: Optional[Mapping[str, np.ndarray]] = None
    """Resume state that lands with this commit (as :meth:`RunStore.write_state`)."""
    state_meta: Optional[Mapping[str, Any]] = None
    """JSON-able metadata of ``state``."""


class PointBlock(NamedTuple):
    """A block of fused map points (consecutive chunks)."""

    xyz: np.ndarray  # (P, 3) float32, world frame or chunk frame
    rgb: np.ndarray  # (P, 3) uint8
    conf: np.ndarray  # (P,) float16
    chunk_id: np.ndarray  # (P,) int32
