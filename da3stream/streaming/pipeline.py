"""The streaming reconstruction loop: source -> keyframes -> windows -> predictor
-> Sim(3) alignment -> loop closure -> fused map -> Zarr store.

One pass, front to back. Every window is committed to the store before the
next one is aligned against it, so a run killed at any moment resumes from its
last committed window and produces the same trajectory as an uninterrupted
run: everything the next window depends on (the overlap frames' prediction,
the chunk table, the loop closer's index) is restored from the store, and
every random choice is seeded from (config seed, window id).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import cv2
import numpy as np

from da3stream.alignment.points import points_from_rays, resample_to_grid, sample_correspondences, unproject_depth
from da3stream.alignment.ray_pose import pose_from_rays
from da3stream.alignment.registration import (
    pose_based_estimate,
    quality_gate,
    register,
    transform_disagreement,
)
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.smoothing import blend_frame_poses
from da3stream.config import Config, load_config, to_dict
from da3stream.core.types import FrameBatch, Prediction, Predictor
from da3stream.errors import AlignmentError, ConfigError, Da3StreamError, PredictionError, StoreError
from da3stream.streaming.fusion import FusedPoints, empty_points, fuse_window
from da3stream.streaming.keyframes import KeyframeFilter
from da3stream.streaming.planner import is_out_of_memory, plan_window, set_process_res, shrink_chunk_size
from da3stream.io.sources import Frame, open_source, source_options
from da3stream.streaming.writer import AsyncWriter

log = logging.getLogger(__name__)

# chunk status codes written to chunks/status (see docs/STORE.md)
STATUS_OK = 0
STATUS_GATED = 1
STATUS_FIRST = 2
STATUS_NEW_SEGMENT = 3


@dataclass
class RunSummary:
    """What a run did; returned by :func:`reconstruct`."""

    store: str
    status: str = "running"
    n_read: int = 0
    n_keyframes: int = 0
    n_frames: int = 0
    n_chunks: int = 0
    n_gated: int = 0
    n_segments: int = 1
    n_loops: int = 0
    n_loop_candidates: int = 0
    n_points: int = 0
    n_skipped: int = 0
    chunk_size: int = 0
    overlap: int = 0
    resumed: bool = False
    model: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def new_frame_fraction(self) -> float:
        """Fraction of predicted frames that were new (not overlap re-predictions)."""
        predicted = self.timings.get("predicted_frames", 0)
        return float(self.n_frames) / predicted if predicted else 0.0


@dataclass
class _Carry:
    """The previous window's overlap frames: what the next window aligns against."""

    frames: list  # list[Frame]
    prediction: Optional[Prediction]
    chunk_id: int
    rows: np.ndarray  # store rows of these frames


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()  # the predict-ahead worker adds too

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + dt


def _model_info(predictor: Any) -> dict:
    """Model identity for the store: id, weight hash, whether the weights are random."""
    return {
        "id": str(getattr(predictor, "model_id", type(predictor).__name__)),
        "weights_sha256": getattr(predictor, "weights_sha256", None),
        "weights_random": bool(getattr(predictor, "weights_random", False)),
        "simulated": bool(getattr(predictor, "simulated", False)),
        "class": f"{type(predictor).__module__}.{type(predictor).__qualname__}",
    }


def _resolve_predictor(predictor: Optional[Predictor], cfg: Config) -> Predictor:
    if predictor is not None:
        if not callable(getattr(predictor, "predict", None)):
            raise ConfigError(f"predictor {type(predictor).__name__} has no predict(batch) method")
        return predictor
    if cfg.model.id is None:
        raise ConfigError("no predictor: pass predictor=..., set model.id, or use --model ID|DIR (or --demo)")
    from da3stream.core import load_predictor

    return load_predictor(
        cfg.model.id, device=cfg.model.device, dtype=cfg.model.dtype, process_res=cfg.model.process_res,
        process_res_method=cfg.model.process_res_method,
    )


