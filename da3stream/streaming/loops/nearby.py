"""Loop candidates from the estimated trajectory: frames near the query in position and viewing direction.

A place the camera comes back to is close to where the trajectory already
was, up to the drift accumulated on the way. For each query frame, an older
frame is a candidate when

- it is far in time and in travelled distance (``loop.exclude_seconds``,
  ``loop.exclude_distance``: the same exclusions as the place index);
- its viewing direction is within ``loop.trajectory_max_angle_deg``;
- its estimated camera centre lies within the drift the consistency gate
  allows, ``max_translation_abs x depth + max_translation_rel x travelled``
  (:mod:`~da3stream.streaming.loops.consistency`), where ``depth`` is the query
  frame's median depth in world units.

The nearest (relative to that bound) per query is kept and pairs describing
the same revisit are merged as for descriptor hits. Needs no descriptor: with
a predictor that gives only the four required fields this is the only source.
Every candidate is verified geometrically like any other.
"""

from __future__ import annotations

import numpy as np

from da3stream.config import LoopConfig
from da3stream.streaming.loops.candidates import Candidate
from da3stream.streaming.loops.index.selection import suppress_pairs

__all__ = ["TrajectoryQuery", "nearby_candidates"]


class TrajectoryQuery:
    """The query frames of one window: world centres (q, 3), unit viewing directions (q, 3), times, travelled
    distances, source frame indices, median depths in world units, and positions among the window's new frames."""

    def __init__(self, centres, dirs, times, dists, frames, depths, positions) -> None:
        self.centres = np.asarray(centres, np.float64)
        self.dirs = np.asarray(dirs, np.float64)
        self.times = np.asarray(times, np.float64)
        self.dists = np.asarray(dists, np.float64)
        self.frames = np.asarray(frames, np.int64)
        self.depths = np.asarray(depths, np.float64)
        self.positions = np.asarray(positions, np.int64)


def nearby_candidates(centres: np.ndarray, dirs: np.ndarray, times: np.ndarray, dists: np.ndarray,
                      frames: np.ndarray, query: TrajectoryQuery, cfg: LoopConfig) -> list[Candidate]:
    """Candidates (entry = position in the older frames' arrays), best first; ``similarity`` is NaN.

    Args:
        centres, dirs: (N, 3) world camera centres and unit viewing directions of the older frames.
        times, dists, frames: (N,) their timestamps, travelled distances and source frame indices.
        query: the window's query frames.
        cfg: the ``loop`` config.
    """
    if centres.shape[0] == 0 or query.centres.shape[0] == 0:
        return []
    cos_max = np.cos(np.radians(cfg.trajectory_max_angle_deg))
    picks, scores = [], []
    for q in range(query.centres.shape[0]):
        travel = np.abs(query.dists[q] - dists)
        ok = (np.abs(query.times[q] - times) >= cfg.exclude_seconds) & (dirs @ query.dirs[q] >= cos_max)
        if cfg.exclude_distance > 0:
            ok &= travel >= cfg.exclude_distance
        if not np.isfinite(query.depths[q]):
            continue
        bound = cfg.max_translation_abs * query.depths[q] + cfg.max_translation_rel * travel
        ratio = np.linalg.norm(centres - query.centres[q], axis=1) / np.maximum(bound, 1e-12)
        ok &= ratio <= 1.0
        if not ok.any():
            continue
        e = int(np.flatnonzero(ok)[np.argmin(ratio[ok])])
        picks.append((e, q))
        scores.append(1.0 - float(ratio[e]))
    if not picks:
        return []
    entries = np.array([p[0] for p in picks], np.int64)
    qs = np.array([p[1] for p in picks], np.int64)
    keep, _ = suppress_pairs(query.frames[qs], np.asarray(frames, np.int64)[entries], np.array(scores), cfg.nms_frames)
    return [Candidate(int(entries[k]), int(query.positions[qs[k]]), float("nan")) for k in keep]
