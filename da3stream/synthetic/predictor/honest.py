"""The honest error modes of the simulator (issue 11): errors a network makes that the engine must not get for free.

Every function here is a no-op (returns None or its input unchanged) when its
:class:`SimParams` field is at its default, so the default simulator stays
bit-for-bit what it was; each mode draws from its own random stream
(:mod:`.seeding`), so switching one off leaves the others unchanged.

- rays with per-ray noise: origins scatter around the camera centre and
  directions are off by a small random rotation (:func:`perturb_rays`);
- a smooth log-depth bias field and a log-scale random walk drawn per window
  (:func:`window_depth_bias`): nothing is shared between windows, so it does not
  cancel in their overlap;
- a failed sub-block: a contiguous run of frames whose poses and depth scale are
  badly wrong with almost unchanged confidence (:func:`failed_block`,
  :func:`fail_poses`);
- confidently wrong regions: depth off by a constant factor with HIGH
  confidence (:func:`wrong_regions`).

Descriptors from pixels are in :mod:`.descriptors`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from da3stream.alignment.lie import so3_exp
from da3stream.synthetic.predictor.noise import smooth_field
from da3stream.synthetic.predictor.params import SimParams
from da3stream.synthetic.predictor.seeding import S_FAILED, S_RAYS, S_WINDOW_BIAS, S_WRONG, window_rng


def perturb_rays(p: SimParams, seed: int, key: tuple, rays: np.ndarray, chunk_from_cam: np.ndarray,
                 origin_std: float) -> np.ndarray:
    """Rays (N, hr, wr, 6) [origin, direction] with per-ray origin scatter and direction noise.

    ``origin_std`` is the origin scatter std in chunk units (``ray_origin_noise_rel``
    times the median depth times the gauge scale). Directions keep camera-z
    component 1 (``chunk_from_cam``'s third rotation column), so
    ``origin + z_depth * direction`` stays the convention.
    """
    if p.ray_origin_noise_rel <= 0 and p.ray_dir_noise_deg <= 0:
        return rays
    gen = window_rng(seed, key, S_RAYS)
    shape = rays.shape[:3] + (3,)
    out = rays.astype(np.float64)
    out[..., :3] += gen.standard_normal(shape) * origin_std
    d = out[..., 3:]
    omega = gen.standard_normal(shape) * np.radians(p.ray_dir_noise_deg)
    d = d + np.cross(omega, d)
    z_axis = chunk_from_cam[:, None, None, :3, 2]
    out[..., 3:] = d / np.sum(d * z_axis, axis=-1, keepdims=True)
    return out.astype(np.float32)


def window_depth_bias(p: SimParams, seed: int, key: tuple, n: int, hw: tuple) -> Optional[np.ndarray]:
    """(N, h, w) float32 log-depth error drawn per window (smooth field + per-frame scale walk), or None when off."""
    if p.depth_window_bias_std <= 0 and p.depth_scale_walk_std <= 0:
        return None
    gen = window_rng(seed, key, S_WINDOW_BIAS)
    field = smooth_field(p.depth_noise_cells, gen, hw) * np.float32(p.depth_window_bias_std)
    steps = np.concatenate([[0.0], np.cumsum(gen.standard_normal(max(n - 1, 0)))]) if n else np.zeros(0)
    walk = (steps - steps[n // 2]) * p.depth_scale_walk_std if n else steps
    return (field[None] + walk.astype(np.float32)[:, None, None]).astype(np.float32)


def failed_block(p: SimParams, seed: int, key: tuple, n: int) -> Optional[dict]:
    """The window's failed sub-block, or None: ``start``, ``stop`` (frame positions), ``rotvec`` (3,) rad,
    ``shift`` (3,) in median depths, ``log_scale`` (the block's depth error)."""
    if p.failed_block_prob <= 0 or n < 2:
        return None
    gen = window_rng(seed, key, S_FAILED)
    if gen.uniform() >= p.failed_block_prob:
        return None
    lo, hi = p.failed_block_frames
    length = int(min(gen.integers(lo, hi + 1), n - 1))
    start = int(gen.integers(0, n - length + 1))
    return {"start": start, "stop": start + length,
            "rotvec": gen.standard_normal(3) * np.radians(p.failed_block_rot_deg),
            "shift": gen.standard_normal(3) * p.failed_block_trans_rel,
            "log_scale": float(gen.standard_normal() * p.failed_block_depth_log)}


def fail_poses(block: Optional[dict], world_from_cam: np.ndarray, median_depth: float) -> np.ndarray:
    """Poses (N, 4, 4) with the block's frames given one common, badly wrong rotation and centre error."""
    if block is None:
        return world_from_cam
    out = world_from_cam.copy()
    sl = slice(block["start"], block["stop"])
    out[sl, :3, :3] = world_from_cam[sl, :3, :3] @ so3_exp(block["rotvec"][None])[0]
    out[sl, :3, 3] = world_from_cam[sl, :3, 3] + block["shift"] * median_depth
    return out


def wrong_regions(p: SimParams, seed: int, key: tuple, frame: int, hw: tuple,
                  sky: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(mask (h, w) bool, log-depth error (h, w) float32)`` of one frame's confidently wrong regions, or None."""
    if p.wrong_region_rate <= 0:
        return None
    gen = window_rng(seed, key, S_WRONG, frame)
    n_regions = int(gen.poisson(p.wrong_region_rate))
    if not n_regions:
        return None
    h, w = hw
    v, u = np.ogrid[0:h, 0:w]
    mask = np.zeros((h, w), dtype=bool)
    err = np.zeros((h, w), dtype=np.float32)
    for _ in range(n_regions):
        cu, cv = gen.uniform(0, w), gen.uniform(0, h)
        ru, rv = gen.uniform(0.5, 1.5, size=2) * p.blob_radius_fraction * max(h, w)
        inside = (((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 < 1.0) & ~sky
        sign = 1.0 if gen.uniform() < 0.5 else -1.0
        err[inside] = np.float32(sign * p.wrong_region_log_err)
        mask |= inside
    return mask, err


def add_depth_errors(p: SimParams, seed: int, key: tuple, i: int, sky: np.ndarray, log_err: np.ndarray,
                     conf_log: np.ndarray, bias: Optional[np.ndarray], block: Optional[dict]) -> None:
    """Add frame ``i``'s honest depth errors to ``log_err`` / ``conf_log`` (both (h, w) float32) in place."""
    if bias is not None:
        log_err += np.where(sky, np.float32(0.0), bias[i])
    if block is not None and block["start"] <= i < block["stop"]:
        log_err += np.float32(block["log_scale"])
    wrong = wrong_regions(p, seed, key, i, log_err.shape, sky)
    if wrong is not None:
        mask, err = wrong
        log_err[mask] += err[mask]
        conf_log[mask] = np.float32(p.wrong_region_conf_log)
