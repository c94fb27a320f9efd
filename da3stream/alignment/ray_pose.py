"""Camera poses and intrinsics recovered from a DA3-style ray map.

A ray map holds, per pixel, the ray origin ``o`` (the camera centre) and the
direction ``d = R K^-1 [u, v, 1]^T`` in the chunk frame, scaled so that
``o + z * d`` is the point at z-depth ``z`` (docs/CONVENTIONS.md). DA3's ray
head is more accurate than its camera head (the official API offers
``use_ray_pose`` for this reason), so when a predictor gives rays the engine
takes per-frame poses from them.

Given the pixel grid, ``d ~ M [u, v, 1]`` with ``M = R K^-1`` is linear in
``M``: a weighted least-squares fit gives ``M``, and an RQ decomposition of
``M^-1 = K R^T`` splits it into an upper-triangular ``K`` (positive diagonal)
and a rotation.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import rq

from da3stream.errors import AlignmentError, check_shape


def ray_pixel_grid(ray_hw: tuple[int, int], depth_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Depth-grid pixel coordinates (u, v) of the ray-grid cell centres, each (hr, wr)."""
    hr, wr = ray_hw
    h, w = depth_hw
    u = (np.arange(wr, dtype=np.float64) + 0.5) * (w / wr) - 0.5
    v = (np.arange(hr, dtype=np.float64) + 0.5) * (h / hr) - 0.5
    return np.meshgrid(u, v)


def pose_from_rays(rays: np.ndarray, depth_hw: tuple[int, int], ray_conf: np.ndarray | None = None,
                   *, max_samples: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``chunk_from_cam`` (N, 4, 4) and intrinsics (N, 3, 3) for the depth grid, from rays.

    Args:
        rays: (N, hr, wr, 6) [origin, direction] in the chunk frame.
        depth_hw: (h, w) of the depth grid the intrinsics are for.
        ray_conf: optional (N, hr, wr) weights (higher is better).
        max_samples: cells used per frame (an even subsample of the grid).

    Raises:
        AlignmentError: a frame's rays are degenerate (rank-deficient fit, non-finite values).
    """
    check_shape("pose_from_rays(rays)", rays, ("N", "hr", "wr", 6), "f")
    n, hr, wr, _ = rays.shape
    if ray_conf is not None:
        check_shape("pose_from_rays(ray_conf)", ray_conf, (n, hr, wr), "f")
    step = max(1, int(np.sqrt(hr * wr / max(max_samples, 1))))
    u, v = ray_pixel_grid((hr, wr), depth_hw)
    uv1 = np.stack([u[::step, ::step].ravel(), v[::step, ::step].ravel(), np.ones(u[::step, ::step].size)], 1)
    poses = np.tile(np.eye(4), (n, 1, 1))
    Ks = np.zeros((n, 3, 3))
    for i in range(n):
        r = np.asarray(rays[i, ::step, ::step], np.float64).reshape(-1, 6)
        wts = np.ones(r.shape[0]) if ray_conf is None else np.asarray(ray_conf[i, ::step, ::step], np.float64).ravel()
        ok = np.all(np.isfinite(r), axis=1) & np.isfinite(wts) & (wts > 0)
        if ok.sum() < 6:
            raise AlignmentError(f"pose_from_rays: frame {i} has fewer than 6 valid rays")
        sw = np.sqrt(wts[ok])[:, None]
        A = uv1[ok] * sw
        B = r[ok, 3:] * sw
        Mt, *_ = np.linalg.lstsq(A, B, rcond=None)  # d^T = [u v 1] M^T
        M = Mt.T
        if not np.all(np.isfinite(M)) or abs(np.linalg.det(M)) < 1e-12:
            raise AlignmentError(f"pose_from_rays: frame {i} ray directions are degenerate")
        K, Rt = rq(np.linalg.inv(M))
        D = np.diag(np.sign(np.diag(K)))  # K with a positive diagonal; D @ D = I
        K, Rt = K @ D, D @ Rt
        if np.linalg.det(Rt) < 0:
            raise AlignmentError(f"pose_from_rays: frame {i} rays imply a reflection")
        K = K / K[2, 2]
        K[0, 1] = 0.0  # a pinhole camera has no skew; the fit leaves ~1e-6 px of numerical skew
        poses[i, :3, :3] = Rt.T
        poses[i, :3, 3] = np.average(r[ok, :3], axis=0, weights=wts[ok])
        Ks[i] = K
    return poses, Ks
