"""Geometric verification of a loop candidate on a *loop window*.

A candidate pairs a query frame ``q`` of the current window ``j`` with a matched
frame ``m`` of an older window ``i``. The predictor runs once on a loop window:
up to ``2 window_half + 1`` frames around ``m`` (stored images, all from window
``i``) followed by as many around ``q``. Each half of the loop window is
registered against its own window's stored geometry with the same robust
estimator as the sequential alignment, giving ``loop_from_i`` and
``loop_from_j``; the loop measurement is ``i_from_j = loop_from_i^-1 loop_from_j``.
Both halves must pass the registration gates (inlier ratio, median residual,
agreement with the loop window's own camera poses); then the loop's agreement
with the trajectory is measured for the consistency gate
(:mod:`~da3stream.streaming.loops.consistency`).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Union

import numpy as np

from da3stream.alignment.points import resample_to_grid
from da3stream.alignment.registration import quality_gate, transform_disagreement
from da3stream.config import AlignConfig, LoopConfig
from da3stream.core.types import FrameBatch, Prediction, Predictor
from da3stream.errors import AlignmentError, Da3StreamError, ShapeError
from da3stream.io.store.records import LoopEdge
from da3stream.streaming.loops.consistency import Verified, measure
from da3stream.streaming.loops.graph import median_depth
from da3stream.streaming.loops.records import FrameData, WindowContext, canonical_sim3, unverified
from da3stream.streaming.overlap_fit import register_pair
from da3stream.streaming.stages.align import cameras_trusted
from da3stream.streaming.stages.cameras import poses_from_rays
from da3stream.streaming.planner import is_out_of_memory

log = logging.getLogger(__name__)

__all__ = ["LoopVerifier", "around"]

def around(center: int, lo: int, hi: int, half: int) -> np.ndarray:
    """Up to ``2 half + 1`` consecutive positions in ``[lo, hi)`` around ``center`` (shifted at the ends)."""
    size = min(2 * half + 1, hi - lo)
    start = min(max(center - half, lo), hi - size)
    return np.arange(start, start + size, dtype=np.int64)


class LoopVerifier:
    """Runs and checks loop windows (see the module docstring).

    Args:
        loop_cfg: the ``loop`` section of the config (window size, gates).
        align_cfg: the ``align`` section (registration parameters).
        predictor: runs the loop windows.
        seed: seeds the correspondence sampling.
    """

    def __init__(self, loop_cfg: LoopConfig, align_cfg: AlignConfig, predictor: Predictor, seed: int) -> None:
        self.cfg = loop_cfg
        self.align = align_cfg
        self.predictor = predictor
        self.seed = int(seed)
        self._no_images_logged = False

    def verify(self, ctx: WindowContext, base: dict, old_rows: np.ndarray, qi: int,
               travel: float) -> Union[LoopEdge, Verified]:
        """A rejected :class:`LoopEdge`, or a :class:`Verified` awaiting the consistency decision.

        Args:
            ctx: the current window.
            base: the candidate's chunk_i, chunk_j, frame_i, frame_j, similarity.
            old_rows: (k,) int64 store rows of the older frames of the loop window.
            qi: position of the query frame among the window's new frames.
            travel: travelled distance between the two frames.
        """
        chunk_i, c = base["chunk_i"], int(ctx.chunk_id)
        new_pos = around(qi, 0, len(ctx.rows), self.cfg.window_half)
        try:
            old = ctx.fetch(old_rows)
        except Da3StreamError as exc:
            log.warning("loop %d-%d: cannot read stored frames (%s)", chunk_i, c, exc)
            return unverified(base, "fetch_failed")
        if old.images is None:
            if not self._no_images_logged:
                log.warning("loop verification needs stored RGB (store.save_rgb); candidates are rejected")
                self._no_images_logged = True
            return unverified(base, "no_stored_images")
        loop_pred = self._predict(ctx, old, new_pos, base)
        if isinstance(loop_pred, LoopEdge):
            return loop_pred
        edge = self._register_halves(ctx, old, len(old_rows), new_pos, loop_pred, base)
        if edge.reason:
            return edge
        W_i, W_j = ctx.world_from_chunk[chunk_i], ctx.world_from_chunk[c]
        centre = np.asarray(ctx.prediction.world_from_cam[qi][:3, 3], dtype=np.float64)
        depth_q = median_depth(ctx.prediction.depth[qi]) * W_j.s
        return measure(edge, W_i, W_j, centre, depth_q, travel, self.cfg)

    def _predict(self, ctx: WindowContext, old: FrameData, new_pos: np.ndarray,
                 base: dict) -> Union[Prediction, LoopEdge]:
        """The loop window's prediction on the stored depth grid, or a rejected edge."""
        chunk_i, c = base["chunk_i"], int(ctx.chunk_id)
        grid = ctx.prediction.depth.shape[1:]
        images = np.concatenate([np.asarray(old.images, dtype=np.uint8), np.asarray(ctx.images)[new_pos]])
        batch = FrameBatch(
            images=images,
            indices=np.concatenate([np.asarray(old.indices, np.int64), np.asarray(ctx.indices, np.int64)[new_pos]]),
            timestamps=np.concatenate([np.asarray(old.timestamps, np.float64),
                                       np.asarray(ctx.timestamps, np.float64)[new_pos]]),
        )
        try:
            loop_pred = self.predictor.predict(batch)
            if not isinstance(loop_pred, Prediction):
                raise ShapeError(f"predictor returned {type(loop_pred).__name__}, expected Prediction")
            loop_pred = loop_pred.validate(len(batch))
            # the loop window's cameras from its rays, as every window's (stored poses came the same way)
            ends = [SimpleNamespace(index=int(batch.indices[0])), SimpleNamespace(index=int(batch.indices[-1]))]
            poses_from_rays(loop_pred, ends, self.align.pose_source)
            return _to_grid(loop_pred, grid)
        except Da3StreamError as exc:
            log.warning("loop %d-%d: loop window prediction failed (%s)", chunk_i, c, exc)
            return unverified(base, "predict_failed")
        except Exception as exc:  # noqa: BLE001 - only running out of memory is survivable here
            if not is_out_of_memory(exc):
                raise
            log.warning("loop %d-%d: out of memory on the loop window; candidate skipped", chunk_i, c)
            return unverified(base, "out_of_memory")

    def _register_halves(self, ctx: WindowContext, old: FrameData, k_old: int, new_pos: np.ndarray,
                         loop_pred: Prediction, base: dict) -> LoopEdge:
        """The loop measurement ``i_from_j`` (an edge with reason ``""``), or an edge rejected by a half's gate.

        The loop window's first ``k_old`` frames are the older window's, the rest the current window's."""
        c = int(ctx.chunk_id)
        cur = ctx.prediction.subset(new_pos)
        # Stored frames have no ray map: their points come from depth, intrinsics and pose.
        stored = Prediction(depth=np.asarray(old.depth, np.float32), conf=np.asarray(old.conf, np.float32),
                            world_from_cam=np.asarray(old.chunk_from_cam, np.float64),
                            intrinsics=np.asarray(old.intrinsics, np.float64))
        halves = ((slice(0, k_old), stored, 0), (slice(k_old, len(loop_pred)), cur, 1))
        trusted = cameras_trusted(self.align, loop_pred.rays is not None)
        results = []
        for sel, chunk_half, half in halves:
            result, reason = register_half(loop_pred.subset(sel), chunk_half,
                                           [self.seed, c, base["frame_i"], base["frame_j"], half],
                                           self.align, self.cfg, cameras_trusted=trusted)
            if reason:
                if result is None:
                    return unverified(base, reason)
                side = "old" if half == 0 else "new"
                return LoopEdge(i_from_j=None, inlier_ratio=result.inlier_ratio,
                                residual=result.residual_median, scale=result.dst_from_src.s, accepted=False,
                                reason=f"{reason}_{side}", **base)
            results.append(result)
        loop_from_i, loop_from_j = results[0].dst_from_src, results[1].dst_from_src
        i_from_j = canonical_sim3(loop_from_i.inverse() @ loop_from_j)
        inlier = min(r.inlier_ratio for r in results)
        residual = max(r.residual_median for r in results)
        return LoopEdge(accepted=False, reason="", i_from_j=i_from_j, inlier_ratio=inlier, residual=residual,
                        scale=i_from_j.s, **base)


