"""What the pipeline and the loop closer exchange, and the loop closer's own records.

:class:`WindowContext` (one window, handed in), :class:`FrameData` (stored frames, fetched back),
:class:`LoopUpdate` (handed out). Loop candidates are the store's
:class:`~da3stream.io.store.run_store.LoopEdge`, the single definition of a loop record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import Prediction
from da3stream.errors import ShapeError
from da3stream.io.store.records import LoopEdge

__all__ = ["FrameData", "LoopEdge", "LoopUpdate", "SeqEdge", "WindowContext", "canonical_sim3", "loop_from_record",
           "unverified"]


def canonical_sim3(T: Sim3) -> Sim3:
    """``T`` as it reads back from storage (``Sim3.from_array(T.to_array())``).

    Values the loop closer keeps go through this round trip first, so a run
    restored from the store holds bit-identical values.
    """
    return Sim3.from_array(T.to_array())


@dataclass
class FrameData:
    """Stored data of committed frames (what ``WindowContext.fetch`` returns)."""

    images: Optional[np.ndarray]
    """(k, h, w, 3) uint8 RGB at the depth grid, or None when the store keeps no RGB."""
    depth: np.ndarray
    """(k, h, w) float32 z-depth in chunk units."""
    conf: np.ndarray
    """(k, h, w) float32 confidence."""
    chunk_from_cam: np.ndarray
    """(k, 4, 4) float64 camera-to-chunk rigid poses."""
    intrinsics: np.ndarray
    """(k, 3, 3) float64 intrinsics for the depth grid."""
    chunk_id: np.ndarray
    """(k,) int window that produced each frame."""
    indices: np.ndarray
    """(k,) int64 source frame index."""
    timestamps: np.ndarray
    """(k,) float64 seconds."""


@dataclass
class WindowContext:
    """What the pipeline hands the loop closer for one window."""

    chunk_id: int
    """This window's id."""
    rows: np.ndarray
    """(n,) int64 store rows of the window's new frames."""
    indices: np.ndarray
    """(n,) int64 source index of the new frames."""
    timestamps: np.ndarray
    """(n,) float64 seconds of the new frames."""
    descriptors: Optional[np.ndarray]
    """(n, D) float32 descriptors of the new frames, or None."""
    world_from_cam: np.ndarray
    """(n, 4, 4) float64 current world poses of the new frames."""
    images: np.ndarray
    """(n, h, w, 3) uint8 new frames resized to the depth grid."""
    prediction: Prediction
    """The window's prediction restricted to the new frames (chunk frame = ``chunk_id``)."""
    fetch: Callable[[np.ndarray], FrameData]
    """rows -> stored data of committed older frames."""
    world_from_chunk: list
    """Current ``world_from_chunk`` (Sim3) of windows ``0..chunk_id``."""


@dataclass
class LoopUpdate:
    """Result of :meth:`~da3stream.streaming.loops.closer.LoopCloser.on_window`."""

    edges: list = field(default_factory=list)
    """Every candidate considered, accepted and rejected, in evaluation order (list of :class:`LoopEdge`)."""
    world_from_chunk: Optional[list] = None
    """New ``world_from_chunk`` of windows ``0..chunk_id`` when an optimisation ran, else None."""
    graph_report: Optional[dict] = None
    """Optimisation summary (nodes, edges, loops, costs, iterations, removed outliers), or None."""


@dataclass(frozen=True)
class SeqEdge:
    """The sequential alignment ``(j - 1, j)`` as the loop closer keeps it (what the store reads back)."""

    i_from_j: Sim3
    """Window ``j``'s frame to window ``j - 1``'s."""
    inlier_ratio: float
    """Inlier ratio of the alignment."""
    residual: float
    """Median depth-relative residual of the alignment."""
    gated: bool
    """True when the alignment failed a gate or fell back (it weighs ``loop.gated_weight`` as much)."""


def unverified(base: dict, reason: str) -> LoopEdge:
    """A rejected candidate without a transform estimate (``base``: chunk_i, chunk_j, frame_i, frame_j, similarity)."""
    nan = float("nan")
    return LoopEdge(i_from_j=None, inlier_ratio=nan, residual=nan, scale=nan, accepted=False,
                    reason=reason, **base)


def loop_from_record(rec: Any) -> LoopEdge:
    """A :class:`LoopEdge` from a stored loop (any object with the same attributes, or a mapping)."""
    if isinstance(rec, dict):
        d = dict(rec)
    else:
        keys = ("chunk_i", "chunk_j", "frame_i", "frame_j", "i_from_j", "inlier_ratio", "residual", "scale",
                "accepted", "reason", "similarity")
        d = {k: getattr(rec, k) for k in keys if hasattr(rec, k)}
    T = d.get("i_from_j")
    if T is None:
        raise ShapeError(f"LoopCloser.restore: loop {d.get('chunk_i')}-{d.get('chunk_j')} has no i_from_j transform")
    T = T if isinstance(T, Sim3) else Sim3.from_array(np.asarray(T, np.float64))
    return LoopEdge(
        chunk_i=int(d["chunk_i"]), chunk_j=int(d["chunk_j"]), frame_i=int(d["frame_i"]), frame_j=int(d["frame_j"]),
        i_from_j=T, inlier_ratio=float(d.get("inlier_ratio", np.nan)), residual=float(d.get("residual", np.nan)),
        scale=float(d.get("scale", T.s)), accepted=bool(d.get("accepted", True)), reason=str(d.get("reason", "")),
        similarity=float(d.get("similarity", np.nan)),
    )
