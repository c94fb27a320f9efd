"""The consistency gate: does a verified loop agree with the current trajectory?

A candidate that passed the registration gates (:mod:`~da3stream.streaming.loops.verify`)
gives ``i_from_j``, so window ``j``'s pose implied by the loop, ``world_from_i i_from_j``.
It is accepted when it agrees with the current ``world_from_j``: translation of
the query camera within ``max(max_translation_abs x depth, max_translation_rel x
travelled distance)`` (odometry drift grows with distance), rotation within
``max_rotation_deg``, scale within ``max_scale_ratio``. Failing only the
translation/rotation part, it is still accepted when at least ``consensus_min``
verified candidates of the window agree with each other and with a relaxed
translation bound (``consensus_translation_rel``). A look-alike place that the
network hallucinates into "the same place" yields a confident transform whose
disagreement is about the distance between the two places, i.e. about the
travelled distance: it fails both bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.config import LoopConfig
from da3stream.io.store.records import LoopEdge

__all__ = ["Verified", "agreeing_group", "angle_deg", "decide", "measure"]


@dataclass(frozen=True)
class Verified:
    """A candidate that passed the registration gates, waiting for the consistency decision."""

    pos: int  # position in the window's edge list (-1 until placed)
    edge: LoopEdge
    world_from_j_loop: Sim3  # window j's world pose implied by the loop
    trans_err: float
    rot_err_deg: float
    scale_ratio: float
    bound_abs: float
    travel: float


def angle_deg(R: np.ndarray) -> float:
    """Rotation angle in degrees of the (3, 3) rotation ``R`` (from its trace)."""
    c = (np.trace(R) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def measure(edge: LoopEdge, world_from_i: Sim3, world_from_j: Sim3, centre_j: np.ndarray, depth_q: float,
            travel: float, cfg: LoopConfig) -> Verified:
    """The disagreement of a verified loop with the current trajectory.

    Args:
        edge: the verified candidate (``i_from_j`` set).
        world_from_i, world_from_j: current poses of the two windows.
        centre_j: (3,) query camera centre in window ``j``'s frame.
        depth_q: median depth of the query frame in world units (NaN when unknown).
        travel: travelled distance between the two frames (odometry).
        cfg: the ``loop`` config.
    """
    W_j_loop = world_from_i @ edge.i_from_j
    trans_err = float(np.linalg.norm(world_from_j.apply(centre_j) - W_j_loop.apply(centre_j)))
    rot_err = angle_deg(world_from_j.R.T @ W_j_loop.R)
    scale_ratio = W_j_loop.s / world_from_j.s
    bound_abs = cfg.max_translation_abs * depth_q if np.isfinite(depth_q) else 0.0
    return Verified(-1, edge, W_j_loop, trans_err, rot_err, scale_ratio, bound_abs, travel)


def decide(verified: list[Verified], edges: list[LoopEdge], cfg: LoopConfig) -> list[int]:
    """Apply the consistency gate; returns positions (in ``edges``) of accepted loops, and fills reasons in ``edges``."""
    accepted: list[int] = []
    pending: list[Verified] = []
    for v in verified:
        bound = max(v.bound_abs, cfg.max_translation_rel * v.travel)
        scale_ok = 1.0 / cfg.max_scale_ratio <= v.scale_ratio <= cfg.max_scale_ratio
        if not scale_ok:
            edges[v.pos] = dataclasses.replace(v.edge, reason="inconsistent_scale")
        elif v.trans_err <= bound and v.rot_err_deg <= cfg.max_rotation_deg:
            edges[v.pos] = dataclasses.replace(v.edge, accepted=True, reason="")
            accepted.append(v.pos)
        else:
            reason = "inconsistent_translation" if v.trans_err > bound else "inconsistent_rotation"
            edges[v.pos] = dataclasses.replace(v.edge, reason=reason)
            pending.append(v)
    if cfg.consensus_min >= 2 and len(pending) >= cfg.consensus_min:
        group = agreeing_group(pending, cfg)
        if len(group) >= cfg.consensus_min:
            for v in group:
                edges[v.pos] = dataclasses.replace(v.edge, accepted=True, reason="")
                accepted.append(v.pos)
    return sorted(accepted)


def agreeing_group(pending: list[Verified], cfg: LoopConfig) -> list[Verified]:
    """Largest set of verified candidates whose implied window poses agree, within the relaxed bound."""
    ok = [v for v in pending if v.trans_err <= max(v.bound_abs, cfg.consensus_translation_rel * v.travel)]
    best: list[Verified] = []
    for a in ok:
        group = [
            b for b in ok
            if float(np.linalg.norm(a.world_from_j_loop.t - b.world_from_j_loop.t)) <= max(a.bound_abs, b.bound_abs)
            and angle_deg(a.world_from_j_loop.R.T @ b.world_from_j_loop.R) <= cfg.max_rotation_deg
        ]
        if len(group) > len(best):
            best = group
    return best
