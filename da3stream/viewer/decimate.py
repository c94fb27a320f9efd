"""A point budget for the live viewer: voxel-grid decimation per chunk under a cap on the points shown.

A browser stays responsive with a few million points; a long run's map holds
far more. Each chunk's fused points are decimated once, when the chunk
arrives, with a voxel grid (one point per occupied voxel), then put in a
seeded random order and cut to a per-chunk cap. When the points shown would
exceed the total cap, the per-chunk cap is halved and the chunks above it are
cut to it (a random subset of a voxel-decimated cloud stays evenly spread), so
the total never exceeds the budget, the whole map stays visible at a coarser
density, and a re-send happens only log2(chunks) times over a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from da3stream.errors import ShapeError, check_shape
from da3stream.alignment.voxel import voxel_downsample

__all__ = ["ChunkCloud", "PointBudget", "robust_extent"]


@dataclass(frozen=True)
class ChunkCloud:
    """The decimated points of one chunk, in that chunk's frame."""

    chunk_id: int
    xyz: np.ndarray
    """(P, 3) float32 points in the chunk frame."""
    rgb: np.ndarray
    """(P, 3) uint8 colours."""

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def robust_extent(xyz: np.ndarray, percentiles: tuple[float, float] = (5.0, 95.0)) -> float:
    """Largest per-axis spread of ``xyz`` ((P, 3) float) between two percentiles; 0 when empty."""
    check_shape("robust_extent(xyz)", xyz, ("P", 3), "f")
    finite = np.all(np.isfinite(xyz), axis=1)
    if not finite.any():
        return 0.0
    lo, hi = np.percentile(np.asarray(xyz, np.float64)[finite], percentiles, axis=0)
    return float(np.max(hi - lo))


class PointBudget:
    """Decides which points of which chunk are shown; see the module docstring.

    Args:
        max_points: cap on the points shown over all chunks.
        max_points_per_chunk: cap on the points shown of one chunk (halved when the total overflows).
        seed: seed of the per-chunk random order (combined with the chunk id).
    """

    def __init__(self, max_points: int, max_points_per_chunk: int, seed: int = 0) -> None:
        if int(max_points) < 1 or int(max_points_per_chunk) < 1:
            raise ShapeError(f"PointBudget: caps must be >= 1, got max_points={max_points}, "
                             f"max_points_per_chunk={max_points_per_chunk}")
        self.max_points = int(max_points)
        self.cap = min(int(max_points_per_chunk), self.max_points)
        self.seed = int(seed)
        self._shown: dict[int, ChunkCloud] = {}

    @property
    def total(self) -> int:
        """Points shown now, over all chunks."""
        return sum(len(c) for c in self._shown.values())

    def shown(self, chunk_id: int) -> Optional[ChunkCloud]:
        """The points of ``chunk_id`` shown now, or None."""
        return self._shown.get(int(chunk_id))

    def add(self, chunk_id: int, xyz: np.ndarray, rgb: np.ndarray, voxel: Optional[float]) -> dict[int, ChunkCloud]:
        """Decimate a new chunk's points and fit everything shown into the budget.

        Args:
            chunk_id: the chunk (a chunk already added is replaced).
            xyz: (P, 3) float points in the chunk's frame.
            rgb: (P, 3) uint8 colours.
            voxel: voxel edge in the chunk's units, or None for no voxel grid.

        Returns:
            ``chunk id -> ChunkCloud`` for every chunk whose shown points changed
            (the new chunk, plus older chunks cut by a lowered cap).
        """
        check_shape("PointBudget.add(xyz)", xyz, ("P", 3), "f")
        check_shape("PointBudget.add(rgb)", rgb, (xyz.shape[0], 3), "u")
        k = int(chunk_id)
        if voxel is not None and np.isfinite(voxel) and voxel > 0:
            pts, col = voxel_downsample(xyz, rgb, float(voxel))
        else:
            finite = np.all(np.isfinite(xyz), axis=1)
            pts, col = np.asarray(xyz, np.float32)[finite], np.asarray(rgb, np.uint8)[finite]
        order = np.random.default_rng([self.seed, k]).permutation(pts.shape[0])
        n = min(pts.shape[0], self.cap)
        self._shown[k] = ChunkCloud(k, pts[order[:n]], col[order[:n]])
        changed = {k: self._shown[k]}
        while self.total > self.max_points and self.cap > 1:
            self.cap = max(1, self.cap // 2)
            for j, cloud in list(self._shown.items()):
                if len(cloud) > self.cap:
                    self._shown[j] = ChunkCloud(j, cloud.xyz[: self.cap], cloud.rgb[: self.cap])
                    changed[j] = self._shown[j]
        if self.total > self.max_points:  # more chunks than max_points: the new one shows nothing
            self._shown[k] = ChunkCloud(k, pts[:0], col[:0])
            changed[k] = self._shown[k]
        return changed

    def clear(self) -> None:
        """Forget every chunk (the cap is kept)."""
        self._shown = {}
