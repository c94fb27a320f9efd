"""Alignment stage: a window's chunk frame in the world, from its overlap with the previous window.

:meth:`AlignStage.register` estimates ``prev_from_cur`` for two predictions of
the same (overlap) frames with :func:`~da3stream.streaming.overlap_fit.register_pair`
(the path loop verification uses too) and applies the gating policy:

- the registration passes its quality gate: use it (status OK);
- it is self-consistent but disagrees with the cameras: keep it, flag it (GATED);
- its residual is high or its inliers few, yet the camera-pose estimate fits
  the same correspondences no better (noise of far depth, e.g. a drone): keep
  it and flag it (GATED, ``flag_reason`` ``high_residual_kept`` / ``low_inliers_kept``;
  the pose graph weighs it by its residual, not as a camera-pose fallback);
- it fails (degenerate overlap, gate failed): fall back to the estimate from
  the camera poses (GATED), or, without one, start a new segment.

:meth:`AlignStage.__call__` places the window: chained to the previous window,
or, in a new segment, with its first camera at the last known camera so that
exports stay bounded.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from da3stream.alignment.registration import pose_based_estimate, quality_gate, transform_disagreement
from da3stream.alignment.sim3 import Sim3
from da3stream.config import AlignConfig
from da3stream.core.types import Prediction
from da3stream.errors import AlignmentError
from da3stream.io.store.records import ChunkStatus
from da3stream.streaming.overlap_fit import PairFit, register_pair, residual_median
from da3stream.streaming.state import RunState
from da3stream.streaming.window import AlignmentQuality, Window

log = logging.getLogger(__name__)

__all__ = ["AlignStage", "cameras_trusted", "segment_start"]

class AlignStage:
    """``stage(window, state) -> window`` with ``prev_from_cur``, ``world_from_chunk``, ``quality``, ``segment``.

    Args:
        cfg: the ``align`` config.
        seed: the run's seed (correspondence sampling is seeded from (seed, window id)).
    """

    def __init__(self, cfg: AlignConfig, *, seed: int, poses_from_rays: Callable[[], bool] = lambda: False) -> None:
        self.cfg = cfg
        self.seed = seed
        self.poses_from_rays = poses_from_rays
        """Whether the run's poses are fitted to ray maps even where the rays were dropped (known calibration)."""

    def __call__(self, window: Window, state: RunState) -> Window:
        chunk_id, n_carry, pred = window.chunk_id, window.n_carry, window.prediction
        quality = AlignmentQuality.first(ChunkStatus.FIRST if chunk_id == 0 else ChunkStatus.OK)
        prev_from_cur = None
        carry = state.carry
        if chunk_id > 0 and n_carry > 0 and carry is not None and carry.prediction is not None:
            prev_from_cur, quality = self.register(carry.prediction, pred.subset(slice(0, n_carry)), chunk_id)
        segment = state.segment
        if chunk_id == 0:
            world_from_this = Sim3.identity()
        elif prev_from_cur is not None:
            world_from_this = state.world_from_chunk[carry.chunk_id] @ prev_from_cur
        else:
            segment += 1
            quality = quality.replace(status=ChunkStatus.NEW_SEGMENT,
                                      reason=quality.reason or state.segment_reason or "no_overlap")
            world_from_this = segment_start(state, pred, n_carry)
        return window.replace(prev_from_cur=prev_from_cur, world_from_chunk=world_from_this, quality=quality,
                              segment=segment)

    def register(self, prev: Prediction, cur: Prediction, chunk_id: int) -> tuple[Optional[Sim3], AlignmentQuality]:
        """``prev_from_cur`` for two predictions of the same frames, with a quality record.

        Returns ``(None, quality)`` when no estimate is usable (the window starts a new segment).
        """
        a = self.cfg
        quality = AlignmentQuality()
        if a.mode == "poses":
            try:
                pose_est = pose_based_estimate(prev.world_from_cam, cur.world_from_cam, prev.depth, cur.depth)
            except AlignmentError as exc:
                return None, quality.replace(status=ChunkStatus.NEW_SEGMENT, reason="poses_degenerate",
                                             pose_reason=str(exc))
            return pose_est, quality.replace(scale=pose_est.s)
        rng = np.random.default_rng([self.seed, chunk_id])
        try:
            fitted = self.poses_from_rays() or (prev.rays is not None and cur.rays is not None)
            fit = register_pair(prev, cur, a, rng, rotation_from_cameras=cameras_trusted(a, fitted))
        except AlignmentError as exc:
            log.warning("chunk %d: registration failed (%s); falling back to camera poses", chunk_id, exc)
            pose_est = _pose_estimate(prev, cur)
            if pose_est is None:
                return None, quality.replace(status=ChunkStatus.NEW_SEGMENT, reason="degenerate")
            return pose_est, quality.replace(status=ChunkStatus.GATED, reason="degenerate_overlap", scale=pose_est.s)
        quality = quality.replace(n_points=len(fit.corr), pose_reason=fit.pose_reason)
        disagreement = float("nan")
        if fit.pose_est is not None:
            disagreement = transform_disagreement(fit.result.dst_from_src, fit.pose_est, fit.corr.src,
                                                  depth=fit.corr.depth_dst)
        return self._gate(fit, disagreement, quality, chunk_id)

    def _gate(self, fit: PairFit, disagreement: float, quality: AlignmentQuality,
              chunk_id: int) -> tuple[Optional[Sim3], AlignmentQuality]:
        """The gating policy on a finished registration (see the module docstring)."""
        a, result, pose_est = self.cfg, fit.result, fit.pose_est
        ok, reason = quality_gate(
            result, disagreement, min_inlier_ratio=a.min_inlier_ratio, max_residual=a.max_residual,
            scale_range=a.scale_range, max_pose_disagreement=a.max_pose_disagreement,
        )
        quality = quality.replace(inlier_ratio=result.inlier_ratio, residual=result.residual_median,
                                  scale=result.dst_from_src.s, pose_disagreement=disagreement)
        if ok:
            return result.dst_from_src, quality
        if reason == "pose_disagreement":
            # registration is self-consistent but disagrees with the cameras: keep it, flag it
            return result.dst_from_src, quality.replace(status=ChunkStatus.GATED, reason=reason)
        if reason in ("high_residual", "low_inliers") and (
                pose_est is None or result.residual_median <= residual_median(pose_est, fit.corr)):
            # noisy overlap (far depth), but the cameras explain it no better: keep the registration, flag it
            return result.dst_from_src, quality.replace(status=ChunkStatus.GATED, reason=f"{reason}_kept")
        log.warning("chunk %d: alignment gated (%s); falling back to camera poses", chunk_id, reason)
        if pose_est is None:
            return None, quality.replace(status=ChunkStatus.NEW_SEGMENT, reason=reason)
        return pose_est, quality.replace(status=ChunkStatus.GATED, reason=reason, scale=pose_est.s)


