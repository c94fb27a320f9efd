"""Alignment stage: a window's chunk frame in the world, from its overlap with the previous window.

:meth:`AlignStage.register` estimates ``prev_from_cur`` for two predictions of
the same (overlap) frames with the robust registration of
:mod:`da3stream.alignment.registration` and applies the gating policy:

- the registration passes its quality gate: use it (status OK);
- it is self-consistent but disagrees with the cameras: keep it, flag it (GATED);
- it fails (degenerate overlap, gate failed): fall back to the estimate from
  the camera poses (GATED), or, without one, start a new segment.

:meth:`AlignStage.__call__` places the window: chained to the previous window,
or, in a new segment, with its first camera at the last known camera so that
exports stay bounded.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from da3stream.alignment.points import points_from_rays, resample_to_grid, sample_correspondences, unproject_depth
from da3stream.alignment.registration import (
    pose_based_estimate,
    quality_gate,
    register,
    transform_disagreement,
)
from da3stream.alignment.sim3 import Sim3
from da3stream.config import AlignConfig
from da3stream.core.types import Prediction
from da3stream.errors import AlignmentError
from da3stream.io.store.records import ChunkStatus
from da3stream.streaming.state import RunState
from da3stream.streaming.window import AlignmentQuality, Window

log = logging.getLogger(__name__)

__all__ = ["AlignStage", "overlap_points", "sampling_stride", "segment_start"]

CANDIDATES_PER_POINT = 16
"""Pixel stride of the overlap sampling leaves about this many candidates per correspondence kept."""


class AlignStage:
    """``stage(window, state) -> window`` with ``prev_from_cur``, ``world_from_chunk``, ``quality``, ``segment``.

    Args:
        cfg: the ``align`` config.
        seed: the run's seed (correspondence sampling is seeded from (seed, window id)).
    """

    def __init__(self, cfg: AlignConfig, *, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed

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
        try:
            pose_est = pose_based_estimate(prev.world_from_cam, cur.world_from_cam, prev.depth, cur.depth)
        except AlignmentError as exc:
            pose_est = None
            quality = quality.replace(pose_reason=str(exc))
        if a.mode == "poses":
            if pose_est is None:
                return None, quality.replace(status=ChunkStatus.NEW_SEGMENT, reason="poses_degenerate")
            return pose_est, quality.replace(scale=pose_est.s)
        rng = np.random.default_rng([self.seed, chunk_id])
        try:
            stride = sampling_stride(prev, a.max_points)
            pts_a, conf_a, depth_a = overlap_points(prev, stride)
            pts_b, conf_b, depth_b = overlap_points(cur, stride)
            corr = sample_correspondences(
                pts_a, conf_a, depth_a, pts_b, conf_b, depth_b=depth_b,
                max_points=a.max_points, conf_quantile=a.conf_quantile, rng=rng,
            )
            quality = quality.replace(n_points=int(corr.dst.shape[0]))
            result = register(
                corr.dst, corr.src, corr.weight, corr.depth_dst, mode=a.mode, kernel=a.kernel,
                kernel_scale=a.kernel_scale, inlier_threshold=a.inlier_threshold, irls_iters=a.irls_iters,
                min_points=a.min_points, init=pose_est if a.mode == "scale" else None,
            )
        except AlignmentError as exc:
            log.warning("chunk %d: registration failed (%s); falling back to camera poses", chunk_id, exc)
            if pose_est is None:
                return None, quality.replace(status=ChunkStatus.NEW_SEGMENT, reason="degenerate")
            return pose_est, quality.replace(status=ChunkStatus.GATED, reason="degenerate_overlap", scale=pose_est.s)
        disagreement = float("nan")
        if pose_est is not None:
            disagreement = transform_disagreement(result.dst_from_src, pose_est, corr.src, depth=corr.depth_dst)
        return self._gate(result, disagreement, pose_est, quality, chunk_id)

    def _gate(self, result, disagreement: float, pose_est: Optional[Sim3], quality: AlignmentQuality,
              chunk_id: int) -> tuple[Optional[Sim3], AlignmentQuality]:
        """The gating policy on a finished registration (see the module docstring)."""
        a = self.cfg
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
        log.warning("chunk %d: alignment gated (%s); falling back to camera poses", chunk_id, reason)
        if pose_est is None:
            return None, quality.replace(status=ChunkStatus.NEW_SEGMENT, reason=reason)
        return pose_est, quality.replace(status=ChunkStatus.GATED, reason=reason, scale=pose_est.s)


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


def sampling_stride(pred: Prediction, max_points: int) -> int:
    """Pixel stride that leaves about 16 candidates per correspondence kept (sampling stays cheap)."""
    n, h, w = pred.depth.shape
    want = CANDIDATES_PER_POINT * max_points
    return max(1, int(np.sqrt(n * h * w / max(want, 1))))


def overlap_points(pred: Prediction, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, conf, depth) of every ``stride``-th pixel of the overlap frames, in the chunk frame.

    Points come from the ray map when the predictor gives one on the depth
    grid, otherwise from depth, intrinsics and pose.
    """
    if pred.rays is not None:
        hr, wr = pred.rays.shape[1:3]
        if (hr, wr) == pred.depth.shape[1:3]:
            d, c = pred.depth, pred.conf
        else:  # DA3's ray map is coarser than its depth map: bring depth and confidence to the ray grid
            d = resample_to_grid(np.where(pred.depth > 0, pred.depth, np.nan), (hr, wr), method="nearest")
            c = pred.ray_conf if pred.ray_conf is not None else resample_to_grid(pred.conf, (hr, wr), method="nearest")
        d, c = d[:, ::stride, ::stride], np.asarray(c)[:, ::stride, ::stride]
        return points_from_rays(pred.rays[:, ::stride, ::stride], d), c, d
    d = pred.depth[:, ::stride, ::stride]
    c = pred.conf[:, ::stride, ::stride]
    K = np.array(pred.intrinsics, dtype=np.float64, copy=True)
    K[:, :2, :] /= stride
    return unproject_depth(d, K, pred.world_from_cam), c, d
