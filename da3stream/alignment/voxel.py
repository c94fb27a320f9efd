"""The voxel grid: points grouped by integer cell, one implementation for fusion, read, export and the viewer.

:func:`voxel_groups` numbers the occupied cells of integer voxel coordinates
in lexicographic order (as ``np.unique(cells, axis=0)`` numbers them) with one
1-D sort of a packed int64 key; :func:`voxel_downsample` (store read, export,
viewer decimation) and the per-window fusion of
:mod:`da3stream.streaming.fusion` both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from da3stream.errors import ShapeError, check_shape

__all__ = ["VoxelGroups", "voxel_cells", "voxel_groups", "voxel_ids", "voxel_means", "voxel_downsample"]


@dataclass(frozen=True)
class VoxelGroups:
    """Points grouped by occupied voxel; voxel ids in lexicographic order of the cell coordinates."""

    inverse: np.ndarray
    """(P,) int64 voxel id of every point."""
    counts: np.ndarray
    """(M,) int64 points per voxel."""
    order: np.ndarray
    """(P,) int64 point order sorting the points by voxel (within-voxel order unspecified)."""
    starts: np.ndarray
    """(M,) int64 start of each voxel's run in ``order``."""


def voxel_cells(xyz: np.ndarray, voxel: float) -> np.ndarray:
    """(P, 3) int64 integer cell of every point of ``xyz`` (P, 3) float for voxel edge ``voxel``."""
    return np.floor(xyz / voxel).astype(np.int64)


def _pack_cells(cells: np.ndarray) -> np.ndarray:
    """One int64 per cell (P, 3), increasing in the cells' lexicographic order.

    Mixed radix over the occupied extent; a row-wise rank for a grid of more
    than 2**62 cells (a huge extent relative to the voxel).
    """
    k = cells - cells.min(axis=0)
    dims = k.max(axis=0) + 1
    if float(dims[0]) * float(dims[1]) * float(dims[2]) < 2.0**62:
        return (k[:, 0] * dims[1] + k[:, 1]) * dims[2] + k[:, 2]
    _, inv = np.unique(k, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def voxel_groups(cells: np.ndarray) -> VoxelGroups:
    """Group the points of integer voxel coordinates ``cells`` (P, 3), P >= 1 (see :class:`VoxelGroups`)."""
    packed = _pack_cells(cells)
    order = np.argsort(packed)  # within-voxel order is irrelevant to every use
    sorted_keys = packed[order]
    new_group = np.empty(sorted_keys.size, bool)
    new_group[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.append(starts, sorted_keys.size))
    inverse = np.empty(sorted_keys.size, np.int64)
    inverse[order] = np.cumsum(new_group) - 1
    return VoxelGroups(inverse, counts, order, starts)


def voxel_ids(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense voxel ids (P,) and counts (M,) for integer voxel coordinates ``cells`` (P, 3)."""
    groups = voxel_groups(cells)
    return groups.inverse, groups.counts


def voxel_means(groups: VoxelGroups, values: np.ndarray) -> np.ndarray:
    """(M, k) float64 per-voxel mean of the (P, k) ``values`` (summed in point order)."""
    m = groups.counts.shape[0]
    sums = np.empty((m, values.shape[1]), np.float64)
    for k in range(values.shape[1]):
        sums[:, k] = np.bincount(groups.inverse, weights=values[:, k], minlength=m)
    return sums / groups.counts[:, None]


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
    groups = voxel_groups(voxel_cells(pts, voxel))
    out_xyz = voxel_means(groups, pts)
    out_rgb = voxel_means(groups, col.astype(np.float64))
    return out_xyz.astype(np.float32), np.clip(np.rint(out_rgb), 0, 255).astype(np.uint8)