def cameras_trusted(cfg: AlignConfig, poses_fitted: bool) -> bool:
    """Align mode ``auto`` takes the rotation from the cameras when both sides' poses were fitted to rays."""
    return cfg.mode == "auto" and cfg.pose_source != "head" and bool(poses_fitted)


def _pose_estimate(prev: Prediction, cur: Prediction) -> Optional[Sim3]:
    try:
        return pose_based_estimate(prev.world_from_cam, cur.world_from_cam, prev.depth, cur.depth)
    except AlignmentError:
        return None


def segment_start(state: RunState, pred: Prediction, n_carry: int) -> Sim3:
    """world_from_chunk of a new segment: its first camera placed at the last known camera."""
    if not state.world_from_chunk:
        return Sim3.identity()
    last = state.world_from_chunk[-1]
    world_from_last_cam = last.apply_pose(state.last_chunk_from_cam())
    first_cam = pred.world_from_cam[min(n_carry, len(pred) - 1)]
    # world_from_chunk = world_from_last_cam * inv(chunk_from_first_cam), with the previous chunk's scale
    cam_from_chunk = np.linalg.inv(first_cam)
    R = world_from_last_cam[:3, :3] @ cam_from_chunk[:3, :3]
    t = world_from_last_cam[:3, :3] @ (last.s * cam_from_chunk[:3, 3]) + world_from_last_cam[:3, 3]
    return Sim3(last.s, R, t)
