"""A SIMULATOR of Depth Anything 3's outputs and error modes, driven by ground truth.

:class:`SimulatedPredictor` is **not a model**: it never looks at pixels
(except the honest preset's descriptors, computed from the batch's pixels). It
looks up the ground truth of the frames in a window by ``FrameBatch.indices``
and degrades it with seeded, named error modes (:class:`SimParams`) chosen to
resemble what DA3 gets wrong:

- every window lives in its own random gauge (a Sim(3) of the world: rotation,
  translation and a log-uniform scale), like DA3's arbitrary chunk frame
  (:mod:`.poses`);
- depth is good but not perfect: multiplicative noise growing with depth,
  split into a smooth low-frequency field and per-pixel noise, a small
  per-frame scale jitter, worse at image borders, in random blobs, at depth
  discontinuities ("flying pixels") and on the sky, plus rare wild outliers
  (:mod:`.noise`);
- camera poses are clearly less precise than depth: the geometry (depth +
  rays, like DA3's ray-derived cameras) is nearly exact, while the camera
  head's ``world_from_cam`` adds per-frame rotation and translation jitter and
  a random walk across the window (:mod:`.poses`);
- confidence ``1 + exp(.)`` (>= 1 like DA3) that falls where the error is larger;
- global descriptors: random Fourier features of the camera's place and
  heading, with controllable aliasing between places the world declares
  look-alike (:mod:`.descriptors`).

Output is bit-identical for the same window (same frame indices, same depth
grid) across calls, instances and processes: every random stream is seeded
from ``(seed, hash of the window's indices and grid)``, never from call order
(:mod:`.seeding`).

See docs/SIMULATOR.md for the error model, the defaults and their rationale.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Optional

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import FrameBatch, Prediction
from da3stream.errors import ConfigError, PredictionError, check_shape
from da3stream.synthetic.predictor import honest, noise, poses
from da3stream.synthetic.predictor.descriptors import DescriptorModel, pixel_descriptors
from da3stream.synthetic.predictor.params import SimParams
from da3stream.synthetic.predictor.seeding import S_DEPTH, S_FOCAL, S_METRIC, S_SHARED, window_key, window_rng
from da3stream.synthetic.predictor.truth import GroundTruth, da3_depth_hw, pixel_rays, scale_intrinsics

logger = logging.getLogger(__name__)


class SimulatedPredictor:
    """A :class:`~da3stream.core.types.Predictor` that simulates DA3 from ground truth (see the module doc).

    Args:
        source: a :class:`GroundTruth`, or any object with a ``ground_truth()``
            method returning one (e.g. :class:`~da3stream.synthetic.SyntheticSequence`).
        depth_hw: (h, w) of the predicted depth grid; None derives it from the
            batch's image size like DA3 at ``process_res`` (longest side 504,
            multiples of 14). Smaller grids are faster.
        params: the error model.
        seed: seeds every random stream together with the window's content.
        process_res: longest side of the default depth grid.
    """

    simulated = True
    weights_random = False
    weights_sha256 = None

    def __init__(self, source: Any, *, depth_hw: Optional[tuple] = None, params: SimParams = SimParams(),
                 seed: int = 0, process_res: int = 504) -> None:
        if isinstance(source, GroundTruth):
            gt = source
        elif callable(getattr(source, "ground_truth", None)):
            gt = source.ground_truth()
        else:
            raise ConfigError(f"SimulatedPredictor: source must be a GroundTruth or have ground_truth(), got {type(source).__name__}")
        if not isinstance(gt, GroundTruth):
            raise ConfigError(f"SimulatedPredictor: ground_truth() returned {type(gt).__name__}, not GroundTruth")
        if not isinstance(params, SimParams):
            raise ConfigError(f"SimulatedPredictor: params must be SimParams, got {type(params).__name__}")
        if depth_hw is not None and (len(depth_hw) != 2 or min(depth_hw) < 2):
            raise ConfigError(f"SimulatedPredictor: depth_hw must be (h, w) >= 2, got {depth_hw}")
        self.gt = gt
        self.params = params
        self.seed = int(seed)
        self.depth_hw = None if depth_hw is None else (int(depth_hw[0]), int(depth_hw[1]))
        self.process_res = int(process_res)
        self.model_id = f"simulated:seed{self.seed}"
        self._descriptors = DescriptorModel(params, self.seed)

    # ------------------------------------------------------------------ public

    def describe(self) -> dict:
        """JSON-safe description (kind, seed, depth grid, every SimParams field)."""
        return {"kind": "simulated", "model_id": self.model_id, "seed": self.seed,
                "depth_hw": None if self.depth_hw is None else list(self.depth_hw), "process_res": self.process_res,
                "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.params).items()}}

    def grid_hw(self, image_hw: tuple) -> tuple[int, int]:
        """The depth grid used for source images of ``image_hw``."""
        return self.depth_hw if self.depth_hw is not None else da3_depth_hw(image_hw, self.process_res)

    def window_gauge(self, indices: np.ndarray, image_hw: Optional[tuple] = None) -> Sim3:
        """The ``chunk_from_world`` Sim(3) the window with these source indices is predicted in.

        ``image_hw`` is the batch's image size (defaults to the ground truth's);
        it matters only when ``depth_hw`` is None. For the "first_frame" gauge
        it depends on the window's pose noise. With ``alias_hallucination`` it
        maps the true world of the window's first run of frames.
        """
        idx = self._check_indices(indices)
        hw = self.grid_hw(image_hw or self.gt.image_hw)
        key = window_key(idx, hw)
        if self.params.gauge == "first_frame":
            median_depth = self._gt_depth(idx, hw)[1]
            head = poses.noisy_poses(self.gt, self.params, self.seed, idx, key, median_depth)[1]
            head = honest.fail_poses(honest.failed_block(self.params, self.seed, key, idx.size), head, median_depth)
            return poses.first_frame_gauge(self.params, self.seed, key, head)
        return poses.random_gauge(self.params, self.seed, key)

    def predict(self, batch: FrameBatch) -> Prediction:
        """Simulated DA3 output for one window (see the class doc)."""
        if not isinstance(batch, FrameBatch):
            raise PredictionError(f"SimulatedPredictor.predict: expected a FrameBatch, got {type(batch).__name__}")
        idx = self._check_indices(batch.indices)
        img_hw = tuple(int(x) for x in batch.images.shape[1:3])
        gh, gw = self.gt.image_hw
        if abs(img_hw[1] / img_hw[0] - gw / gh) > 0.02 * (gw / gh):
            raise PredictionError(
                f"SimulatedPredictor: batch images are {img_hw[0]}x{img_hw[1]} but the ground truth is {gh}x{gw} (aspect differs)")
        hw = self.grid_hw(img_hw)
        return self._predict(idx, hw, window_key(idx, hw), batch.images)

    # ------------------------------------------------------------------ internals


    def _check_indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise PredictionError(f"SimulatedPredictor: indices must be a non-empty 1-D int array, got {idx.shape} {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.min() < 0 or idx.max() >= self.gt.n_frames:
            raise PredictionError(
                f"SimulatedPredictor: frame index {int(idx.max()) if idx.max() >= self.gt.n_frames else int(idx.min())} "
                f"outside the ground truth's {self.gt.n_frames} frames")
        return idx

    def _gt_depth(self, idx: np.ndarray, hw: tuple):
        """(true depth (N, h, w) float32, median scene depth, sky (N, h, w) bool, intrinsics of the grid (N, 3, 3))."""
        K_grid = scale_intrinsics(self.gt.intrinsics[idx], self.gt.image_hw, hw)
        depth = np.asarray(self.gt.depth_fn(idx, K_grid, hw), dtype=np.float32)
        check_shape("GroundTruth.depth_fn(...)", depth, (idx.size, hw[0], hw[1]), "f")
        if self.gt.sky_fn is not None:
            sky = np.asarray(self.gt.sky_fn(idx, K_grid, hw), dtype=bool)
        else:
            sky = ~np.isfinite(depth)
        finite = np.isfinite(depth) & (depth > 0)
        med = float(np.median(depth[finite & ~sky])) if np.any(finite & ~sky) else (
            float(np.median(depth[finite])) if np.any(finite) else 1.0)
        return depth, med, sky, K_grid

    def _predict(self, idx: np.ndarray, hw: tuple, key: tuple, images: Optional[np.ndarray] = None) -> Prediction:
        p = self.params
        depth_gt, med, sky, K_grid = self._gt_depth(idx, hw)
        finite = np.isfinite(depth_gt) & (depth_gt > 0)
        if not np.all(finite):
            far = p.sky_depth_factor * (float(depth_gt[finite].max()) if np.any(finite) else 1.0)
            depth_gt = np.where(finite, depth_gt, np.float32(far)).astype(np.float32)
            sky = sky | ~finite

        geom, head = poses.noisy_poses(self.gt, p, self.seed, idx, key, med)
        block = honest.failed_block(p, self.seed, key, idx.size)
        geom, head = honest.fail_poses(block, geom, med), honest.fail_poses(block, head, med)
        gauge = poses.window_gauge(p, self.seed, key, head)
        chunk_from_cam = gauge.apply_pose(head)
        if p.gauge == "first_frame":
            chunk_from_cam[0] = np.eye(4)  # exact, as DA3 returns its reference view

        K = K_grid.copy()
        if p.focal_noise_rel > 0:
            f_scale = float(np.exp(window_rng(self.seed, key, S_FOCAL).standard_normal() * p.focal_noise_rel))
            K[:, 0, 0] *= f_scale
            K[:, 1, 1] *= f_scale

        depth, conf, metric = self._degrade_depth(idx, key, depth_gt, sky, gauge.s, block)
        pred = Prediction(
            depth=depth, conf=conf, world_from_cam=chunk_from_cam, intrinsics=K,
            descriptors=self._window_descriptors(idx, key, images) if p.with_descriptors else None,
            metric_depth=metric, sky=sky.copy() if p.with_sky else None,
        )
        if p.with_rays:
            chunk_from_geom = gauge.apply_pose(geom)
            rays, pred.ray_conf = self._rays(chunk_from_geom, K, hw, conf)
            pred.rays = honest.perturb_rays(p, self.seed, key, rays, chunk_from_geom,
                                            p.ray_origin_noise_rel * med * gauge.s)
        return pred.validate(idx.size)

    def _window_descriptors(self, idx: np.ndarray, key: tuple, images: Optional[np.ndarray]) -> np.ndarray:
        """(N, D) descriptors: from the batch's pixels (``descriptor_source = "pixels"``) or from the pose model."""
        if self.params.descriptor_source == "pixels":
            if images is None or len(images) != idx.size:
                raise PredictionError("SimulatedPredictor: descriptor_source 'pixels' needs the batch's images")
            return pixel_descriptors(images, self.params.descriptor_dim, self.seed)
        return self._descriptors(self.gt, idx, key)

    def _degrade_depth(self, idx: np.ndarray, key: tuple, depth_gt: np.ndarray, sky: np.ndarray, gauge_scale: float,
                       block: Optional[dict] = None):
        """(depth, conf, metric depth or None), each (N, h, w) float32: the noise of :mod:`.noise`, frame by frame."""
        p = self.params
        n, h, w = depth_gt.shape
        depth = np.empty((n, h, w), dtype=np.float32)
        conf = np.empty((n, h, w), dtype=np.float32)
        metric = np.empty((n, h, w), dtype=np.float32) if p.with_metric_depth else None
        metric_scale = float(np.exp(window_rng(self.seed, key, S_METRIC).standard_normal() * p.metric_scale_std))
        border = noise.border_mask(p, (h, w))
        bias = honest.window_depth_bias(p, self.seed, key, n, (h, w))
        any_honest = bias is not None or block is not None or p.wrong_region_rate > 0
        for i in range(n):
            edges = noise.depth_edges(depth_gt[i], p.edge_log_threshold) if p.edge_log_threshold > 0 else None
            shared = np.random.default_rng([self.seed, S_SHARED, int(idx[i]), h, w])
            log_err, conf_log = noise.frame_noise(p, depth_gt[i], sky[i], border, edges,
                                                  window_rng(self.seed, key, S_DEPTH, i), shared)
            if any_honest:
                honest.add_depth_errors(p, self.seed, key, i, sky[i], log_err, conf_log, bias, block)
            src = depth_gt[i] if edges is None else noise.flying_pixels(depth_gt[i], edges)
            rel = np.exp(log_err)
            np.multiply(src * rel, np.float32(gauge_scale), out=depth[i])
            np.add(np.exp(conf_log), np.float32(1.0), out=conf[i])
            if metric is not None:
                np.multiply(src * rel, np.float32(metric_scale), out=metric[i])
        return depth, conf, metric

    def _rays(self, chunk_from_cam_geom: np.ndarray, K: np.ndarray, hw: tuple, conf: np.ndarray):
        """DA3-style rays ``(N, hr, wr, 6)`` [origin, direction] and their confidence ``(N, hr, wr)``.

        Cell ``(i, j)`` of the ray grid is centred at depth-grid coordinates
        ``((j + 0.5) w / wr - 0.5, (i + 0.5) h / hr - 0.5)``; its direction is
        ``R K^-1 [u, v, 1]`` (camera-z 1), so ``origin + z_depth * direction`` is the point.
        """
        import cv2

        h, w = hw
        hr = max(1, int(round(h * self.params.ray_grid_ratio)))
        wr = max(1, int(round(w * self.params.ray_grid_ratio)))
        u = (np.arange(wr, dtype=np.float64) + 0.5) * (w / wr) - 0.5
        v = (np.arange(hr, dtype=np.float64) + 0.5) * (h / hr) - 0.5
        n = chunk_from_cam_geom.shape[0]
        rays = np.empty((n, hr, wr, 6), dtype=np.float32)
        rays[..., 3:] = pixel_rays(chunk_from_cam_geom, K, u, v)
        rays[..., :3] = chunk_from_cam_geom[:, None, None, :3, 3].astype(np.float32)
        if (hr, wr) == (h, w):
            ray_conf = conf.copy()
        else:
            ray_conf = np.stack([cv2.resize(c, (wr, hr), interpolation=cv2.INTER_AREA) for c in conf]).astype(np.float32)
        return rays, ray_conf
