"""Segment planning: one source's frame range cut into K overlapping segments.

Segment ``k`` owns source frames ``[own_start, own_stop)``; its worker reads
``[start, stop)``: it starts at ``own_start`` and reads on past its own range
by :func:`overlap_frames` source frames (at least one window and its carry),
so that consecutive segments share enough frames for the merge to align them
and to find the frame from which both keyframe filters agree
(:mod:`da3stream.scaleout.merge`). The last segment reads to the end of the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from da3stream.errors import ConfigError

__all__ = ["Segment", "overlap_frames", "plan_segments"]


@dataclass(frozen=True)
class Segment:
    """One segment of a split source (source frame indices)."""

    k: int
    """Position of the segment (0-based)."""
    start: int
    """First source index the worker reads."""
    stop: Optional[int]
    """Source index the worker stops before (None: the end of the source)."""
    own_start: int
    """First source index the segment owns (equal to ``start``)."""
    own_stop: Optional[int]
    """First source index of the next segment (None: the end of the source)."""


def overlap_frames(chunk_size: int, overlap: int, stride: int) -> int:
    """Source frames a segment reads past its own range: one window plus its carry, in source frames."""
    return (int(chunk_size) + int(overlap)) * max(1, int(stride))


def plan_segments(n_frames: int, workers: int, chunk_size: int, overlap: int, stride: int = 1) -> list[Segment]:
    """K segments of ``[0, n_frames)`` of near-equal size; fewer when the source is too short to split.

    Each segment owns at least two windows' worth of source frames, so that a
    segment's read-ahead never reaches beyond the next segment's own range.
    """
    if workers < 1:
        raise ConfigError(f"scaleout.workers must be >= 1, got {workers}")
    if n_frames < 1:
        raise ConfigError(f"cannot split a source of {n_frames} frames")
    extra = overlap_frames(chunk_size, overlap, stride)
    k_max = max(1, n_frames // (2 * extra))
    k = min(int(workers), k_max)
    bounds = [round(i * n_frames / k) for i in range(k + 1)]
    segs = []
    for i in range(k):
        last = i == k - 1
        segs.append(Segment(k=i, start=bounds[i], stop=None if last else bounds[i + 1] + extra,
                            own_start=bounds[i], own_stop=None if last else bounds[i + 1]))
    return segs
