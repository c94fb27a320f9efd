"""Colourised previews of stored per-frame images (depth, confidence), for the viewer and the report."""

from __future__ import annotations

from typing import Optional

import numpy as np

from da3stream.errors import ConfigError, check_shape

__all__ = ["colorize", "colorize_conf", "colorize_depth", "fit_width"]

INVALID_RGB = (0, 0, 0)
"""Colour of pixels without a valid value (non-finite, or depth <= 0)."""


def colorize(values: np.ndarray, valid: np.ndarray, lo: float, hi: float, cmap: str) -> np.ndarray:
    """Map ``values`` in ``[lo, hi]`` through a matplotlib colour map.

    Args:
        values: (h, w) float values.
        valid: (h, w) bool; other pixels get :data:`INVALID_RGB`.
        lo, hi: the values mapped to the two ends of the map (clipped outside).
        cmap: matplotlib colour map name (e.g. ``"turbo"``, ``"viridis"``).

    Returns:
        (h, w, 3) uint8 RGB.
    """
    from matplotlib import colormaps

    check_shape("colorize(values)", values, ("h", "w"), "fiu")
    check_shape("colorize(valid)", valid, values.shape, "b")
    if cmap not in colormaps:  # an option value, not an array: ConfigError (a ValueError, like ShapeError was)
        raise ConfigError(f"colorize(cmap): unknown colour map {cmap!r}")
    x = np.asarray(values, dtype=np.float64)
    span = float(hi) - float(lo)
    t = (x - float(lo)) / span if span > 0 else np.zeros_like(x)
    t = np.clip(np.where(valid, t, 0.0), 0.0, 1.0)
    rgb = colormaps[cmap](t, bytes=True)[..., :3]
    return np.where(valid[..., None], rgb, np.asarray(INVALID_RGB, np.uint8)).astype(np.uint8)


def _range(x: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    if not valid.any():
        return 0.0, 1.0
    lo, hi = np.percentile(x[valid], percentiles)
    return float(lo), float(hi)


def colorize_depth(depth: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0), cmap: str = "turbo",
                   inverse: bool = True) -> np.ndarray:
    """A colourised z-depth map; near is red and far is blue with the default ``turbo`` on inverse depth.

    Args:
        depth: (h, w) float depth (any units); values <= 0 or non-finite are invalid.
        percentiles: the value range shown, as percentiles of the valid values (robust to outliers).
        cmap: matplotlib colour map name.
        inverse: colour by 1 / depth (spreads the near range, as depth viewers usually do).

    Returns:
        (h, w, 3) uint8 RGB.
    """
    check_shape("colorize_depth(depth)", depth, ("h", "w"), "f")
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    x = np.where(valid, 1.0 / np.where(valid, d, 1.0), 0.0) if inverse else d
    lo, hi = _range(x, valid, percentiles)
    return colorize(x, valid, lo, hi, cmap)


def colorize_conf(conf: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0), cmap: str = "viridis") -> np.ndarray:
    """A colourised confidence map (bright = confident).

    Args:
        conf: (h, w) float confidence; non-finite values are invalid.

    Returns:
        (h, w, 3) uint8 RGB.
    """
    check_shape("colorize_conf(conf)", conf, ("h", "w"), "f")
    c = np.asarray(conf, dtype=np.float64)
    valid = np.isfinite(c)
    lo, hi = _range(c, valid, percentiles)
    return colorize(c, valid, lo, hi, cmap)


def fit_width(image: np.ndarray, max_width: Optional[int]) -> np.ndarray:
    """``image`` ((h, w, 3) uint8) downscaled (area filter) so that its width is at most ``max_width``."""
    check_shape("fit_width(image)", image, ("h", "w", 3), "u")
    h, w = image.shape[:2]
    if max_width is None or w <= int(max_width):
        return image
    import cv2

    nw = int(max_width)
    nh = max(1, int(round(h * nw / w)))
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
