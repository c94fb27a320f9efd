"""One registration path for two predictions of the same frames.

The sequential alignment (window j against window j - 1 on their shared
frames) and loop verification (a loop window's halves against the windows the
frames came from) both call :func:`register_pair`:

1. **Points on one grid.** When both predictions carry a ray map on the same
   grid, points are ``origin + depth * direction`` there (DA3's ray map is
   coarser than its depth map: depth and confidence are brought to the ray
   grid). Otherwise both sides unproject depth with their own intrinsics and
   poses (ray-fitted poses when the window had rays), on the depth grid.
2. **Frame consensus.** Each shared frame gives one estimate of the relative
   rotation, ``R_dst,k R_src,k^T``; frames far from the robust mean of those
   (:mod:`~da3stream.alignment.rotation_consensus`) belong to a failed
   sub-block of one window and are left out of the fit.
3. **The fit.** With ``rotation_from_cameras`` (align mode ``auto`` on
   ray-fitted poses: DA3's ray-derived cameras are its most precise geometry)
   the rotation is that robust mean and only scale and translation come from
   the points; otherwise the points give the whole Sim(3)
   (:func:`~da3stream.alignment.registration.register`).
4. **Frame residuals.** A frame whose median point residual is far above the
   others' (a failed sub-block in depth only) is dropped and the fit redone once.

The caller applies its own gate to the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from da3stream.alignment.points import (
    Correspondences, points_from_rays, resample_to_grid, sample_correspondences, unproject_depth,
)
from da3stream.alignment.registration import RegistrationResult, pose_based_estimate, register
from da3stream.alignment.rotation_consensus import agreeing, chordal_mean, robust_rotation_mean
from da3stream.alignment.sim3 import Sim3
from da3stream.config import AlignConfig
from da3stream.core.types import Prediction
from da3stream.errors import AlignmentError

log = logging.getLogger(__name__)

__all__ = ["PairFit", "pair_points", "register_pair", "sampling_stride", "residual_median"]

CANDIDATES_PER_POINT = 16
"""Pixel stride of the overlap sampling leaves about this many candidates per correspondence kept."""
FRAME_RESIDUAL_FACTOR = 3.0
"""A frame is dropped when its median residual exceeds this times the median over frames (and the inlier threshold)."""


@dataclass(frozen=True, eq=False)
class PairFit:
    """Outcome of :func:`register_pair`."""

    result: RegistrationResult
    """The registration (``dst_from_src`` and its quality)."""
    corr: Correspondences
    """The correspondences of the final fit (frames kept only)."""
    pose_est: Optional[Sim3]
    """``dst_from_src`` from the shared frames' camera poses alone (None when it failed)."""
    pose_reason: str
    """Why ``pose_est`` failed ('' when it did not)."""
    kept_frames: np.ndarray
    """(K,) bool: shared frames that entered the final fit."""


def sampling_stride(pred: Prediction, max_points: int) -> int:
    """Pixel stride that leaves about 16 candidates per correspondence kept (sampling stays cheap)."""
    n, h, w = pred.depth.shape
    want = CANDIDATES_PER_POINT * max_points
    return max(1, int(np.sqrt(n * h * w / max(want, 1))))


def _ray_points(pred: Prediction, stride: int):
    hr, wr = pred.rays.shape[1:3]
    if (hr, wr) == pred.depth.shape[1:3]:
        d, c = pred.depth, pred.conf
    else:  # DA3's ray map is coarser than its depth map: bring depth and confidence to the ray grid
        d = resample_to_grid(np.where(pred.depth > 0, pred.depth, np.nan), (hr, wr), method="nearest")
        c = pred.ray_conf if pred.ray_conf is not None else resample_to_grid(pred.conf, (hr, wr), method="nearest")
    d, c = d[:, ::stride, ::stride], np.asarray(c)[:, ::stride, ::stride]
    return points_from_rays(pred.rays[:, ::stride, ::stride], d), c, d


def _depth_points(pred: Prediction, stride: int):
    d = pred.depth[:, ::stride, ::stride]
    c = pred.conf[:, ::stride, ::stride]
    K = np.array(pred.intrinsics, dtype=np.float64, copy=True)
    K[:, :2, :] /= stride
    return unproject_depth(d, K, pred.world_from_cam), c, d


def pair_points(a: Prediction, b: Prediction, stride: int):
    """``((pts, conf, depth) of a, (pts, conf, depth) of b)``, every ``stride``-th pixel of one common grid."""
    if a.rays is not None and b.rays is not None and a.rays.shape[1:3] == b.rays.shape[1:3]:
        return _ray_points(a, stride), _ray_points(b, stride)
    if a.depth.shape[1:] != b.depth.shape[1:]:
        raise AlignmentError(f"register_pair: depth grids differ ({a.depth.shape[1:]} vs {b.depth.shape[1:]})")
    return _depth_points(a, stride), _depth_points(b, stride)


