"""Pose errors of the simulator: the window's gauge, look-alike hallucination, jitter and random walks.

Two pose estimates, as in DA3: the geometry (what depth + rays encode; DA3's
ray-derived cameras) is precise, the camera head's ``world_from_cam`` is not.
"""

from __future__ import annotations

import numpy as np

from da3stream.alignment.lie import so3_exp
from da3stream.alignment.sim3 import Sim3
from da3stream.synthetic.predictor.params import SimParams
from da3stream.synthetic.predictor.seeding import S_GAUGE, S_POSE, window_rng
from da3stream.synthetic.predictor.truth import GroundTruth


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation of a uniformly random unit quaternion (``quat_xyzw`` order of the draws)."""
    q = rng.standard_normal(4)
    q = q / np.linalg.norm(q)
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _walk(gen: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) Gaussian random walk with unit steps, zero at the middle frame ``n // 2``."""
    w = np.concatenate([np.zeros((1, 3)), np.cumsum(gen.standard_normal((n - 1, 3)), axis=0)])
    return w - w[n // 2]


def perturb(world_from_cam: np.ndarray, gen: np.random.Generator, extent: float, median_depth: float,
            rot_jitter_deg: float, rot_walk_deg: float, trans_jitter_rel: float, trans_walk_rel: float,
            trans_floor_rel_depth: float) -> np.ndarray:
    """Poses (N, 4, 4) with rotation (camera side) and camera-centre (world) jitter and random walks.

    Draws the same number of random values whatever the magnitudes, so turning
    one mode off leaves the other streams unchanged.
    """
    n = world_from_cam.shape[0]
    rot = _walk(gen, n) * np.radians(rot_walk_deg) + gen.standard_normal((n, 3)) * np.radians(rot_jitter_deg)
    jit_std = trans_jitter_rel * extent + trans_floor_rel_depth * median_depth
    trans = _walk(gen, n) * (trans_walk_rel * extent) + gen.standard_normal((n, 3)) * jit_std
    out = world_from_cam.copy()
    out[:, :3, :3] = world_from_cam[:, :3, :3] @ so3_exp(rot)
    out[:, :3, 3] = world_from_cam[:, :3, 3] + trans
    return out


def random_gauge(p: SimParams, seed: int, key: tuple) -> Sim3:
    """``chunk_from_world`` of a window in the "random" gauge (the identity for the "identity" gauge)."""
    if p.gauge == "identity":
        return Sim3.identity()
    gen = window_rng(seed, key, S_GAUGE)
    lo, hi = p.gauge_scale_range
    s = float(np.exp(gen.uniform(np.log(lo), np.log(hi))))
    R = random_rotation(gen)
    t = gen.standard_normal(3) * p.gauge_translation_std
    return Sim3(s, R, t)


def first_frame_gauge(p: SimParams, seed: int, key: tuple, noisy_world_from_cam: np.ndarray) -> Sim3:
    """``chunk_from_world`` that makes the window's first predicted camera the identity, at a random scale."""
    s = random_gauge(p, seed, key).s
    R0 = noisy_world_from_cam[0, :3, :3]
    c0 = noisy_world_from_cam[0, :3, 3]
    return Sim3(s, R0.T, -s * (R0.T @ c0))


def hallucinated(gt: GroundTruth, idx: np.ndarray, run_gap_frames: int) -> np.ndarray:
    """True poses (N, 4, 4) with each later run of frames moved by whole world repetitions onto the first run."""
    P = gt.world_from_cam[idx].copy()
    v = gt.alias_translation
    if v is None or idx.size < 2:
        return P
    order = np.argsort(idx, kind="stable")
    breaks = np.flatnonzero(np.diff(idx[order]) > run_gap_frames) + 1
    runs = np.split(order, breaks)
    ref = P[runs[0], :3, 3].mean(axis=0)
    for run in runs[1:]:
        k = np.round(np.dot(P[run, :3, 3].mean(axis=0) - ref, v) / np.dot(v, v))
        P[run, :3, 3] -= k * v
    return P


def noisy_poses(gt: GroundTruth, p: SimParams, seed: int, idx: np.ndarray, key: tuple,
                median_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """``(world_from_cam_geometry, world_from_cam_head)`` (N, 4, 4) in world metres (before the gauge).

    Errors: independent per-frame jitter plus a random walk that grows outward
    from the window's middle frame; translation std is relative to the window's
    extent (diagonal of the true camera centres' bounding box), with a floor
    relative to the median true depth for windows that barely move.
    """
    P = hallucinated(gt, idx, p.alias_run_gap_frames) if p.alias_hallucination else gt.world_from_cam[idx]
    centres = P[:, :3, 3]
    extent = float(np.linalg.norm(centres.max(axis=0) - centres.min(axis=0)))
    gen = window_rng(seed, key, S_POSE)
    geom = perturb(P, gen, extent, median_depth, p.geom_rot_jitter_deg, p.geom_rot_walk_deg,
                   p.geom_trans_jitter_rel, p.geom_trans_walk_rel, p.geom_trans_floor_rel_depth)
    head = perturb(geom, gen, extent, median_depth, p.pose_rot_jitter_deg, p.pose_rot_walk_deg,
                   p.pose_trans_jitter_rel, p.pose_trans_walk_rel, p.pose_trans_floor_rel_depth)
    return geom, head


def window_gauge(p: SimParams, seed: int, key: tuple, world_from_cam_head: np.ndarray) -> Sim3:
    """The window's ``chunk_from_world`` for ``p.gauge``, given its noisy camera-head poses."""
    if p.gauge == "first_frame":
        return first_frame_gauge(p, seed, key, world_from_cam_head)
    return random_gauge(p, seed, key)