class StreamingReconstructor:
    """One run of the engine over one source into one store. Use :func:`reconstruct`."""

    def __init__(
        self,
        source: Any,
        out: str | Path,
        *,
        predictor: Optional[Predictor],
        config: Any,
        resume: bool,
        progress: Optional[Callable[[dict], None]] = None,
        overwrite: bool = False,
        source_extra: Optional[dict] = None,
    ) -> None:
        self.cfg: Config = load_config(config)
        self.source_arg = source
        self.out = Path(out)
        if isinstance(source, (str, Path)):
            self._open_source().close()  # a bad source path fails in one line before any model is loaded
        self.predictor = _resolve_predictor(predictor, self.cfg)
        self.resume = resume
        self.progress = progress
        self.overwrite = overwrite
        self.source_extra = source_extra or {}
        self.timer = _Timer()
        self.store = None
        self.writer: Optional[AsyncWriter] = None
        self.summary = RunSummary(store=str(self.out), overlap=self.cfg.overlap, model=_model_info(self.predictor))
        # run state (restored from the store on resume)
        self.chunk_size: int = 0
        self.world_from_chunk: list[Sim3] = []
        self.segment = 0
        self.carry: Optional[_Carry] = None
        self.n_frames = 0  # committed frame rows
        self.n_points = 0
        self.frame_chunk_ids: list[np.ndarray] = []  # per chunk: (n_new,) chunk ids of its rows
        self.frame_chunk_from_cam: list[np.ndarray] = []  # per chunk: (n_new, 4, 4)
        self.carry_poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # chunk -> (rows, chunk_from_cam of carried frames)
        self.pending_source_rows: list[tuple[int, float, bool, int]] = []
        self._segment_reason = ""  # why the next window starts a new segment (set when a window is rejected)
        self._n_rejected_windows = 0
        self.orig_from_grid: Optional[np.ndarray] = None
        self.depth_hw: Optional[tuple[int, int]] = None
        self.image_hw: Optional[tuple[int, int]] = None
        self.loop_closer = None
        self.loops_disabled_reason: Optional[str] = None
        # known cameras (calibration, pose prior) for conditioned inference
        self.frame_K: Optional[np.ndarray] = None
        self.pose_prior = None
        self.prior_offset = 0.0
        if self.cfg.source.poses:
            from da3stream.io.sources.priors import PosePrior

            self.pose_prior = PosePrior.load(self.cfg.source.poses)
            if not _accepts_kwarg(self.predictor.predict, "world_from_cam"):
                raise ConfigError(f"{self.cfg.source.poses}: the predictor {type(self.predictor).__name__} cannot be conditioned on poses")
        self.ahead = None  # streaming/overlap.py PredictAhead while run() runs with predict_ahead
        self.planned_process_res: Optional[int] = None  # set when the memory planner lowers model.process_res
        if self.cfg.predict_ahead:
            from da3stream.streaming.overlap import SerializedPredictor

            self.predictor = SerializedPredictor(self.predictor)  # one forward at a time across threads
        from da3stream.alignment.registration_torch import resolve_align_device

        self.align_device = resolve_align_device(self.cfg.align.device, getattr(self.predictor, "device", "cpu"))

    # ------------------------------------------------------------------ setup
    def _open_source(self, start_index: int = 0):
        return open_source(self.source_arg, start_index=start_index, **source_options(self.cfg.source))

    def _make_loop_closer(self) -> None:
        if not self.cfg.loop.enabled:
            return
        from da3stream.streaming.loops.closer import LoopCloser

        self.loop_closer = LoopCloser(self.cfg.loop, self.cfg.align, self.predictor, seed=self.cfg.seed)

    def _create_store(self, source_desc: dict, pred: Prediction, image_hw: tuple[int, int]) -> None:
        from da3stream.io.store import RunStore

        cfg_dict = to_dict(self.cfg)
        cfg_dict["chunk_size"] = self.chunk_size  # the resolved value, so resume reproduces it
        desc_dim = None if pred.descriptors is None else int(pred.descriptors.shape[1])
        self.store = RunStore.create(
            self.out, config=cfg_dict, model=self.summary.model, source=source_desc, image_hw=image_hw,
            depth_hw=tuple(pred.depth.shape[1:]), descriptor_dim=desc_dim, save_rgb=self.cfg.store.save_rgb,
            save_conf=self.cfg.store.save_conf, compression_level=self.cfg.store.compression_level,
            pixel_cname=self.cfg.store.pixel_codec,
            overwrite=self.overwrite, attrs={"orig_from_grid": self.orig_from_grid.tolist(),
                                             "planned_process_res": self.planned_process_res},
        )

    # ------------------------------------------------------------------ prediction
    def _predict(self, frames: list[Frame]) -> Prediction:
        batch = FrameBatch(
            images=np.stack([f.image for f in frames]),
            indices=np.array([f.index for f in frames], np.int64),
            timestamps=np.array([f.timestamp for f in frames], np.float64),
        )
        kw = {}
        if self.pose_prior is not None:
            from da3stream.io.sources.priors import conditioning_kwargs

            kw = conditioning_kwargs(self.pose_prior, batch.timestamps, self.frame_K,
                                     max_diff=self.cfg.source.pose_max_diff, time_offset=self.prior_offset)
            self.timer.add("conditioned_windows", float(bool(kw)))
        t0 = time.perf_counter()
        pred = self.predictor.predict(batch, **kw)
        self.timer.add("predict", time.perf_counter() - t0)
        self.timer.add("predicted_frames", len(frames))
        if not isinstance(pred, Prediction):
            raise PredictionError(f"predictor returned {type(pred).__name__}, expected Prediction")
        _check_finite_cameras(pred, frames)
        pred.validate(len(frames))
        bad = ~np.isfinite(pred.depth) | ~np.isfinite(pred.conf)
        if bad.all():
            raise RejectedWindow(f"window of frames {frames[0].index}-{frames[-1].index}: no finite depth")
        self._poses_from_rays(pred, frames)
        if bad.any():
            n_bad = int(bad.sum())
            self.timer.add("nonfinite_depth_values", n_bad)
            log.warning("window of frames %d-%d: %d non-finite depth/conf values masked", frames[0].index, frames[-1].index, n_bad)
            pred.depth = np.where(bad, 0.0, pred.depth).astype(np.float32)
            pred.conf = np.where(bad, 0.0, pred.conf).astype(np.float32)
        return pred

    def _poses_from_rays(self, pred: Prediction, frames: list) -> None:
        """Replace the camera head's poses and intrinsics by those fitted to the ray map (align.pose_source)."""
        if pred.rays is None or self.cfg.align.pose_source == "head":
            return
        try:
            chunk_from_cam, K = pose_from_rays(pred.rays, tuple(pred.depth.shape[1:]), pred.ray_conf)
        except AlignmentError as exc:
            log.warning("window of frames %d-%d: poses from rays failed (%s); using the camera head", frames[0].index,
                        frames[-1].index, exc)
            return
        pred.world_from_cam = chunk_from_cam
        pred.intrinsics = K

    # ------------------------------------------------------------------ alignment
    def _overlap_points(self, pred: Prediction, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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

    def _sampling_stride(self, pred: Prediction) -> int:
        """Pixel stride that leaves about 16 candidates per correspondence kept (sampling stays cheap)."""
        n, h, w = pred.depth.shape
        want = 16 * self.cfg.align.max_points
        return max(1, int(np.sqrt(n * h * w / max(want, 1))))

    def _align(self, prev: Prediction, cur: Prediction, chunk_id: int) -> tuple[Optional[Sim3], dict]:
        """``prev_from_cur`` for two predictions of the same frames, with a quality record.

        Returns ``(None, quality)`` when no estimate is usable (the window starts a new segment).
        """
        a = self.cfg.align
        quality = {"inlier_ratio": 0.0, "residual": float("nan"), "scale": float("nan"),
                   "pose_disagreement": float("nan"), "status": STATUS_OK, "reason": "", "n_points": 0}
        try:
            pose_est = pose_based_estimate(prev.world_from_cam, cur.world_from_cam, prev.depth, cur.depth)
        except AlignmentError as exc:
            pose_est = None
            quality["pose_reason"] = str(exc)
        if a.mode == "poses":
            if pose_est is None:
                quality.update(status=STATUS_NEW_SEGMENT, reason="poses_degenerate")
                return None, quality
            quality.update(scale=pose_est.s)
            return pose_est, quality
        rng = np.random.default_rng([self.cfg.seed, chunk_id])
        try:
            stride = self._sampling_stride(prev)
            pts_a, conf_a, depth_a = self._overlap_points(prev, stride)
            pts_b, conf_b, depth_b = self._overlap_points(cur, stride)
            corr = sample_correspondences(
                pts_a, conf_a, depth_a, pts_b, conf_b, depth_b=depth_b,
                max_points=a.max_points, conf_quantile=a.conf_quantile, rng=rng,
            )
            quality["n_points"] = int(corr.dst.shape[0])
            result = (register if self.align_device == "cpu" else self._register_torch)(
                corr.dst, corr.src, corr.weight, corr.depth_dst, mode=a.mode, kernel=a.kernel,
                kernel_scale=a.kernel_scale, inlier_threshold=a.inlier_threshold, irls_iters=a.irls_iters,
                min_points=a.min_points, init=pose_est if a.mode == "scale" else None,
            )
        except AlignmentError as exc:
            reason = str(exc).split(":")[0][:60] or "degenerate"
            log.warning("chunk %d: registration failed (%s); falling back to camera poses", chunk_id, exc)
            if pose_est is None:
                quality.update(status=STATUS_NEW_SEGMENT, reason="degenerate")
                return None, quality
            quality.update(status=STATUS_GATED, reason="degenerate_overlap", scale=pose_est.s)
            return pose_est, quality
        disagreement = float("nan")
        if pose_est is not None:
            disagreement = transform_disagreement(result.dst_from_src, pose_est, corr.src, depth=corr.depth_dst)
        ok, reason = quality_gate(
            result, disagreement, min_inlier_ratio=a.min_inlier_ratio, max_residual=a.max_residual,
            scale_range=a.scale_range, max_pose_disagreement=a.max_pose_disagreement,
        )
        quality.update(inlier_ratio=result.inlier_ratio, residual=result.residual_median, scale=result.dst_from_src.s,
                       pose_disagreement=disagreement)
        if ok:
            return result.dst_from_src, quality
        if reason == "pose_disagreement":
            # registration is self-consistent but disagrees with the cameras: keep it, flag it
            quality.update(status=STATUS_GATED, reason=reason)
            return result.dst_from_src, quality
        log.warning("chunk %d: alignment gated (%s); falling back to camera poses", chunk_id, reason)
        if pose_est is None:
            quality.update(status=STATUS_NEW_SEGMENT, reason=reason)
            return None, quality
        quality.update(status=STATUS_GATED, reason=reason, scale=pose_est.s)
        return pose_est, quality

    def _register_torch(self, *args, **kwargs):
        """:func:`register` in torch on ``self.align_device`` (no host round trip per IRLS iteration)."""
        from da3stream.alignment.registration_torch import register_torch

        return register_torch(*args, device=self.align_device, **kwargs)

    # ------------------------------------------------------------------ per window
    def _grid_images(self, frames: list[Frame]) -> np.ndarray:
        h, w = self.depth_hw
        out = np.empty((len(frames), h, w, 3), np.uint8)
        for i, f in enumerate(frames):
            img = f.image
            out[i] = img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        return out

    def _orig_intrinsics(self, K_grid: np.ndarray) -> np.ndarray:
        return np.einsum("ij,njk->nik", self.orig_from_grid, K_grid)

    def _init_intrinsics_map(self, pred: Prediction, image_hw: tuple[int, int]) -> None:
        h, w = pred.depth.shape[1:]
        H, W = image_hw
        to_orig = getattr(self.predictor, "to_original_intrinsics", None)
        if callable(to_orig):
            K = pred.intrinsics[0]
            self.orig_from_grid = np.asarray(to_orig(K, image_hw), np.float64) @ np.linalg.inv(K)
        else:
            # pixel centres sit at integer coordinates (docs/CONVENTIONS.md): u = (u' + 0.5) * W / w - 0.5
            sx, sy = W / w, H / h
            self.orig_from_grid = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])

    def _process_window(self, frames: list[Frame], n_carry: int, source_desc: dict,
                        prediction: Optional[Callable[[], Prediction]] = None) -> None:
        """Predict (or take ``prediction()``, made ahead), align, fuse, loop-verify and commit one window."""
        chunk_id = len(self.world_from_chunk)
        pred = self._predict(frames) if prediction is None else prediction()
        if self.store is None:
            self.image_hw = frames[0].image.shape[:2]
            self.depth_hw = tuple(pred.depth.shape[1:])
            self._init_intrinsics_map(pred, self.image_hw)
            self._create_store(source_desc, pred, self.image_hw)
            self._make_loop_closer_for(pred)
        t0 = time.perf_counter()
        status = STATUS_FIRST if chunk_id == 0 else STATUS_OK
        quality = {"inlier_ratio": 1.0, "residual": 0.0, "scale": 1.0, "pose_disagreement": 0.0,
                   "status": status, "reason": "", "n_points": 0}
        prev_from_cur = None
        if chunk_id > 0 and n_carry > 0 and self.carry is not None and self.carry.prediction is not None:
            prev_from_cur, quality = self._align(self.carry.prediction, pred.subset(slice(0, n_carry)), chunk_id)
        if chunk_id == 0:
            world_from_this = Sim3.identity()
        elif prev_from_cur is not None:
            world_from_this = self.world_from_chunk[self.carry.chunk_id] @ prev_from_cur
        else:
            # new segment: continue from the last known camera so exports stay bounded
            self.segment += 1
            quality["status"] = STATUS_NEW_SEGMENT
            quality["reason"] = quality.get("reason") or self._segment_reason or "no_overlap"
            world_from_this = self._segment_start(pred, n_carry)
        self._segment_reason = ""
        self.timer.add("align", time.perf_counter() - t0)
        if quality["status"] == STATUS_GATED:
            self.summary.n_gated += 1

        new = slice(n_carry, len(frames))
        new_frames = frames[n_carry:]
        n_new = len(new_frames)
        chunk_from_cam_new = pred.world_from_cam[new]
        world_from_cam_new = world_from_this.apply_pose(chunk_from_cam_new)
        rows = np.arange(self.n_frames, self.n_frames + n_new, dtype=np.int64)
        rgb_new = self._grid_images(new_frames)

        t0 = time.perf_counter()
        f = self.cfg.fusion
        points = fuse_window(
            pred.depth[new], pred.conf[new], pred.intrinsics[new], chunk_from_cam_new, rgb_new,
            conf_quantile=f.conf_quantile, voxel_size=f.voxel_size, voxel_fraction_of_depth=f.voxel_fraction_of_depth,
            pixel_stride=f.pixel_stride, max_points=f.max_points_per_chunk,
        ) if n_new else empty_points()
        self.timer.add("fuse", time.perf_counter() - t0)

        self.world_from_chunk.append(world_from_this)
        if n_carry and prev_from_cur is not None:
            self.carry_poses[chunk_id] = (self.carry.rows.copy(), pred.world_from_cam[:n_carry].copy())

        # loop closure (before the commit, so its edges land with this window)
        t0 = time.perf_counter()
        loop_edges, new_world = self._loops(chunk_id, prev_from_cur, quality, rows, new_frames, rgb_new, pred, new,
                                            world_from_cam_new)
        self.timer.add("loop", time.perf_counter() - t0)

        # commit
        overlap = min(self.cfg.overlap, len(frames))
        carry_frames = frames[len(frames) - overlap:] if overlap else []
        carry_pred = pred.subset(slice(len(frames) - overlap, len(frames))) if overlap else None
        all_rows = np.concatenate([self.carry.rows, rows]) if (self.carry is not None and n_carry) else rows
        carry_rows = all_rows[len(all_rows) - overlap:] if overlap else np.zeros(0, np.int64)
        record = self._chunk_record(
            chunk_id, frames, n_carry, pred, new, rows, rgb_new, world_from_cam_new, world_from_this,
            prev_from_cur, quality, points, loop_edges, carry_frames, carry_pred, carry_rows,
        )
        self.frame_chunk_ids.append(np.full(n_new, chunk_id, np.int32))
        self.frame_chunk_from_cam.append(chunk_from_cam_new.copy())
        self.n_frames += n_new
        self.n_points += len(points)
        self.summary.n_points = self.n_points
        self.summary.n_chunks = chunk_id + 1
        self.summary.n_frames = self.n_frames
        store = self.store
        self.writer.submit(lambda: store.append_chunk(record))
        if new_world is not None:
            self.world_from_chunk = list(new_world)
            self._submit_pose_rewrite()
        self.carry = _Carry(carry_frames, carry_pred, chunk_id, carry_rows)
        if self.progress is not None:
            self.progress({"frames": n_new, "chunk": chunk_id, "status": quality["status"], "loops": self.summary.n_loops})

    def _segment_start(self, pred: Prediction, n_carry: int) -> Sim3:
        """world_from_chunk of a new segment: its first camera placed at the last known camera."""
        if not self.world_from_chunk:
            return Sim3.identity()
        last = self.world_from_chunk[-1]
        last_cam = self.frame_chunk_from_cam[-1][-1] if self.frame_chunk_from_cam and len(self.frame_chunk_from_cam[-1]) else np.eye(4)
        world_from_last_cam = last.apply_pose(last_cam)
        first_cam = pred.world_from_cam[min(n_carry, len(pred) - 1)]
        # world_from_chunk = world_from_last_cam * inv(chunk_from_first_cam), with the previous chunk's scale
        cam_from_chunk = np.linalg.inv(first_cam)
        R = world_from_last_cam[:3, :3] @ cam_from_chunk[:3, :3]
        t = world_from_last_cam[:3, :3] @ (last.s * cam_from_chunk[:3, 3]) + world_from_last_cam[:3, 3]
        return Sim3(last.s, R, t)

    def _make_loop_closer_for(self, pred: Prediction) -> None:
        if not self.cfg.loop.enabled or self.loop_closer is not None:
            return
        if pred.descriptors is None:
            self.loops_disabled_reason = "predictor gives no descriptors"
            log.info("loop closure disabled: the predictor gives no descriptors")
            return
        self._make_loop_closer()

    def _loops(self, chunk_id, prev_from_cur, quality, rows, new_frames, rgb_new, pred, new, world_from_cam_new):
        if self.loop_closer is None:
            return [], None
        lc = self.loop_closer
        if chunk_id == 0 or prev_from_cur is None:
            lc.add_node(chunk_id, self.world_from_chunk[chunk_id])
        else:
            lc.add_sequential_edge(
                self.carry.chunk_id, chunk_id, prev_from_cur, inlier_ratio=float(quality["inlier_ratio"]),
                residual=float(quality["residual"]) if np.isfinite(quality["residual"]) else 1.0,
                gated=quality["status"] != STATUS_OK,
            )
        if not len(new_frames):
            return [], None
        from da3stream.streaming.loops.closer import WindowContext

        ctx = WindowContext(
            chunk_id=chunk_id, rows=rows, indices=np.array([f.index for f in new_frames], np.int64),
            timestamps=np.array([f.timestamp for f in new_frames], np.float64),
            descriptors=None if pred.descriptors is None else pred.descriptors[new],
            world_from_cam=world_from_cam_new, images=rgb_new, prediction=pred.subset(new),
            fetch=self._fetch_frames, world_from_chunk=list(self.world_from_chunk),
        )
        update = lc.on_window(ctx)
        accepted = [e for e in update.edges if e.accepted]
        self.summary.n_loops += len(accepted)
        self.summary.n_loop_candidates += len(update.edges)
        return update.edges, update.world_from_chunk

    def _fetch_frames(self, rows: np.ndarray):
        """Stored data of committed frames, for loop verification."""
        from da3stream.streaming.loops.closer import FrameData

        rows = np.asarray(rows, np.int64)
        if rows.size and int(rows.max()) >= self.store.n_frames:
            self.writer.flush()  # only wait for the writer when a requested row is not committed yet
        table = self.store.frames_table(rows=rows)
        K_orig = table["intrinsics"]
        grid_from_orig = np.linalg.inv(self.orig_from_grid)
        return FrameData(
            images=self.store.rgb(rows),
            depth=self.store.depth(rows).astype(np.float32),
            conf=(self.store.conf(rows).astype(np.float32) if self.store.has_conf
                  else np.ones((len(rows),) + tuple(self.depth_hw), np.float32)),
            chunk_from_cam=table["chunk_from_cam"],
            intrinsics=np.einsum("ij,njk->nik", grid_from_orig, K_orig),
            chunk_id=table["chunk_id"],
            indices=table["index"],
            timestamps=table["timestamp"],
        )

    # ------------------------------------------------------------------ poses
    def derive_world_poses(self) -> np.ndarray:
        """(F, 4, 4) world_from_cam of every committed frame from the chunk table.

        Frames shared by two windows are cross-faded between the two windows'
        estimates so the trajectory does not jump where windows meet.
        """
        if not self.frame_chunk_from_cam:
            return np.zeros((0, 4, 4))
        chunk_ids = np.concatenate(self.frame_chunk_ids)
        chunk_from_cam = np.concatenate(self.frame_chunk_from_cam)
        out = np.empty_like(chunk_from_cam)
        for c, W in enumerate(self.world_from_chunk):
            sel = chunk_ids == c
            if sel.any():
                out[sel] = W.apply_pose(chunk_from_cam[sel])
        for c, (rows, carry_from_cam) in self.carry_poses.items():
            k = len(rows)
            if k == 0 or c >= len(self.world_from_chunk):
                continue
            pose_next = self.world_from_chunk[c].apply_pose(carry_from_cam)
            weights = (np.arange(k) + 1.0) / (k + 1.0)
            out[rows] = blend_frame_poses(out[rows], pose_next, weights)
        return out

    def _submit_pose_rewrite(self) -> None:
        table = np.stack([W.to_array() for W in self.world_from_chunk])
        poses = self.derive_world_poses()
        store = self.store
        self.writer.submit(lambda: store.rewrite_poses(table, poses))

    # ------------------------------------------------------------------ records
    def _chunk_record(self, chunk_id, frames, n_carry, pred, new, rows, rgb_new, world_from_cam_new, world_from_this,
                      prev_from_cur, quality, points: FusedPoints, loop_edges, carry_frames, carry_pred, carry_rows):
        from da3stream.io.store import ChunkRecord

        new_frames = frames[n_carry:]
        # the source log commits up to this window's last frame: frames read beyond it (left in the buffer by an
        # out-of-memory retry, or read while the window was predicted ahead) are logged with the window that
        # commits them, else a resume after this commit would take them for already processed and skip them
        last = frames[-1].index
        source_rows = [r for r in self.pending_source_rows if r[0] <= last]
        self.pending_source_rows = [r for r in self.pending_source_rows if r[0] > last]
        state_arrays = {"carry_rows": carry_rows.astype(np.int64),
                        "carry_indices": np.array([f.index for f in carry_frames], np.int64)}
        if carry_pred is not None:
            state_arrays.update(
                carry_depth=carry_pred.depth, carry_conf=carry_pred.conf,
                carry_world_from_cam=carry_pred.world_from_cam, carry_intrinsics=carry_pred.intrinsics,
            )
            if carry_pred.rays is not None:
                state_arrays["carry_rays"] = carry_pred.rays.astype(np.float32)
        if n_carry and chunk_id in self.carry_poses:
            carry_chunk_from_cam = self.carry_poses[chunk_id][1]
        else:
            carry_chunk_from_cam = np.zeros((0, 4, 4))
        return ChunkRecord(
            chunk_id=chunk_id,
            frame_index=np.array([f.index for f in new_frames], np.int64),
            frame_timestamp=np.array([f.timestamp for f in new_frames], np.float64),
            chunk_from_cam=pred.world_from_cam[new],
            world_from_cam=world_from_cam_new,
            intrinsics=self._orig_intrinsics(pred.intrinsics[new]),
            depth=pred.depth[new],
            conf=pred.conf[new],
            rgb=rgb_new if self.cfg.store.save_rgb else None,
            descriptors=None if pred.descriptors is None else pred.descriptors[new],
            frame_start=int(rows[0] - n_carry) if len(rows) else int(self.n_frames - n_carry),
            frame_stop=int(rows[-1] + 1) if len(rows) else int(self.n_frames),
            n_new=len(new_frames),
            world_from_chunk=world_from_this.to_array(),
            chunk_from_prev=(prev_from_cur.inverse().to_array() if prev_from_cur is not None else np.full(8, np.nan)),
            carry_rows=np.asarray(self.carry.rows if (self.carry is not None and n_carry) else np.zeros(0), np.int64),
            carry_chunk_from_cam=carry_chunk_from_cam,
            inlier_ratio=float(quality["inlier_ratio"]),
            residual=float(quality["residual"]),
            scale=float(quality["scale"]),
            pose_disagreement=float(quality["pose_disagreement"]),
            status=int(quality["status"]),
            flag_reason=str(quality.get("reason", "")),
            segment=self.segment,
            points_xyz=points.xyz,
            points_rgb=points.rgb,
            points_conf=points.conf,
            source_index=np.array([r[0] for r in source_rows], np.int64),
            source_timestamp=np.array([r[1] for r in source_rows], np.float64),
            source_kept=np.array([r[2] for r in source_rows], bool),
            source_skipped=np.array([r[3] for r in source_rows], np.int8),
            loop_edges=list(loop_edges),
            state=state_arrays,
            state_meta={"chunk_id": chunk_id, "segment": self.segment, "carry_chunk_id": chunk_id,
                        "chunk_size": self.chunk_size},
        )

    # ------------------------------------------------------------------ resume
    def _restore(self) -> tuple[set[int], int]:
        """Load run state from the store; return (carry source indices, last read source index)."""
        from da3stream.io.store import RunStore

        self.store = RunStore.open(self.out, mode="a")
        stored_cfg = self.store.config
        self.chunk_size = int(stored_cfg["chunk_size"])
        cfg_dict = to_dict(self.cfg)
        cfg_dict["chunk_size"] = self.chunk_size if self.cfg.chunk_size is None else self.cfg.chunk_size
        try:
            self.store.check_resume_compatible(cfg_dict, self._source_description_for_check())
        except BaseException:
            self.store.close()
            self.store = None
            raise
        frames = self.store.frames_table(descriptors=self.cfg.loop.enabled)
        chunks = self.store.chunks_table()
        self.n_frames = int(frames["index"].shape[0])
        self.n_points = int(self.store.committed.get("n_points", 0))
        n_chunks = int(chunks["world_from_chunk"].shape[0])
        self.world_from_chunk = [Sim3.from_array(a) for a in chunks["world_from_chunk"]]
        self.segment = int(chunks["segment"][-1]) if n_chunks else 0
        for c in range(n_chunks):
            sel = slice(int(chunks["frame_stop"][c]) - int(chunks["n_new"][c]), int(chunks["frame_stop"][c]))
            self.frame_chunk_ids.append(frames["chunk_id"][sel].astype(np.int32))
            self.frame_chunk_from_cam.append(frames["chunk_from_cam"][sel])
            carry = self.store.carry_poses(c)
            if carry is not None:
                self.carry_poses[c] = carry
        self.depth_hw = tuple(self.store.depth_hw)
        self.image_hw = tuple(self.store.image_hw)
        self.orig_from_grid = np.asarray(self.store.attrs_get("orig_from_grid"), np.float64)
        self.planned_process_res = self.store.attrs_get("planned_process_res")
        if self.planned_process_res is not None:  # the memory planner lowered the resolution: keep it
            set_process_res(self.predictor, int(self.planned_process_res))
        state, meta = self.store.read_state()
        self.chunk_size = int(meta.get("chunk_size", self.chunk_size))  # smaller after an out-of-memory retry
        self.summary.chunk_size = self.chunk_size
        carry_indices = set(int(i) for i in state.get("carry_indices", np.zeros(0, np.int64)))
        carry_pred = None
        if "carry_depth" in state:
            carry_pred = Prediction(
                depth=state["carry_depth"], conf=state["carry_conf"], world_from_cam=state["carry_world_from_cam"],
                intrinsics=state["carry_intrinsics"], rays=state.get("carry_rays"),
            )
        self.carry = _Carry([], carry_pred, int(meta.get("carry_chunk_id", n_chunks - 1)),
                            np.asarray(state.get("carry_rows", np.zeros(0)), np.int64))
        self._carry_order = [int(i) for i in state.get("carry_indices", np.zeros(0, np.int64))]
        src = self.store.source_table()
        last_read = int(src["index"][-1]) if src["index"].shape[0] else -1
        self.summary.n_read = int(src["index"].shape[0])
        self.summary.n_keyframes = int(src["kept"].sum()) if src["index"].shape[0] else 0
        self.summary.n_chunks = n_chunks
        self.summary.n_frames = self.n_frames
        self.summary.n_segments = self.segment + 1
        self.summary.resumed = True
        if self.cfg.loop.enabled and self.store.has_descriptors:
            self._make_loop_closer()
            loops = self.store.loop_edges(accepted_only=True)
            self.loop_closer.restore(
                chunk_rows=chunks, frame_rows=frames, loops=loops, world_from_chunk=list(self.world_from_chunk)
            )
            self.summary.n_loops = len(loops)
        return carry_indices, last_read

    def _source_description_for_check(self) -> dict:
        with self._open_source() as src:
            return self._source_description(src)

    def _source_description(self, src) -> dict:
        desc = dict(src.describe())
        desc.update(self.source_extra)
        self.frame_K = getattr(src, "intrinsics", None)
        if self.pose_prior is not None:
            self.prior_offset = self.pose_prior.time_offset_for(getattr(src, "time_origin", 0.0))
            desc["pose_prior"] = {**self.pose_prior.describe(), "time_offset": self.prior_offset,
                                  "max_diff": self.cfg.source.pose_max_diff}
        return desc

    # ------------------------------------------------------------------ main loop
    def run(self) -> RunSummary:
        t_start = time.perf_counter()
        carry_indices: set[int] = set()
        last_read = -1
        start_index = 0
        if self.resume and _creation_incomplete(self.out):
            # killed before the store existed (or while creating it): nothing was committed, start afresh
            log.warning("%s: nothing committed to resume from; starting a new run", self.out)
            _discard_incomplete_store(self.out)
            self.resume = False
        if self.resume:
            carry_indices, last_read = self._restore()
            start_index = min(carry_indices) if carry_indices else last_read + 1
        elif self.out.exists() and any(self.out.iterdir()) and not self.overwrite:
            raise StoreError(f"{self.out}: store already exists; pass --resume to continue it or choose another --out")
        self.writer = AsyncWriter(max_pending=2)
        if self.cfg.predict_ahead:
            from da3stream.streaming.overlap import PredictAhead

            self.ahead = PredictAhead(self, self.timer.add)
        kf_cfg = self.cfg.keyframes
        kf = KeyframeFilter(kf_cfg.thumb_size, kf_cfg.min_change, kf_cfg.max_skip) if kf_cfg.enabled else None
        status = "failed"
        interrupted = False
        try:
            with self._open_source(start_index) as src:
                source_desc = self._source_description(src)
                if self.store is not None:
                    self.store.set_status("running")
                    self.orig_from_grid = self.orig_from_grid
                buffer: list[Frame] = []
                n_carry = 0
                if self.resume and self.carry is not None:
                    resumed_carry: dict[int, Frame] = {}
                it = iter(src)
                skip_cursor = 0  # entries of src.skipped already in the source log
                last_kept_image: Optional[np.ndarray] = None  # for the scene-cut colour test
                t0 = time.perf_counter()
                for frame in it:
                    self.timer.add("read", time.perf_counter() - t0)
                    if self.resume and frame.index <= last_read:
                        if frame.index in carry_indices:
                            resumed_carry[frame.index] = frame
                            if kf is not None:
                                kf.prime(frame.image)  # the last carry frame is the last kept frame
                                last_kept_image = frame.image
                            if len(resumed_carry) == len(carry_indices):
                                self.carry.frames = [resumed_carry[i] for i in self._carry_order]
                                buffer = list(self.carry.frames)
                                n_carry = len(buffer)
                        t0 = time.perf_counter()
                        continue
                    skip_cursor = self._record_skipped(src, skip_cursor, frame.index, last_read)
                    if self.chunk_size == 0:
                        plan = plan_window(self.cfg, self.predictor, frame.image.shape[:2])
                        self.chunk_size = plan.chunk_size
                        if plan.process_res is not None:  # the budget cannot hold min_chunk_size views at full resolution
                            set_process_res(self.predictor, plan.process_res)
                            self.planned_process_res = plan.process_res
                        self.summary.chunk_size = self.chunk_size
                        if self.cfg.overlap >= self.chunk_size and self.chunk_size > 1:
                            raise ConfigError(f"overlap ({self.cfg.overlap}) must be smaller than chunk_size ({self.chunk_size})")
                    self.summary.n_read += 1
                    keep, cut = True, False
                    if kf is not None:
                        keep = kf.accept(frame.image)
                        cut = (keep and getattr(kf, "last_change", 0.0) > kf_cfg.cut_threshold and self.summary.n_keyframes > 0
                               and last_kept_image is not None
                               and _colour_change(last_kept_image, frame.image) > kf_cfg.cut_colour_threshold)
                        if keep:
                            last_kept_image = frame.image
                    if cut and len(buffer) > n_carry:
                        buffer, n_carry = self._flush_windows(buffer, n_carry, source_desc)
                        buffer, n_carry = [], 0
                        self.carry = None
                    elif cut:
                        buffer, n_carry = self._flush_windows(buffer, n_carry, source_desc)
                        buffer, n_carry = buffer[n_carry:], 0
                        self.carry = None
                    if cut:
                        self._segment_reason = "scene_cut"
                    self.pending_source_rows.append((frame.index, frame.timestamp, keep, 0))
                    if keep:
                        self.summary.n_keyframes += 1
                        buffer.append(frame)
                    while len(buffer) >= self.chunk_size and len(buffer) > n_carry:  # repeats only after an OOM retry
                        buffer, n_carry = self._run_window(buffer, n_carry, source_desc)
                    t0 = time.perf_counter()
                self._record_skipped(src, skip_cursor, None, last_read)
                buffer, n_carry = self._flush_windows(buffer, n_carry, source_desc)
            if self.store is None:
                from da3stream.errors import SourceError

                if self._n_rejected_windows:
                    raise PredictionError(f"{self._source_name()}: every window's prediction was rejected (non-finite output)")
                raise SourceError(f"{self._source_name()}: no frames could be read")
            if self.pending_source_rows:
                self.writer.flush()
                self.store.append_source_rows(self.pending_source_rows)
                self.pending_source_rows = []
            if self.world_from_chunk:
                self._submit_pose_rewrite()
            status = "complete"
        except KeyboardInterrupt:
            interrupted = True
            status = "interrupted"
            log.info("interrupted: stopping after the last committed window")  # the CLI says so in one line
        finally:
            try:
                if self.ahead is not None:
                    self.ahead.close()  # drops a window still in flight (not committed)
                    self.ahead = None
                if self.writer is not None:
                    self.writer.close()
            except BaseException:
                status = "failed"  # a queued write failed: the store stays at its last commit
                raise
            finally:
                if self.store is not None:
                    try:
                        self.store.set_status(status, timings=self._timings(t_start))
                    except StoreError as exc:
                        if status == "complete":
                            raise
                        log.info("%s: could not record the run status %r (%s)", self.out, status, exc)  # the first error is raised
                    finally:
                        self.store.close()
        self.summary.status = status
        self.summary.n_segments = self.segment + 1
        self.summary.timings = self._timings(t_start)
        if interrupted:
            raise KeyboardInterrupt
        return self.summary

    def _flush_windows(self, buffer: list[Frame], n_carry: int, source_desc: dict) -> tuple[list[Frame], int]:
        """Process every frame of ``buffer`` beyond the carry, and the window still in flight (predict-ahead)."""
        while len(buffer) > n_carry or (self.ahead is not None and self.ahead.pending is not None):
            if len(buffer) > n_carry:
                buffer, n_carry = self._run_window(buffer, n_carry, source_desc)
            else:
                buffer, n_carry = self.ahead.finish(buffer, n_carry, source_desc)
        return buffer, n_carry

    def _source_name(self) -> str:
        return str(self.source_arg) if isinstance(self.source_arg, (str, Path)) else "frame iterator"

    def _run_window(self, buffer: list[Frame], n_carry: int, source_desc: dict,
                    first_prediction: Optional[Callable[[], Prediction]] = None) -> tuple[list[Frame], int]:
        """Process ``buffer`` (retrying smaller on out-of-memory); return the next buffer and its carry count.

        With ``predict_ahead`` the window is handed to streaming/overlap.py, which calls back here with
        ``first_prediction``: the window's prediction made ahead, used by the first attempt only.
        """
        if self.ahead is not None and first_prediction is None:
            return self.ahead.run_window(buffer, n_carry, source_desc)
        while True:
            window = buffer[: max(self.chunk_size, n_carry + 1)]
            prediction, first_prediction = first_prediction, None
            try:
                self._process_window(window, n_carry, source_desc, prediction)
                break
            except RejectedWindow as exc:
                self._reject_window(window, n_carry, str(exc))
                return buffer[len(window):], 0  # no carry: the next window starts a new segment
            except Da3StreamError:
                raise
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not is_out_of_memory(exc):
                    raise
                smaller = shrink_chunk_size(self.chunk_size, self.cfg.overlap)
                if smaller >= self.chunk_size:
                    raise PredictionError(
                        f"out of memory with a window of {len(window)} frames, the smallest this overlap "
                        f"({self.cfg.overlap}) allows; lower overlap, model.process_res or use a smaller model"
                    ) from None
                log.warning("out of memory with %d frames; retrying with chunk_size=%d", self.chunk_size, smaller)
                self.chunk_size = smaller
                self.summary.chunk_size = smaller
                self.timer.add("oom_retries", 1)
            _free_accelerator_memory()  # outside the except block: the traceback no longer pins tensors
        rest = buffer[len(window):]
        overlap = min(self.cfg.overlap, len(window))
        carry = window[len(window) - overlap:] if overlap else []
        return carry + rest, len(carry)

    def _record_skipped(self, src, cursor: int, before: Optional[int], last_read: int) -> int:
        """Append the source's skipped frames with index < ``before`` (all for None) to the source log.

        Frames at or below ``last_read`` were logged before a resume. Returns the new cursor into ``src.skipped``.
        """
        skipped = getattr(src, "skipped", [])
        while cursor < len(skipped) and (before is None or skipped[cursor][0] < before):
            index, reason = skipped[cursor]
            cursor += 1
            if index > last_read:
                self.pending_source_rows.append((int(index), float("nan"), False, _skip_code(reason)))
                self.summary.n_skipped += 1
        return cursor

    def _reject_window(self, window: list[Frame], n_carry: int, reason: str) -> None:
        """Drop a window whose prediction is unusable: log its new frames as skipped; the next window starts a new segment."""
        from da3stream.io.store import SkipReason

        new = {f.index for f in window[n_carry:]}
        code = int(SkipReason.PREDICTION_REJECTED)
        self.pending_source_rows = [(i, t, False, code) if i in new else (i, t, k, r)
                                    for i, t, k, r in self.pending_source_rows]
        log.warning("%s; the window's %d new frames are skipped and the next window starts a new segment", reason, len(new))
        self.summary.n_skipped += len(new)
        self.summary.n_keyframes -= len(new)
        self._n_rejected_windows += 1
        self.timer.add("rejected_windows", 1)
        self.carry = None
        self._segment_reason = "previous_window_rejected"

    def _timings(self, t_start: float) -> dict:
        out = {k: round(v, 4) for k, v in self.timer.seconds.items()}
        out["total"] = round(time.perf_counter() - t_start, 4)
        if self.writer is not None:
            out["write_busy"] = round(self.writer.busy_seconds, 4)
            out["write_wait"] = round(self.writer.wait_seconds, 4)
        return out


