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

from da3stream.alignment.voxel import voxel_cells, voxel_groups, voxel_means
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
    # contiguous strided copies: the selections below are then flat gathers, not masked strided walks
    d = np.ascontiguousarray(depth[:, ::s, ::s], np.float32)
    c = np.ascontiguousarray(conf[:, ::s, ::s], np.float32)
    K = np.array(intrinsics, dtype=np.float64, copy=True)
    K[:, :2, :] /= s  # pixel (u, v) on the strided grid is (s*u, s*v) on the full grid
    valid = np.isfinite(d) & (d > 0) & np.isfinite(c)
    if not valid.any():
        return empty_points()
    thr = np.quantile(c[valid], conf_quantile) if conf_quantile > 0 else -np.inf
    keep = valid & (c >= thr)
    xyz = _unproject_pixels(d, K, np.asarray(chunk_from_cam, np.float64), keep)
    if not np.isfinite(xyz[:, 0] + xyz[:, 1] + xyz[:, 2]).all():  # a row sum is finite iff its 3 values are
        finite = np.all(np.isfinite(xyz), axis=1)  # only with non-finite cameras (the pipeline rejects those)
        keep[keep] = finite
        xyz = xyz[finite]
    sel = np.flatnonzero(keep)  # the kept pixels in C order, as boolean indexing with ``keep`` orders them
    cf = c.reshape(-1)[sel]
    if rgb is not None:
        col = np.ascontiguousarray(rgb[:, ::s, ::s]).reshape(-1, 3)[sel].astype(np.float64)
    else:
        col = np.full((xyz.shape[0], 3), 128.0)
    if xyz.shape[0] == 0:
        return empty_points()
    vox = voxel_size if voxel_size > 0 else float(np.median(d.reshape(-1)[sel])) * voxel_fraction_of_depth
    vox = max(vox, 1e-12)
    return _voxel_average(xyz, col, cf, vox, max_points)


def _voxel_average(xyz: np.ndarray, col: np.ndarray, conf: np.ndarray, vox: float, max_points: int) -> FusedPoints:
    """Mean position and colour and best confidence per voxel of edge ``vox``; the ``max_points`` best supported."""
    groups = voxel_groups(voxel_cells(xyz, vox))
    m = groups.counts.shape[0]
    out_xyz = voxel_means(groups, xyz)
    out_col = voxel_means(groups, col)
    best = np.maximum.reduceat(conf[groups.order], groups.starts).astype(np.float32)  # the best confidence per voxel
    if m > max_points:
        sel = _top_voxels(groups.counts, best, max_points)  # most observations first, then confidence
        out_xyz, out_col, best = out_xyz[sel], out_col[sel], best[sel]
    return FusedPoints(
        out_xyz.astype(np.float32),
        np.clip(np.rint(out_col), 0, 255).astype(np.uint8),
        best.astype(np.float32),
    )


def _unproject_pixels(depth: np.ndarray, intrinsics: np.ndarray, chunk_from_cam: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Chunk-frame points (P, 3) float64 of the ``keep`` (N, h, w) pixels of ``depth`` (N, h, w), in pixel order.

    The same arithmetic as :func:`~da3stream.alignment.points.unproject_depth` (rounded to
    float32 like it), on the selected pixels only: fusion keeps about half of them.
    """
    n, h, w = depth.shape
    K_inv = np.linalg.inv(intrinsics)
    R = chunk_from_cam[:, :3, :3]
    v_all, u_all = np.divmod(np.arange(h * w, dtype=np.float64), w)
    out = []
    for i in range(n):  # elementwise: a (P, 3) x (3, 3) BLAS matmul would wake OpenBLAS's spinning threads
        sel = np.flatnonzero(keep[i].ravel())
        u, v = u_all[sel], v_all[sel]
        ray = [K_inv[i, k, 0] * u + K_inv[i, k, 1] * v + K_inv[i, k, 2] for k in range(3)]
        d = depth[i].ravel()[sel].astype(np.float64) / ray[2]
        cam = [ray[0] * d, ray[1] * d, ray[2] * d]
        pts = np.empty((sel.size, 3), np.float64)
        for j in range(3):
            pts[:, j] = R[i, j, 0] * cam[0] + R[i, j, 1] * cam[1] + R[i, j, 2] * cam[2] + chunk_from_cam[i, j, 3]
        out.append(pts)
    return np.concatenate(out).astype(np.float32).astype(np.float64)


def _top_k_first(key: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` largest ``key`` values, ties going to the lower index (O(n))."""
    if k >= key.size:
        return np.arange(key.size)
    cut = np.partition(key, key.size - k)[key.size - k]  # the k-th largest value
    above = np.flatnonzero(key > cut)
    tied = np.flatnonzero(key == cut)[: k - above.size]
    return np.sort(np.concatenate([above, tied]))


def _top_voxels(counts: np.ndarray, best: np.ndarray, k: int) -> np.ndarray:
    """Sorted ids of the ``k`` voxels with the most points, ties broken by best confidence, then by id.

    Same selection as ``np.sort(np.lexsort((-best, -counts))[:k])`` in linear time.
    """
    cut = np.partition(counts, counts.size - k)[counts.size - k]
    above = np.flatnonzero(counts > cut)
    tied = np.flatnonzero(counts == cut)
    pick = tied[_top_k_first(best[tied], k - above.size)]
    return np.sort(np.concatenate([above, pick]))
