"""Candidate selection of the place index: exclusion of recent entries, best-k with deterministic ties, NMS.

Pure numpy functions; :class:`da3stream.streaming.loops.index.DescriptorIndex` runs them on
its scores, and the loop closer runs :func:`suppress_pairs` on the merged hits of a window.
"""

from __future__ import annotations

import numpy as np

from da3stream.errors import check_shape

__all__ = ["best_k", "exclusion_mask", "greedy_nms_1d", "suppress_pairs"]


def exclusion_mask(
    query_times: np.ndarray,
    query_distances: np.ndarray,
    entry_times: np.ndarray,
    entry_distances: np.ndarray,
    *,
    exclude_seconds: float,
    exclude_distance: float,
) -> np.ndarray:
    """(Q, N) bool, True where an entry is too recent to be a loop candidate for a query.

    An entry is excluded when it is within ``exclude_seconds`` in time, or, when
    ``exclude_distance > 0``, within ``exclude_distance`` in travelled distance.
    """
    qt = np.asarray(query_times, dtype=np.float64)[:, None]
    et = np.asarray(entry_times, dtype=np.float64)[None, :]
    mask = np.abs(qt - et) < exclude_seconds
    if exclude_distance > 0:
        qd = np.asarray(query_distances, dtype=np.float64)[:, None]
        ed = np.asarray(entry_distances, dtype=np.float64)[None, :]
        mask |= np.abs(qd - ed) < exclude_distance
    return mask


def greedy_nms_1d(keys: np.ndarray, order: np.ndarray, radius: int, limit: int) -> np.ndarray:
    """Greedy 1-D non-maximum suppression.

    Args:
        keys: (M,) int64 positions (e.g. source frame indices) of the items.
        order: (M,) item indices sorted best first.
        radius: an item is dropped when a kept item lies within ``radius`` of it.
        limit: stop after this many survivors.

    Returns:
        (K,) int64 surviving item indices, best first.
    """
    kept: list[int] = []
    kept_keys: list[int] = []
    for idx in order:
        k = int(keys[idx])
        if radius > 0 and any(abs(k - kk) <= radius for kk in kept_keys):
            continue
        kept.append(int(idx))
        kept_keys.append(k)
        if len(kept) >= limit:
            break
    return np.asarray(kept, dtype=np.int64)


def suppress_pairs(
    query_frames: np.ndarray, match_frames: np.ndarray, scores: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression of (query frame, match frame) pairs.

    A pair is suppressed by a better-scoring kept pair whose query frame and
    match frame both lie within ``radius`` source frames. Ties are broken by
    query frame then match frame, so the result is deterministic.

    Args:
        query_frames: (K,) int64 source index of each pair's query frame.
        match_frames: (K,) int64 source index of each pair's matched frame.
        scores: (K,) similarity, higher is better.
        radius: suppression radius in source frames.

    Returns:
        ``(keep (J,) int64 indices of surviving pairs best first,
        support (J,) int64 number of pairs each survivor absorbed, itself included)``.
    """
    q = np.asarray(query_frames, dtype=np.int64)
    m = np.asarray(match_frames, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    check_shape("suppress_pairs(query_frames)", q, ("K",))
    check_shape("suppress_pairs(match_frames)", m, q.shape)
    check_shape("suppress_pairs(scores)", sc, q.shape)
    order = np.lexsort((m, q, -sc))
    keep: list[int] = []
    support: list[int] = []
    for idx in order:
        hit = -1
        for slot, kidx in enumerate(keep):
            if abs(q[idx] - q[kidx]) <= radius and abs(m[idx] - m[kidx]) <= radius:
                hit = slot
                break
        if hit >= 0:
            support[hit] += 1
        else:
            keep.append(int(idx))
            support.append(1)
    return np.asarray(keep, dtype=np.int64), np.asarray(support, dtype=np.int64)


def best_k(entries: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (entry, score) pairs, by descending score then ascending entry (ties are deterministic)."""
    if entries.size <= k:
        return entries, scores
    order = np.lexsort((entries, -scores))[:k]
    return entries[order], scores[order]
