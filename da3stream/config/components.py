"""Config dataclasses of network components outside :class:`~da3stream.config.Config` (official defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoseConditioning:
    """Thresholds of the official pose normalisation and scale alignment (official defaults)."""

    min_pose_scale: float = 0.1
    """Lower clamp of the median camera distance that normalises known translations."""
    ransac_min_views: int = 10
    """From this many views on, the depth scale comes from a RANSAC Umeyama fit."""
    ransac_iters: int = 10
    """RANSAC iterations (each fits a Umeyama Sim(3) on half of the views)."""
    ransac_seed: int = 42
    """Seed of the RANSAC subset sampling."""
    min_spread: float = 1e-9
    """Variance of the caller's camera centres below which no scale is estimated (scale 1)."""
    rigid_tol: float = 1e-3
    """Max |R^T R - I| accepted for a caller's world_from_cam rotation."""


@dataclass(frozen=True)
class SkyParams:
    """Sky handling of the mono/metric models (official defaults)."""

    sky_threshold: float = 0.3
    """Pixels whose sky score is below this are not sky."""
    min_pixels: int = 10
    """Sky filling is skipped unless both classes have more pixels than this."""
    max_samples: int = 100_000
    """Quantiles are taken over at most this many random samples."""
    far_quantile: float = 0.99
    """Sky pixels get this quantile of the non-sky depth."""


@dataclass(frozen=True)
class MetricAlignParams:
    """How the nested model makes the any-view depth metric (official defaults)."""

    focal_reference: float = 300.0
    """Metric depth = raw metric-branch depth * mean(fx, fy) / this."""
    sky_threshold: float = 0.3
    """Pixels whose metric-branch sky score is below this are not sky."""
    min_non_sky_pixels: int = 10
    """Alignment needs more non-sky pixels than this."""
    conf_quantile: float = 0.5
    """Only pixels with depth confidence at least this quantile take part in the fit."""
    min_depth: float = 1e-3
    """Pixels with any-view depth at or below this are ignored."""
    min_metric_depth: float = 1e-2
    """Pixels with metric depth at or below this are ignored."""
    lstsq_eps: float = 1e-12
    """Floor of the least-squares denominator."""
    max_samples: int = 100_000
    """Quantiles are taken over at most this many random samples."""
    far_quantile: float = 0.99
    """Sky pixels get min(this quantile of non-sky depth, max_sky_depth)."""
    max_sky_depth: float = 200.0
    """Upper bound of the depth written into sky pixels."""


COMPONENT_CONFIGS = (PoseConditioning, SkyParams, MetricAlignParams)
"""Config dataclasses of network components outside :class:`Config` (see the module doc)."""
