"""Loop candidates of one window: query the place index with a few new frames, merge the hits.

The queries are ``loop.max_queries_per_chunk`` new frames spread evenly over the
window. Each gets its best distinct non-recent entries from
:meth:`~da3stream.streaming.loops.index.DescriptorIndex.search`; hits of
different query frames that describe the same revisit (query and match both
within ``loop.nms_frames`` source frames) are merged by
:func:`~da3stream.streaming.loops.index.selection.suppress_pairs`, best first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from da3stream.config import LoopConfig
from da3stream.streaming.loops.index import DescriptorIndex
from da3stream.streaming.loops.index.selection import suppress_pairs

__all__ = ["Candidate", "find_candidates", "query_positions"]


@dataclass(frozen=True)
class Candidate:
    """One (query frame, matched entry) pair of a window, after merging."""

    entry: int
    """Index entry of the matched older frame."""
    query: int
    """Position of the query frame among the window's new frames."""
    similarity: float
    """Descriptor cosine similarity."""


def query_positions(n: int, max_queries: int) -> np.ndarray:
    """(q,) int64 positions of the query frames among ``n`` new frames: evenly spread, first and last included."""
    n_q = max(1, min(max_queries, n))
    return np.unique(np.round(np.linspace(0, n - 1, n_q)).astype(np.int64))


def find_candidates(
    index: DescriptorIndex,
    descriptors: np.ndarray,
    timestamps: np.ndarray,
    distances: np.ndarray,
    indices: np.ndarray,
    cfg: LoopConfig,
) -> list[Candidate]:
    """The window's merged candidates, best first.

    Args:
        index: the place index (older frames).
        descriptors: (n, D) float32 descriptors of the window's new frames.
        timestamps: (n,) float64 seconds of the new frames.
        distances: (n,) float64 travelled distance at the new frames.
        indices: (n,) int64 source frame index of the new frames.
        cfg: the ``loop`` config (queries, top-k, similarity, exclusion, NMS radius).
    """
    q_pos = query_positions(descriptors.shape[0], cfg.max_queries_per_chunk)
    cand = index.search(
        descriptors[q_pos], np.asarray(timestamps)[q_pos], distances[q_pos], top_k=cfg.top_k,
        min_similarity=cfg.min_similarity, exclude_seconds=cfg.exclude_seconds,
        exclude_distance=cfg.exclude_distance, nms_radius=cfg.nms_frames,
    )
    if len(cand) == 0:
        return []
    q_local = q_pos[cand.query]
    q_frames = np.asarray(indices, dtype=np.int64)[q_local]
    m_frames = index.frames[cand.entry]
    keep, _support = suppress_pairs(q_frames, m_frames, cand.similarity, cfg.nms_frames)
    return [Candidate(int(cand.entry[k]), int(q_local[k]), float(cand.similarity[k])) for k in keep]
