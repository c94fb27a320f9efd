"""A SIMULATOR of Depth Anything 3's outputs and error modes, driven by ground truth.

:class:`SimulatedPredictor` is **not a model**: it never looks at pixels. It
looks up the ground truth of the frames in a window by ``FrameBatch.indices``
and degrades it with seeded, named error modes (:class:`SimParams`) chosen to
resemble what DA3 gets wrong:

- every window lives in its own random gauge (a Sim(3) of the world: rotation,
  translation and a log-uniform scale), like DA3's arbitrary chunk frame;
- depth is good but not perfect: multiplicative noise growing with depth,
  split into a smooth low-frequency field and per-pixel noise, a small
  per-frame scale jitter, worse at image borders, in random blobs, at depth
  discontinuities ("flying pixels") and on the sky, plus rare wild outliers;
- camera poses are clearly less precise than depth: the geometry (depth +
  rays, like DA3's ray-derived cameras) is nearly exact, while the camera
  head's ``world_from_cam`` adds per-frame rotation and translation jitter and
  a random walk across the window;
- confidence ``1 + exp(.)`` (>= 1 like DA3) that falls where the error is larger;
- global descriptors: random Fourier features of the camera's place and
  heading, with controllable aliasing between places the world declares
  look-alike.

Output is bit-identical for the same window (same frame indices, same depth
grid) across calls, instances and processes: every random stream is seeded
from ``(seed, hash of the window's indices and grid)``, never from call order.

See docs/SIMULATOR.md for the error model, the defaults and their rationale.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from da3stream.alignment.lie import so3_exp
from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import FrameBatch, Prediction
from da3stream.errors import ConfigError, PredictionError, check_shape

logger = logging.getLogger(__name__)

DepthFn = Callable[[np.ndarray, np.ndarray, tuple], np.ndarray]
"""(indices (N,), intrinsics (N, 3, 3) for the grid, (h, w)) -> (N, h, w) float32 z-depth (inf = nothing hit)."""
SkyFn = Callable[[np.ndarray, np.ndarray, tuple], np.ndarray]
"""Same arguments as :data:`DepthFn` -> (N, h, w) bool, True where the ray sees the sky/backdrop."""


@dataclass(frozen=True)
class SimParams:
    """Error model of :class:`SimulatedPredictor`. Every mode is off when its magnitude is 0."""

    # --- gauge -------------------------------------------------------------
    gauge: str = "random"
    """Chunk frame of each window: "random" (random Sim(3) of the world), "first_frame" (the window's first predicted camera is the identity, random scale) or "identity" (world frame, scale 1)."""
    gauge_scale_range: tuple = (0.3, 3.0)
    """Per-window scale is log-uniform in this range (random and first_frame gauges)."""
    gauge_translation_std: float = 3.0
    """Std of each component of the random gauge's translation, in chunk units."""

    # --- depth ---------------------------------------------------------------
    depth_noise_rel: float = 0.01
    """Relative depth error std at zero depth (the ``a`` of sigma = a + b * depth)."""
    depth_noise_rel_per_m: float = 0.001
    """Growth of the relative depth error std per metre of true depth (the ``b``)."""
    depth_noise_correlated: float = 0.6
    """Fraction of the depth error variance in a smooth low-frequency field (the rest is per pixel)."""
    depth_noise_shared: float = 0.8
    """Fraction of the smooth field's variance that depends on the frame only (the same in every window: content-driven bias); the rest is redrawn per window."""
    depth_noise_cells: int = 4
    """Cells of the low-frequency field across the longer image side."""
    depth_frame_scale_std: float = 0.002
    """Std of a per-frame log-scale jitter of depth inside a window."""
    border_fraction: float = 0.04
    """Width of the image-border band, as a fraction of the longer side, where depth is worse."""
    border_noise_gain: float = 3.0
    """Multiplier of the depth error std inside the border band."""
    blob_rate: float = 1.0
    """Mean number (Poisson) of low-confidence elliptic blobs per frame."""
    blob_radius_fraction: float = 0.08
    """Typical blob radius as a fraction of the longer side (drawn from 0.5x to 1.5x)."""
    blob_noise_gain: float = 5.0
    """Multiplier of the depth error std inside blobs."""
    edge_log_threshold: float = 0.15
    """A pixel is on a depth discontinuity when its log-depth differs from a 4-neighbour by more than this; 0 disables flying pixels."""
    sky_noise_rel: float = 0.3
    """Relative depth error std on sky/backdrop pixels."""
    sky_depth_factor: float = 2.0
    """Pixels whose ray hits nothing get this times the window's largest finite depth."""
    outlier_fraction: float = 0.002
    """Fraction of pixels whose depth is wildly wrong."""
    outlier_log_range: float = 1.0
    """Outlier depth is multiplied by exp(U(-r, r)) with r this value (excluding |log| < r/4)."""

    # --- confidence ------------------------------------------------------------
    conf_log_base: float = 2.3
    """log(conf - 1) where the depth error std equals ``depth_noise_rel``."""
    conf_slope: float = 1.0
    """How fast log(conf - 1) falls with log(expected error / depth_noise_rel)."""
    conf_noise: float = 0.3
    """Std of per-pixel noise on log(conf - 1)."""
    edge_conf_drop: float = 2.0
    """Subtracted from log(conf - 1) on depth discontinuities."""
    outlier_conf_drop: float = 1.5
    """Subtracted from log(conf - 1) on outliers (low-ish, not always the lowest)."""
    sky_conf_log: float = -2.0
    """log(conf - 1) on sky/backdrop pixels."""

    # --- camera poses and intrinsics -------------------------------------------
    # Two pose estimates, as in DA3: the geometry (what depth + rays encode; DA3's
    # ray-derived cameras) is precise, the camera head's ``world_from_cam`` is not.
    # Errors: independent per-frame jitter plus a random walk that grows outward
    # from the window's middle frame; translation std is relative to the window's
    # extent (diagonal of the true camera centres' bounding box), with a floor
    # relative to the median true depth for windows that barely move.
    geom_rot_jitter_deg: float = 0.03
    """Geometry (ray) pose: per-frame rotation error std per axis, degrees."""
    geom_rot_walk_deg: float = 0.005
    """Geometry (ray) pose: rotation random-walk step std per axis per frame, degrees."""
    geom_trans_jitter_rel: float = 0.001
    """Geometry (ray) pose: per-frame camera-centre error std per axis, relative to the window's extent."""
    geom_trans_floor_rel_depth: float = 0.0005
    """Geometry (ray) pose: floor of the camera-centre error std as a fraction of the median true depth."""
    pose_rot_jitter_deg: float = 0.7
    """Camera head (``world_from_cam``) on top of the geometry: per-frame rotation error std per axis, degrees."""
    pose_rot_walk_deg: float = 0.2
    """Camera head: rotation random-walk step std per axis per frame, degrees."""
    pose_trans_jitter_rel: float = 0.008
    """Camera head: per-frame camera-centre error std per axis, relative to the window's extent."""
    pose_trans_walk_rel: float = 0.004
    """Camera head: camera-centre random-walk step std per axis per frame, relative to the window's extent."""
    pose_trans_floor_rel_depth: float = 0.0015
    """Camera head: floor of the camera-centre error std as a fraction of the median true depth."""
    focal_noise_rel: float = 0.003
    """Std of a per-window log-error of the focal length (principal point exact)."""

    # --- descriptors -------------------------------------------------------------
    with_descriptors: bool = True
    """Emit (N, D) float32 L2-normalised global descriptors."""
    descriptor_dim: int = 256
    """Descriptor length D."""
    desc_place_sigma_m: float = 2.0
    """Camera-position distance (metres) at which descriptor similarity falls to exp(-1/2)."""
    desc_heading_sigma_deg: float = 25.0
    """Viewing-direction difference (degrees, roughly) at which similarity falls to exp(-1/2)."""
    desc_aliasing: float = 0.9
    """Weight (0..1) of the "look-alike" part: places the world folds together get cosine ~ this."""
    desc_noise: float = 0.15
    """Relative norm of isotropic noise added before normalisation."""
    alias_hallucination: bool = False
    """Windows made of separate runs of frames (a loop-verification window) taken at look-alike places are predicted as ONE place: each run is moved by whole repetitions of the world (``GroundTruth.alias_translation``) onto the first run, as a network fooled by repeated structure would (depth is unchanged: the geometry repeats)."""
    alias_run_gap_frames: int = 60
    """Index gap that separates two runs of a window for ``alias_hallucination`` (larger than any keyframe gap)."""

    # --- optional outputs -------------------------------------------------------------
    with_rays: bool = True
    """Emit DA3-style rays (N, hr, wr, 6) = [origin, direction] from the geometry pose: point = origin + depth * direction."""
    ray_grid_ratio: float = 1.0
    """Ray grid size relative to the depth grid (1: same grid; DA3's own ray map is 8/14)."""
    with_metric_depth: bool = False
    """Emit metric depth (metres) with the same relative noise and a per-window scale error."""
    metric_scale_std: float = 0.05
    """Std of the per-window log-scale error of metric depth."""
    with_sky: bool = True
    """Emit the (N, h, w) bool sky mask of backdrop pixels."""

    def __post_init__(self) -> None:
        if self.gauge not in ("random", "first_frame", "identity"):
            raise ConfigError(f"SimParams.gauge must be random, first_frame or identity, got {self.gauge!r}")
        lo, hi = self.gauge_scale_range
        if not (0 < lo <= hi):
            raise ConfigError(f"SimParams.gauge_scale_range must satisfy 0 < lo <= hi, got {self.gauge_scale_range}")
        if not 0.0 <= self.depth_noise_correlated <= 1.0:
            raise ConfigError(f"SimParams.depth_noise_correlated must be in [0, 1], got {self.depth_noise_correlated}")
        if not 0.0 <= self.desc_aliasing <= 1.0:
            raise ConfigError(f"SimParams.desc_aliasing must be in [0, 1], got {self.desc_aliasing}")
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ConfigError(f"SimParams.outlier_fraction must be in [0, 1), got {self.outlier_fraction}")
        if not 0.0 <= self.depth_noise_shared <= 1.0:
            raise ConfigError(f"SimParams.depth_noise_shared must be in [0, 1], got {self.depth_noise_shared}")
        if not 0.0 < self.ray_grid_ratio <= 1.0:
            raise ConfigError(f"SimParams.ray_grid_ratio must be in (0, 1], got {self.ray_grid_ratio}")
        if self.descriptor_dim < 2 or self.depth_noise_cells < 1:
            raise ConfigError("SimParams.descriptor_dim must be >= 2 and depth_noise_cells >= 1")
        for name in ("desc_place_sigma_m", "desc_heading_sigma_deg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"SimParams.{name} must be > 0")

    @staticmethod
    def exact(**overrides) -> "SimParams":
        """Every error mode off and the identity gauge: the prediction IS the ground truth."""
        base = dict(
            gauge="identity", depth_noise_rel=0.0, depth_noise_rel_per_m=0.0, depth_frame_scale_std=0.0,
            border_noise_gain=1.0, blob_rate=0.0, edge_log_threshold=0.0, sky_noise_rel=0.0,
            outlier_fraction=0.0, conf_noise=0.0, pose_rot_jitter_deg=0.0, pose_rot_walk_deg=0.0,
            pose_trans_jitter_rel=0.0, pose_trans_walk_rel=0.0, pose_trans_floor_rel_depth=0.0,
            geom_rot_jitter_deg=0.0, geom_rot_walk_deg=0.0, geom_trans_jitter_rel=0.0, geom_trans_floor_rel_depth=0.0,
            focal_noise_rel=0.0, desc_noise=0.0, metric_scale_std=0.0,
        )
        base.update(overrides)
        return SimParams(**base)

    def replace(self, **changes) -> "SimParams":
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What the simulator needs to know about a sequence (no rendering required)."""

    world_from_cam: np.ndarray
    """(F, 4, 4) float64 true camera poses, metres."""
    intrinsics: np.ndarray
    """(F, 3, 3) or (3, 3) float64 true intrinsics for ``image_hw``."""
    image_hw: tuple
    """(H, W) of the source images."""
    depth_fn: DepthFn = field(repr=False)
    """True z-depth on any grid: see :data:`DepthFn`."""
    sky_fn: Optional[SkyFn] = field(default=None, repr=False)
    """Sky/backdrop mask on any grid, or None (then: where depth is not finite)."""
    appearance_fn: Optional[Callable[[np.ndarray], np.ndarray]] = field(default=None, repr=False)
    """Maps world positions (M, 3) to look-alike coordinates (M, k), metric near each point (see World.appearance_position); None = identity."""
    alias_translation: Optional[np.ndarray] = None
    """(3,) translation (metres) under which the world repeats itself (e.g. one corridor segment), or None."""

    def __post_init__(self) -> None:
        P = np.asarray(self.world_from_cam, dtype=np.float64)
        check_shape("GroundTruth.world_from_cam", P, ("F", 4, 4), "f")
        K = np.asarray(self.intrinsics, dtype=np.float64)
        if K.ndim == 2:
            check_shape("GroundTruth.intrinsics", K, (3, 3), "f")
            K = np.broadcast_to(K, (P.shape[0], 3, 3))
        check_shape("GroundTruth.intrinsics", K, (P.shape[0], 3, 3), "f")
        if len(self.image_hw) != 2 or min(self.image_hw) < 1:
            raise ConfigError(f"GroundTruth.image_hw must be (H, W) > 0, got {self.image_hw}")
        if self.alias_translation is not None:
            v = np.asarray(self.alias_translation, dtype=np.float64).reshape(3)
            if not np.linalg.norm(v) > 0:
                raise ConfigError("GroundTruth.alias_translation must be a non-zero (3,) vector")
            object.__setattr__(self, "alias_translation", v)
        object.__setattr__(self, "world_from_cam", P)
        object.__setattr__(self, "intrinsics", K)
        object.__setattr__(self, "image_hw", (int(self.image_hw[0]), int(self.image_hw[1])))

    @property
    def n_frames(self) -> int:
        return int(self.world_from_cam.shape[0])


def scale_intrinsics(K: np.ndarray, from_hw: tuple, to_hw: tuple) -> np.ndarray:
    """Intrinsics (..., 3, 3) of an image resized from ``from_hw`` to ``to_hw`` with pixel centres aligned.

    Pixel ``(row v, column u)`` is centred at ``(u, v)``; resizing maps
    ``u' = (u + 0.5) * s - 0.5``, so ``f' = f * s`` and ``c' = (c + 0.5) * s - 0.5``.
    """
    K = np.asarray(K, dtype=np.float64)
    sy = to_hw[0] / from_hw[0]
    sx = to_hw[1] / from_hw[1]
    out = K.copy()
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return out


def da3_depth_hw(image_hw: tuple, process_res: int = 504, patch: int = 14) -> tuple[int, int]:
    """The depth grid DA3 would produce: longest side ``process_res``, both sides rounded to a multiple of ``patch``."""
    h, w = image_hw
    s = process_res / max(h, w)
    nh, nw = round(h * s), round(w * s)
    return (max(patch, int(np.floor(nh / patch + 0.5)) * patch), max(patch, int(np.floor(nw / patch + 0.5)) * patch))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q = q / np.linalg.norm(q)
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def pixel_rays(world_from_cam: np.ndarray, intrinsics: np.ndarray, u: np.ndarray, v: np.ndarray,
               dtype=np.float32) -> np.ndarray:
    """Ray directions ``R K^-1 [u, v, 1]`` (camera-z 1) for a pixel grid, in the frame of ``world_from_cam``.

    Args:
        world_from_cam: (N, 4, 4) poses.
        intrinsics: (3, 3) or (N, 3, 3).
        u, v: (w,) column and (h,) row coordinates of the grid's pixel centres.

    Returns:
        (N, h, w, 3) directions of ``dtype`` (one matrix product for all cameras).
    """
    P = np.asarray(world_from_cam, dtype=np.float64)
    n = P.shape[0]
    K_inv = np.broadcast_to(np.linalg.inv(np.asarray(intrinsics, dtype=np.float64)), (n, 3, 3))
    M = P[:, :3, :3] @ K_inv  # (N, 3, 3): pixel -> direction
    uu, vv = np.meshgrid(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))
    pix = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)], axis=1).astype(dtype)  # (h*w, 3)
    stacked = np.swapaxes(M, 1, 2).transpose(1, 0, 2).reshape(3, 3 * n).astype(dtype)  # [M_0^T ... M_{N-1}^T]
    dirs = pix @ stacked  # (h*w, 3N)
    return np.ascontiguousarray(dirs.reshape(uu.shape + (n, 3)).transpose(2, 0, 1, 3))


def _walk(gen: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) Gaussian random walk with unit steps, zero at the middle frame ``n // 2``."""
    w = np.concatenate([np.zeros((1, 3)), np.cumsum(gen.standard_normal((n - 1, 3)), axis=0)])
    return w - w[n // 2]


def _perturb(world_from_cam: np.ndarray, gen: np.random.Generator, extent: float, median_depth: float,
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


# random stream ids (part of every seed so streams never overlap)
_S_GAUGE, _S_POSE, _S_FOCAL, _S_DEPTH, _S_DESC, _S_METRIC, _S_DESC_BASIS, _S_SHARED = range(1, 9)


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
        self._desc_basis: dict = {}

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
        key = self._window_key(idx, hw)
        if self.params.gauge == "first_frame":
            median_depth = self._gt_depth(idx, hw)[1]
            return self._first_frame_gauge(self._noisy_poses(idx, key, median_depth)[1], key)
        return self._random_gauge(key)

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
        return self._predict(idx, hw, self._window_key(idx, hw))

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

    def _window_key(self, idx: np.ndarray, hw: tuple) -> tuple[int, int]:
        h = hashlib.blake2b(idx.astype("<i8").tobytes() + np.asarray(hw, dtype="<i8").tobytes(), digest_size=16).digest()
        return int.from_bytes(h[:8], "little"), int.from_bytes(h[8:], "little")

    def _rng(self, key: tuple, stream: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, key[0], key[1], stream, *extra])

    def _descriptor_basis(self, part: int, dim: int) -> tuple:
        """Random Fourier feature basis (W_place (D, dim), W_heading (D, 3), phase (D,)) of one descriptor part."""
        key = (part, dim)
        if key not in self._desc_basis:
            p = self.params
            gen = np.random.default_rng([self.seed, _S_DESC_BASIS, part, dim])
            D = p.descriptor_dim
            self._desc_basis[key] = (gen.standard_normal((D, dim)) / p.desc_place_sigma_m,
                                     gen.standard_normal((D, 3)) / np.radians(p.desc_heading_sigma_deg),
                                     gen.uniform(0.0, 2 * np.pi, D))
        return self._desc_basis[key]

    def _random_gauge(self, key: tuple) -> Sim3:
        p = self.params
        if p.gauge == "identity":
            return Sim3.identity()
        gen = self._rng(key, _S_GAUGE)
        lo, hi = p.gauge_scale_range
        s = float(np.exp(gen.uniform(np.log(lo), np.log(hi))))
        R = _random_rotation(gen)
        t = gen.standard_normal(3) * p.gauge_translation_std
        return Sim3(s, R, t)

    def _first_frame_gauge(self, noisy_world_from_cam: np.ndarray, key: tuple) -> Sim3:
        s = self._random_gauge(key).s
        R0 = noisy_world_from_cam[0, :3, :3]
        c0 = noisy_world_from_cam[0, :3, 3]
        return Sim3(s, R0.T, -s * (R0.T @ c0))

    def _gt_depth(self, idx: np.ndarray, hw: tuple):
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

    def _hallucinated(self, idx: np.ndarray) -> np.ndarray:
        """True poses (N, 4, 4) with each later run of frames moved by whole world repetitions onto the first run."""
        P = self.gt.world_from_cam[idx].copy()
        v = self.gt.alias_translation
        if v is None or idx.size < 2:
            return P
        order = np.argsort(idx, kind="stable")
        breaks = np.flatnonzero(np.diff(idx[order]) > self.params.alias_run_gap_frames) + 1
        runs = np.split(order, breaks)
        ref = P[runs[0], :3, 3].mean(axis=0)
        for run in runs[1:]:
            k = np.round(np.dot(P[run, :3, 3].mean(axis=0) - ref, v) / np.dot(v, v))
            P[run, :3, 3] -= k * v
        return P

    def _noisy_poses(self, idx: np.ndarray, key: tuple, median_depth: float) -> tuple[np.ndarray, np.ndarray]:
        """``(world_from_cam_geometry, world_from_cam_head)`` (N, 4, 4) in world metres (before the gauge)."""
        p = self.params
        P = self._hallucinated(idx) if p.alias_hallucination else self.gt.world_from_cam[idx]
        centres = P[:, :3, 3]
        extent = float(np.linalg.norm(centres.max(axis=0) - centres.min(axis=0)))
        gen = self._rng(key, _S_POSE)
        geom = _perturb(P, gen, extent, median_depth, p.geom_rot_jitter_deg, p.geom_rot_walk_deg,
                        p.geom_trans_jitter_rel, 0.0, p.geom_trans_floor_rel_depth)
        head = _perturb(geom, gen, extent, median_depth, p.pose_rot_jitter_deg, p.pose_rot_walk_deg,
                        p.pose_trans_jitter_rel, p.pose_trans_walk_rel, p.pose_trans_floor_rel_depth)
        return geom, head

    def _predict(self, idx: np.ndarray, hw: tuple, key: tuple) -> Prediction:
        p = self.params
        n = idx.size
        h, w = hw
        depth_gt, med, sky, K_grid = self._gt_depth(idx, hw)
        finite = np.isfinite(depth_gt) & (depth_gt > 0)
        if not np.all(finite):
            far = p.sky_depth_factor * (float(depth_gt[finite].max()) if np.any(finite) else 1.0)
            depth_gt = np.where(finite, depth_gt, np.float32(far)).astype(np.float32)
            sky = sky | ~finite

        geom, head = self._noisy_poses(idx, key, med)
        gauge = self._first_frame_gauge(head, key) if p.gauge == "first_frame" else self._random_gauge(key)
        chunk_from_cam = gauge.apply_pose(head)
        if p.gauge == "first_frame":
            chunk_from_cam[0] = np.eye(4)  # exact, as DA3 returns its reference view

        K = K_grid.copy()
        if p.focal_noise_rel > 0:
            f_scale = float(np.exp(self._rng(key, _S_FOCAL).standard_normal() * p.focal_noise_rel))
            K[:, 0, 0] *= f_scale
            K[:, 1, 1] *= f_scale

        depth = np.empty((n, h, w), dtype=np.float32)
        conf = np.empty((n, h, w), dtype=np.float32)
        metric = np.empty((n, h, w), dtype=np.float32) if p.with_metric_depth else None
        metric_scale = float(np.exp(self._rng(key, _S_METRIC).standard_normal() * p.metric_scale_std))
        border = self._border_mask(hw)
        for i in range(n):
            edges = self._edges(depth_gt[i]) if p.edge_log_threshold > 0 else None
            shared = np.random.default_rng([self.seed, _S_SHARED, int(idx[i]), h, w])
            log_err, conf_log = self._frame_noise(depth_gt[i], sky[i], border, edges, self._rng(key, _S_DEPTH, i), shared)
            src = depth_gt[i] if edges is None else self._flying_pixels(depth_gt[i], edges)
            rel = np.exp(log_err)
            np.multiply(src * rel, np.float32(gauge.s), out=depth[i])
            np.add(np.exp(conf_log), np.float32(1.0), out=conf[i])
            if metric is not None:
                np.multiply(src * rel, np.float32(metric_scale), out=metric[i])

        pred = Prediction(
            depth=depth, conf=conf, world_from_cam=chunk_from_cam, intrinsics=K,
            descriptors=self._descriptors(idx, key) if p.with_descriptors else None,
            metric_depth=metric, sky=sky.copy() if p.with_sky else None,
        )
        if p.with_rays:
            pred.rays, pred.ray_conf = self._rays(gauge.apply_pose(geom), K, hw, conf)
        return pred.validate(n)

    def _border_mask(self, hw: tuple) -> np.ndarray:
        h, w = hw
        band = self.params.border_fraction * max(h, w)
        v = np.arange(h)[:, None]
        u = np.arange(w)[None, :]
        dist = np.minimum(np.minimum(u, w - 1 - u), np.minimum(v, h - 1 - v))
        return dist < band

    def _smooth_field(self, gen: np.random.Generator, hw: tuple) -> np.ndarray:
        import cv2

        h, w = hw
        cells = self.params.depth_noise_cells
        cx = cells if w >= h else max(1, round(cells * w / h))
        cy = cells if h > w else max(1, round(cells * h / w))
        coarse = gen.standard_normal((cy + 1, cx + 1)).astype(np.float32)
        field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        std = float(field.std())
        return (field - np.float32(field.mean())) / np.float32(std if std > 0 else 1.0)

    def _frame_noise(self, depth_gt: np.ndarray, sky: np.ndarray, border: np.ndarray, edges: Optional[np.ndarray],
                     gen: np.random.Generator, shared_gen: np.random.Generator):
        """(log depth error (h, w) float64, log(conf - 1) (h, w)) for one frame.

        ``gen`` is this window's stream for the frame, ``shared_gen`` the frame's
        own stream (same in every window).
        """
        p = self.params
        f32 = np.float32
        h, w = depth_gt.shape
        sigma = f32(p.depth_noise_rel) + f32(p.depth_noise_rel_per_m) * depth_gt
        gain = np.where(border, f32(p.border_noise_gain), f32(1.0))
        n_blobs = int(gen.poisson(p.blob_rate)) if p.blob_rate > 0 else 0
        if n_blobs:
            v, u = np.ogrid[0:h, 0:w]
            for _ in range(n_blobs):
                cu, cv = gen.uniform(0, w), gen.uniform(0, h)
                ru, rv = gen.uniform(0.5, 1.5, size=2) * p.blob_radius_fraction * max(h, w)
                inside = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 < 1.0
                gain = np.where(inside, np.maximum(gain, f32(p.blob_noise_gain)), gain)
        sigma = np.where(sky, f32(p.sky_noise_rel), sigma * gain)
        c = p.depth_noise_correlated
        rho = p.depth_noise_shared
        field = f32(np.sqrt(rho)) * self._smooth_field(shared_gen, (h, w)) + f32(np.sqrt(1.0 - rho)) * self._smooth_field(gen, (h, w))
        pix = gen.standard_normal((h, w), dtype=f32)
        log_err = sigma * (f32(np.sqrt(c)) * field + f32(np.sqrt(1.0 - c)) * pix)
        log_err += f32(gen.standard_normal() * p.depth_frame_scale_std)
        ref = max(p.depth_noise_rel, 1e-4)
        conf_log = f32(p.conf_log_base) - f32(p.conf_slope) * np.log(np.maximum(sigma, f32(1e-4)) / f32(ref))
        conf_log += gen.standard_normal((h, w), dtype=f32) * f32(p.conf_noise)
        if p.outlier_fraction > 0:
            out = gen.uniform(size=(h, w)) < p.outlier_fraction
            n_out = int(out.sum())
            mag = gen.uniform(0.25, 1.0, size=n_out) * p.outlier_log_range * np.where(gen.uniform(size=n_out) < 0.5, -1, 1)
            log_err[out] = mag.astype(f32)
            conf_log[out] -= f32(p.outlier_conf_drop)
        if edges is not None:
            conf_log[edges] -= f32(p.edge_conf_drop)
        if np.any(sky):
            conf_log[sky] = f32(p.sky_conf_log) + gen.standard_normal(int(sky.sum()), dtype=f32) * f32(p.conf_noise)
        return log_err, conf_log

    def _edges(self, depth: np.ndarray) -> np.ndarray:
        ld = np.log(depth.astype(np.float64))
        edge = np.zeros(depth.shape, dtype=bool)
        dv = np.abs(np.diff(ld, axis=0)) > self.params.edge_log_threshold
        du = np.abs(np.diff(ld, axis=1)) > self.params.edge_log_threshold
        edge[1:] |= dv
        edge[:-1] |= dv
        edge[:, 1:] |= du
        edge[:, :-1] |= du
        return edge

    @staticmethod
    def _flying_pixels(depth: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Depth discontinuities get the 3x3 mean depth: points float between the surfaces, like DA3's."""
        import cv2

        blurred = cv2.blur(depth.astype(np.float32), (3, 3), borderType=cv2.BORDER_REPLICATE)
        return np.where(edges, blurred, depth).astype(np.float32)

    def _descriptors(self, idx: np.ndarray, key: tuple) -> np.ndarray:
        p = self.params
        P = self.gt.world_from_cam[idx]
        centre = P[:, :3, 3]
        fwd = P[:, :3, 2]
        look = centre if self.gt.appearance_fn is None else np.asarray(self.gt.appearance_fn(centre), dtype=np.float64)
        D = p.descriptor_dim
        norm = np.sqrt(2.0 / D)

        def rff(part, pos):
            Wp, Wf, b = self._descriptor_basis(part, pos.shape[1])
            return norm * np.cos(pos @ Wp.T + fwd @ Wf.T + b)

        a = p.desc_aliasing
        desc = np.sqrt(1.0 - a) * rff(0, centre) + np.sqrt(a) * rff(1, look.reshape(idx.size, -1))
        if p.desc_noise > 0:
            gen = self._rng(key, _S_DESC)
            desc = desc + gen.standard_normal(desc.shape) * (p.desc_noise / np.sqrt(D))
        desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return desc.astype(np.float32)

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