def residual_median(T: Sim3, corr: Correspondences) -> float:
    """Median depth-relative residual of ``T`` on ``corr``."""
    r = np.linalg.norm(corr.dst - T.apply(corr.src), axis=1) / corr.depth_dst
    return float(np.median(r))


def _subset(corr: Correspondences, keep: np.ndarray) -> Correspondences:
    return Correspondences(dst=corr.dst[keep], src=corr.src[keep], weight=corr.weight[keep],
                           depth_dst=corr.depth_dst[keep], depth_src=corr.depth_src[keep], frame=corr.frame[keep],
                           pixel=corr.pixel[keep])


def _fit(corr: Correspondences, cfg: AlignConfig, mode: str, init: Optional[Sim3]) -> RegistrationResult:
    return register(corr.dst, corr.src, corr.weight, corr.depth_dst, mode=mode, kernel=cfg.kernel,
                    kernel_scale=cfg.kernel_scale, inlier_threshold=cfg.inlier_threshold, irls_iters=cfg.irls_iters,
                    min_points=cfg.min_points, init=init)


def _frame_outliers(result: RegistrationResult, corr: Correspondences, n_frames: int, threshold: float) -> np.ndarray:
    """(K,) bool: frames whose median residual is far above the others' (see FRAME_RESIDUAL_FACTOR)."""
    r = np.linalg.norm(corr.dst - result.dst_from_src.apply(corr.src), axis=1) / corr.depth_dst
    med = np.full(n_frames, np.nan)
    for k in np.unique(corr.frame):
        med[k] = np.median(r[corr.frame == k])
    typical = np.nanmedian(med)
    return np.isfinite(med) & (med > max(FRAME_RESIDUAL_FACTOR * typical, threshold))


def register_pair(dst: Prediction, src: Prediction, cfg: AlignConfig, rng: np.random.Generator, *,
                  rotation_from_cameras: bool, mode: Optional[str] = None) -> PairFit:
    """``dst_from_src`` of two predictions of the same K frames (see the module docstring).

    Args:
        dst, src: the two predictions (``world_from_cam`` is each one's chunk_from_cam).
        cfg: the ``align`` config (sampling, kernel, thresholds).
        rng: seeds the correspondence sampling.
        rotation_from_cameras: take the rotation from the frames' camera rotations (consensus) and fit
            only scale and translation to the points.
        mode: registration mode when the rotation comes from the points (default ``cfg.mode``; ``auto`` is sim3).

    Raises:
        AlignmentError: no usable correspondences or a degenerate fit.
    """
    k = len(dst)
    pose_est, pose_reason = None, ""
    try:
        pose_est = pose_based_estimate(dst.world_from_cam, src.world_from_cam, dst.depth, src.depth)
    except AlignmentError as exc:
        pose_reason = str(exc)
    Q = np.asarray(dst.world_from_cam, np.float64)[:, :3, :3] @ np.swapaxes(
        np.asarray(src.world_from_cam, np.float64)[:, :3, :3], 1, 2)
    R_cam, angles = robust_rotation_mean(Q)
    keep_frames = agreeing(angles) if k >= 3 else np.ones(k, bool)
    if not keep_frames.all():
        R_cam = chordal_mean(Q[keep_frames])  # the agreeing frames alone (Cauchy weights leave the rest a pull)
    (pa, ca, da), (pb, cb, db) = pair_points(dst, src, sampling_stride(dst, cfg.max_points))
    corr = sample_correspondences(pa, ca, da, pb, cb, depth_b=db, max_points=cfg.max_points,
                                  conf_quantile=cfg.conf_quantile, rng=rng)
    fit_mode = mode or cfg.mode
    fit_mode = "sim3" if fit_mode in ("auto", "poses") else fit_mode
    init = pose_est
    if rotation_from_cameras:
        fit_mode, init = "scale", Sim3(1.0, R_cam, np.zeros(3))
    elif fit_mode == "scale" and init is None:
        raise AlignmentError(f"register_pair: mode scale needs a camera-pose estimate ({pose_reason})")
    use = keep_frames[corr.frame]
    sub = _subset(corr, use) if use.sum() >= cfg.min_points else corr
    result = _fit(sub, cfg, fit_mode, init if fit_mode == "scale" else None)
    bad = _frame_outliers(result, sub, k, cfg.inlier_threshold)
    if bad.any() and (~bad[sub.frame]).sum() >= cfg.min_points and (keep_frames & ~bad).sum() >= max(2, k // 2):
        keep_frames = keep_frames & ~bad
        sub = _subset(sub, ~bad[sub.frame])
        result = _fit(sub, cfg, fit_mode, init if fit_mode == "scale" else None)
    if not keep_frames.all():
        log.debug("register_pair: %d of %d shared frames left out (failed sub-block)", int((~keep_frames).sum()), k)
    return PairFit(result=result, corr=sub, pose_est=pose_est, pose_reason=pose_reason, kept_frames=keep_frames)