def register_half(loop_half: Prediction, chunk_half: Prediction, seed_key, a: AlignConfig, cfg: LoopConfig, *,
                  cameras_trusted: bool):
    """``(result, reason)``: the ``loop_from_chunk`` registration of one half (the loop window's
    prediction of some frames against the same frames' prediction in their own window) and ``""``,
    or a rejection token (``result`` is None when no estimate exists).

    The same path as the sequential alignment (:func:`~da3stream.streaming.overlap_fit.register_pair`).
    """
    try:
        fit = register_pair(loop_half, chunk_half, a, np.random.default_rng(seed_key),
                            rotation_from_cameras=cameras_trusted)
    except AlignmentError as exc:
        log.debug("loop verification: registration failed (%s)", exc)
        return None, "degenerate"
    result = fit.result
    if not fit.kept_frames.all():
        # a failed sub-block inside the loop window: the frames left out may be the good ones (a block can hold
        # most of a half), so the loop measurement is not trusted
        return result, "failed_subblock"
    disagreement = float("nan")
    if fit.pose_est is not None:
        disagreement = transform_disagreement(result.dst_from_src, fit.pose_est, fit.corr.src, depth=fit.corr.depth_dst)
    # Each half's scale relates two arbitrary gauges (the loop window's and the stored window's), so
    # no range applies to it; the loop's scale is checked against the trajectory instead.
    ok, reason = quality_gate(
        result, disagreement, min_inlier_ratio=cfg.min_inlier_ratio, max_residual=cfg.max_residual,
        scale_range=(0.0, np.inf), max_pose_disagreement=a.max_pose_disagreement,
    )
    return result, ("" if ok else reason)


def _to_grid(pred: Prediction, grid: tuple) -> Prediction:
    """A prediction resampled onto the stored depth grid (intrinsics rescaled, half-pixel convention)."""
    h, w = pred.depth.shape[1:]
    H, W = int(grid[0]), int(grid[1])
    if (h, w) == (H, W):
        return pred
    sx, sy = W / w, H / h
    S = np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])
    return Prediction(
        depth=resample_to_grid(pred.depth, (H, W), method="nearest").astype(np.float32),
        conf=resample_to_grid(pred.conf, (H, W), method="nearest").astype(np.float32),
        world_from_cam=pred.world_from_cam,
        intrinsics=np.einsum("ij,njk->nik", S, pred.intrinsics),
        rays=pred.rays, ray_conf=pred.ray_conf,  # the ray map keeps its own grid
    )
