"""Voxel-grid downsampling of coloured point clouds (used on read and export)."""

from __future__ import annotations

import numpy as np

from da3stream.errors import ShapeError, check_shape


def voxel_downsample(xyz: np.ndarray, rgb: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel: the mean position and the mean colour of its points.

    Args:
        xyz: (P, 3) float points.
        rgb: (P, 3) uint8 colours.
        voxel: voxel edge length, in the units of ``xyz`` (> 0).

    Returns:
        ``(xyz (Q, 3) float32, rgb (Q, 3) uint8)`` with Q <= P, voxels in
        lexicographic order of their integer coordinates. Points with a
        non-finite coordinate are dropped.
    """
    check_shape("voxel_downsample(xyz)", xyz, ("P", 3), "f")
    check_shape("voxel_downsample(rgb)", rgb, (xyz.shape[0], 3), "u")
    if not (np.isfinite(voxel) and voxel > 0):
        raise ShapeError(f"voxel_downsample(voxel): expected a positive voxel size, got {voxel}")
    finite = np.all(np.isfinite(xyz), axis=1)
    pts = np.asarray(xyz, dtype=np.float64)[finite]
    col = np.asarray(rgb)[finite]
    if pts.shape[0] == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    cells = np.floor(pts / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    if float(dims[0]) * float(dims[1]) * float(dims[2]) < 2.0**62:
        key = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:  # pragma: no cover - a grid of more than 2**62 cells
        _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    q = counts.shape[0]
    out_xyz = np.empty((q, 3), np.float64)
    out_rgb = np.empty((q, 3), np.float64)
    for k in range(3):
        out_xyz[:, k] = np.bincount(inverse, weights=pts[:, k], minlength=q)
        out_rgb[:, k] = np.bincount(inverse, weights=col[:, k].astype(np.float64), minlength=q)
    out_xyz /= counts[:, None]
    out_rgb /= counts[:, None]
    return out_xyz.astype(np.float32), np.clip(np.rint(out_rgb), 0, 255).astype(np.uint8)
