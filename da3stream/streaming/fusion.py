"""Per-window point fusion: confidence-filtered, voxel-averaged points in the chunk frame.

Each window contributes points from its NEW frames only (frames shared with the
previous window were fused by that window), so overlap surfaces are never
written twice. Points stay in the chunk frame; ``world_from_chunk`` composes
them on read, which is what lets loop closure correct the map without
rewriting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from da3stream.alignment.points import unproject_depth
from da3stream.errors import check_shape


@dataclass(frozen=True)
class FusedPoints:
    """Voxel-fused points of one window, in that window's chunk frame."""

    xyz: np.ndarray
    """(P, 3) float32 chunk-frame positions."""
    rgb: np.ndarray
    """(P, 3) uint8 colours."""
    conf: np.ndarray
    """(P,) float32 highest confidence in the voxel."""

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def empty_points() -> FusedPoints:
    return FusedPoints(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros((0,), np.float32))


def fuse_window(
    depth: np.ndarray,
    conf: np.ndarray,
    intrinsics: np.ndarray,
    chunk_from_cam: np.ndarray,
    rgb: np.ndarray | None,
    *,
    conf_quantile: float,
    voxel_size: float,
    voxel_fraction_of_depth: float,
    pixel_stride: int,
    max_points: int,
) -> FusedPoints:
    """Fuse the new frames of a window into voxel-averaged coloured points.

    Args:
        depth: (N, h, w) float z-depth of the new frames.
        conf: (N, h, w) float confidence.
        intrinsics: (N, 3, 3) for the (h, w) grid.
        chunk_from_cam: (N, 4, 4) camera poses in the chunk frame.
        rgb: (N, h, w, 3) uint8 colours on the depth grid, or None (grey).
        conf_quantile: keep pixels above this quantile of the window's confidence.
        voxel_size: voxel edge in chunk units; 0 derives it from the median depth.
        voxel_fraction_of_depth: voxel edge as a fraction of the median depth when ``voxel_size`` is 0.
        pixel_stride: take every ``pixel_stride``-th pixel in each direction.
        max_points: keep at most this many voxels (the best supported ones).
    """
    check_shape("depth", depth, ("N", "h", "w"), "f")
    n, h, w = depth.shape
    if n == 0:
        return empty_points()
    check_shape("conf", conf, (n, h, w), "f")
    s = max(1, int(pixel_stride))
    d = np.asarray(depth[:, ::s, ::s], np.float32)
    c = np.asarray(conf[:, ::s, ::s], np.float32)
    K = np.array(intrinsics, dtype=np.float64, copy=True)
    K[:, :2, :] /= s  # pixel (u, v) on the strided grid is (s*u, s*v) on the full grid
    pts = unproject_depth(d, K, chunk_from_cam)
    valid = np.isfinite(d) & (d > 0) & np.isfinite(c) & np.all(np.isfinite(pts), axis=-1)
    if not valid.any():
        return empty_points()
    thr = np.quantile(c[valid], conf_quantile) if conf_quantile > 0 else -np.inf
    keep = valid & (c >= thr)
    xyz = pts[keep].astype(np.float64)
    cf = c[keep]
    if rgb is not None:
        col = np.asarray(rgb[:, ::s, ::s])[keep].astype(np.float64)
    else:
        col = np.full((xyz.shape[0], 3), 128.0)
    if xyz.shape[0] == 0:
        return empty_points()
    vox = voxel_size if voxel_size > 0 else float(np.median(d[keep])) * voxel_fraction_of_depth
    vox = max(vox, 1e-12)
    inv, counts = _voxel_ids(np.floor(xyz / vox).astype(np.int64))
    m = counts.shape[0]
    sum_xyz = np.stack([np.bincount(inv, weights=xyz[:, k], minlength=m) for k in range(3)], axis=1)
    sum_col = np.stack([np.bincount(inv, weights=col[:, k], minlength=m) for k in range(3)], axis=1)
    order = np.lexsort((cf, inv))  # by voxel, then confidence: the last entry per voxel is its best
    last = np.r_[np.flatnonzero(np.diff(inv[order])), inv.size - 1]
    best = cf[order][last].astype(np.float32)
    out_xyz = sum_xyz / counts[:, None]
    out_col = sum_col / counts[:, None]
    if m > max_points:
        order = np.lexsort((-best, -counts))[:max_points]  # most observations first, then confidence
        order.sort()
        out_xyz, out_col, best = out_xyz[order], out_col[order], best[order]
    return FusedPoints(
        out_xyz.astype(np.float32),
        np.clip(np.rint(out_col), 0, 255).astype(np.uint8),
        best.astype(np.float32),
    )


def _voxel_ids(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense voxel ids (P,) and counts (M,) for integer voxel coordinates (P, 3).

    The three coordinates are packed into one int64 (21 bits each after shifting
    to non-negative), which makes the grouping a 1-D ``np.unique``.
    """
    k = keys - keys.min(axis=0)
    span = k.max(axis=0) + 1 if k.size else np.ones(3, np.int64)
    if np.all(span < (1 << 21)):
        packed = (k[:, 0] << 42) | (k[:, 1] << 21) | k[:, 2]
        _, inv, counts = np.unique(packed, return_inverse=True, return_counts=True)
    else:  # a huge extent relative to the voxel: fall back to row-wise unique
        _, inv, counts = np.unique(k, axis=0, return_inverse=True, return_counts=True)
    return inv.reshape(-1), counts