class RejectedWindow(PredictionError):
    """A window's prediction is unusable as a whole (non-finite cameras, no finite depth); the run goes on without it."""


def _check_finite_cameras(pred: Prediction, frames: list[Frame]) -> None:
    """Raise :class:`RejectedWindow` when camera poses or intrinsics hold NaN/inf (after the shape checks pass)."""
    arrays = {name: getattr(pred, name) for name in ("world_from_cam", "intrinsics")}
    if all(isinstance(a, np.ndarray) and a.dtype.kind == "f" and np.all(np.isfinite(a)) for a in arrays.values()):
        return
    placeholders = {k: (np.zeros_like(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a) for k, a in arrays.items()}
    dataclasses.replace(pred, **placeholders).validate(len(frames))  # a shape or dtype violation still raises
    names = ", ".join(k for k, a in arrays.items() if not np.all(np.isfinite(a)))
    raise RejectedWindow(f"window of frames {frames[0].index}-{frames[-1].index}: predicted {names} contain NaN or inf")


def _creation_incomplete(out: Path) -> bool:
    """True when ``out`` holds no store a run could resume: missing, empty, or a creation that was killed.

    Only directories that are certainly ours qualify: nothing but the writer lock file, or a root
    ``zarr.json`` with the da3stream format name but no format version (written last at creation).
    """
    import json

    from da3stream.io.store.layout import FORMAT_NAME
    from da3stream.io.store.zarr_util import LOCK_NAME

    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if all(p.name == LOCK_NAME for p in out.iterdir()):
        return True
    try:
        doc = json.loads((out / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attrs, dict) and attrs.get("format") == FORMAT_NAME and "format_version" not in attrs


def _discard_incomplete_store(out: Path) -> None:
    """Remove what a killed store creation left (see :func:`_creation_incomplete`), unless a writer holds it."""
    import shutil

    from da3stream.io.store.zarr_util import WriterLock

    if not out.exists():
        return
    lock = WriterLock(out)
    if not lock.acquire():
        raise StoreError(f"{out}: another process is writing this store")
    try:
        shutil.rmtree(out)
    except OSError as exc:
        raise StoreError(f"{out}: cannot remove the incomplete store ({exc.strerror or exc})") from None
    finally:
        lock.release()


CUT_HIST_BINS = (8, 4, 4)
"""Hue x saturation x value bins of the scene-cut colour histogram (value keeps grey video testable)."""


def _colour_change(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance (0 same .. 1 disjoint) between the HSV histograms of two ``(H, W, 3) uint8`` RGB images.

    Motion inside one scene moves pixels but keeps their colours; a hard cut replaces them.
    """
    hists = [cv2.calcHist([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2HSV)], [0, 1, 2], None,
                          list(CUT_HIST_BINS), [0, 180, 0, 256, 0, 256]) for im in (a, b)]
    return float(cv2.compareHist(hists[0], hists[1], cv2.HISTCMP_BHATTACHARYYA))


def _skip_code(reason: str) -> int:
    """``source/skipped_reason`` code of a source's skip message (wrong-size frames are invalid, the rest undecodable)."""
    from da3stream.io.store import SkipReason

    return int(SkipReason.INVALID if "aspect ratio" in reason else SkipReason.DECODE_ERROR)


def _accepts_kwarg(fn: Callable, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def reconstruct(
    source: Any,
    out: str | Path,
    *,
    predictor: Optional[Predictor] = None,
    config: Any = None,
    resume: bool = False,
    progress: Optional[Callable[[dict], None]] = None,
    overwrite: bool = False,
) -> RunSummary:
    """Reconstruct ``source`` into the Zarr store ``out``.

    Args:
        source: a video path, an image folder, or an iterable of frames.
        out: the store directory (created; must not exist unless ``resume``).
        predictor: any object with ``predict(FrameBatch) -> Prediction``; None loads ``config.model.id``.
        config: a YAML path, a nested dict of overrides, or a :class:`~da3stream.config.Config`.
        resume: continue the run in ``out`` from its last committed window.
        progress: called after every window with a small dict (frames, chunk, status, loops).
        overwrite: replace an existing store at ``out``.
    """
    runner = StreamingReconstructor(source, out, predictor=predictor, config=config, resume=resume,
                                    progress=progress, overwrite=overwrite)
    return runner.run()
