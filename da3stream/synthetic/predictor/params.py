"""The simulator's error model: :class:`SimParams`, a frozen config dataclass (one docstring per field).

It lives beside the simulator, not in :mod:`da3stream.config`, because the
config root is what the real network path may import and the simulator must
stay out of that path. It follows the same conventions (frozen, a docstring
under every field, :class:`~da3stream.errors.ConfigError` on bad values) and
loads from a mapping with the config tree's key checks through
:meth:`SimParams.from_mapping` (:func:`da3stream.config.build_dataclass`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from da3stream.config import build_dataclass
from da3stream.errors import ConfigError

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

    # --- honest modes (issue 11; all off by default, on in SimParams.honest()) ---------
    descriptor_source: str = "pose"
    """Where descriptors come from: "pose" (random Fourier features of the true pose; not honest) or "pixels" (a fixed random projection of each rendered image's colour thumbnail and gradient histogram: ``FrameBatch.images`` only)."""
    ray_origin_noise_rel: float = 0.0
    """Per-ray std of the ray origin's scatter around the camera centre, per axis, as a fraction of the median true depth."""
    ray_dir_noise_deg: float = 0.0
    """Per-ray std of the ray direction's angular error per axis, degrees (the direction is rescaled to camera-z 1 afterwards)."""
    geom_trans_walk_rel: float = 0.0
    """Geometry (ray) pose: camera-centre random-walk step std per axis per frame, relative to the window's extent (an intra-window drift the rays carry)."""
    depth_window_bias_std: float = 0.0
    """Std of a smooth log-depth bias field drawn per window (the same for every frame of the window, different in every window)."""
    depth_scale_walk_std: float = 0.0
    """Std of a per-frame log-depth-scale random-walk step inside a window (zero at the middle frame; not shared across windows)."""
    failed_block_prob: float = 0.0
    """Probability that a window has a failed sub-block: a contiguous run of frames whose poses and depth are badly wrong (confidence barely lower)."""
    failed_block_frames: tuple = (3, 8)
    """(min, max) length of a failed sub-block, frames (uniform; clipped to the window)."""
    failed_block_rot_deg: float = 4.0
    """Std per axis of the failed sub-block's common rotation error, degrees."""
    failed_block_trans_rel: float = 0.05
    """Std per axis of the failed sub-block's common camera-centre error, as a fraction of the median true depth."""
    failed_block_depth_log: float = 0.15
    """Std of the failed sub-block's common log-depth-scale error."""
    wrong_region_rate: float = 0.0
    """Mean number (Poisson) per frame of confidently wrong elliptic regions: depth off by a constant factor, confidence HIGH."""
    wrong_region_log_err: float = 0.25
    """Magnitude of the log-depth error inside a wrong region (sign random per region)."""
    wrong_region_conf_log: float = 2.8
    """log(conf - 1) inside a wrong region (above ``conf_log_base``: the network is sure)."""

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
        for name, lo, hi, closed_hi in _UNIT_RANGES:
            value = getattr(self, name)
            if not (lo <= value <= hi if closed_hi else lo <= value < hi):
                raise ConfigError(f"SimParams.{name} must be in [{lo:g}, {hi:g}{']' if closed_hi else ')'}, got {value}")
        if not 0.0 < self.ray_grid_ratio <= 1.0:
            raise ConfigError(f"SimParams.ray_grid_ratio must be in (0, 1], got {self.ray_grid_ratio}")
        if self.descriptor_source not in ("pose", "pixels"):
            raise ConfigError(f"SimParams.descriptor_source must be pose or pixels, got {self.descriptor_source!r}")
        if not 0.0 <= self.failed_block_prob <= 1.0:
            raise ConfigError(f"SimParams.failed_block_prob must be in [0, 1], got {self.failed_block_prob}")
        lo_f, hi_f = self.failed_block_frames
        if not 1 <= lo_f <= hi_f:
            raise ConfigError(f"SimParams.failed_block_frames must satisfy 1 <= min <= max, got {self.failed_block_frames}")
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

    @staticmethod
    def honest(**overrides) -> "SimParams":
        """Every honest error mode on (issue 11; docs/SIMULATOR.md lists each one and its magnitude).

        No output is a function of the true pose that a network could not
        compute from pixels: descriptors come from the pixels, rays carry
        per-ray noise on DA3's coarser ray grid (8/14 of the depth grid), depth
        errors are independent per window (nothing shared cancels in the
        overlap), the geometry drifts inside a window, and some windows have a
        failed sub-block and confidently wrong regions. Switch one mode off by
        overriding its field with the default, e.g. ``SimParams.honest(failed_block_prob=0.0)``.
        """
        base = dict(HONEST)
        base.update(overrides)
        return SimParams(**base)

    def replace(self, **changes) -> "SimParams":
        """A copy with some fields changed."""
        return replace(self, **changes)

    @staticmethod
    def from_mapping(data: Mapping[str, Any], path: str = "sim") -> "SimParams":
        """SimParams from a (YAML-style) mapping, with the config tree's unknown-key suggestions and type checks."""
        return build_dataclass(SimParams, data, path)


_UNIT_RANGES = (
    ("depth_noise_correlated", 0.0, 1.0, True),
    ("desc_aliasing", 0.0, 1.0, True),
    ("outlier_fraction", 0.0, 1.0, False),
    ("depth_noise_shared", 0.0, 1.0, True),
)
"""(field, low, high, high included) of the fractions :meth:`SimParams.__post_init__` checks."""


HONEST = {
    "descriptor_source": "pixels",
    "ray_grid_ratio": 8.0 / 14.0,
    "ray_origin_noise_rel": 0.01,
    "ray_dir_noise_deg": 0.3,
    "geom_rot_walk_deg": 0.03,
    "geom_trans_walk_rel": 0.002,
    "depth_noise_shared": 0.0,
    "depth_window_bias_std": 0.02,
    "depth_scale_walk_std": 0.002,
    "failed_block_prob": 0.15,
    "wrong_region_rate": 0.3,
}
"""Fields :meth:`SimParams.honest` changes from the defaults (the honest preset's magnitudes)."""
