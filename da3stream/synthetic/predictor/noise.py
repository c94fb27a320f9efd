"""Depth and confidence errors of the simulator, one frame at a time.

Multiplicative depth noise growing with depth (a smooth low-frequency field,
partly shared by every window that holds the frame, plus per-pixel noise),
worse at image borders, in random blobs, at depth discontinuities ("flying
pixels") and on the sky, plus rare wild outliers; confidence ``1 + exp(.)``
that falls where the expected error is larger.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from da3stream.synthetic.predictor.params import SimParams


def border_mask(p: SimParams, hw: tuple) -> np.ndarray:
    """(h, w) bool: pixels inside the image-border band of width ``p.border_fraction`` of the longer side."""
    h, w = hw
    band = p.border_fraction * max(h, w)
    v = np.arange(h)[:, None]
    u = np.arange(w)[None, :]
    dist = np.minimum(np.minimum(u, w - 1 - u), np.minimum(v, h - 1 - v))
    return dist < band


def smooth_field(cells: int, gen: np.random.Generator, hw: tuple) -> np.ndarray:
    """(h, w) float32 zero-mean, unit-std field: bicubic upsampling of ``cells`` random cells across the longer side."""
    import cv2

    h, w = hw
    cx = cells if w >= h else max(1, round(cells * w / h))
    cy = cells if h > w else max(1, round(cells * h / w))
    coarse = gen.standard_normal((cy + 1, cx + 1)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    std = float(field.std())
    return (field - np.float32(field.mean())) / np.float32(std if std > 0 else 1.0)


def _error_std(p: SimParams, depth_gt: np.ndarray, sky: np.ndarray, border: np.ndarray,
               gen: np.random.Generator) -> np.ndarray:
    """(h, w) float32 std of the log depth error: grows with depth, times the border and blob gains; sky fixed."""
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
    return np.where(sky, f32(p.sky_noise_rel), sigma * gain)


def frame_noise(p: SimParams, depth_gt: np.ndarray, sky: np.ndarray, border: np.ndarray, edges: Optional[np.ndarray],
                gen: np.random.Generator, shared_gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(log depth error (h, w) float32, log(conf - 1) (h, w) float32) for one frame.

    ``gen`` is this window's stream for the frame, ``shared_gen`` the frame's
    own stream (same in every window).
    """
    f32 = np.float32
    h, w = depth_gt.shape
    sigma = _error_std(p, depth_gt, sky, border, gen)
    c = p.depth_noise_correlated
    rho = p.depth_noise_shared
    cells = p.depth_noise_cells
    field = (f32(np.sqrt(rho)) * smooth_field(cells, shared_gen, (h, w))
             + f32(np.sqrt(1.0 - rho)) * smooth_field(cells, gen, (h, w)))
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


def depth_edges(depth: np.ndarray, log_threshold: float) -> np.ndarray:
    """(h, w) bool: pixels whose log-depth differs from a 4-neighbour by more than ``log_threshold``."""
    ld = np.log(depth.astype(np.float64))
    edge = np.zeros(depth.shape, dtype=bool)
    dv = np.abs(np.diff(ld, axis=0)) > log_threshold
    du = np.abs(np.diff(ld, axis=1)) > log_threshold
    edge[1:] |= dv
    edge[:-1] |= dv
    edge[:, 1:] |= du
    edge[:, :-1] |= du
    return edge


def flying_pixels(depth: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Depth discontinuities get the 3x3 mean depth: points float between the surfaces, like DA3's."""
    import cv2

    blurred = cv2.blur(depth.astype(np.float32), (3, 3), borderType=cv2.BORDER_REPLICATE)
    return np.where(edges, blurred, depth).astype(np.float32)
