"""The report's top-down view of the fused point map (a panel of the ``trajectory`` figure).

The map is drawn in the same plane as the trajectory's top view: the first
camera's right / forward axes (the horizontal plane of a level first camera),
seen from above, each point in its own colour, higher points over lower ones.
At most :data:`MAP_POINTS_SHOWN` points are drawn, an even stride over the map
(:func:`da3stream.io.export.run_exports.selected_points`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from da3stream.io.export.run_exports import collect_points
from da3stream.io.store import RunStore

__all__ = ["MAP_POINTS_SHOWN", "draw_map_top_view", "map_top_view"]

MAP_POINTS_SHOWN = 30_000
"""Map points drawn at most (more only blur the scatter and slow the report)."""


def map_top_view(store: RunStore, origin: np.ndarray, axes: np.ndarray, max_points: Optional[int] = MAP_POINTS_SHOWN
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(ruh (N, 3) right / forward / up of the first camera, rgb (N, 3) uint8)`` of the map, lowest first.

    ``origin`` (3,), ``axes`` (3, 3) rows right / forward / up: the first camera's frame in the world.
    """
    xyz, rgb = collect_points(store, world=True, max_points=max_points)
    ruh = (xyz.astype(np.float64) - origin) @ np.asarray(axes, np.float64).T
    order = np.argsort(ruh[:, 2], kind="stable")
    return ruh[order], rgb[order]


def draw_map_top_view(ax, ruh: np.ndarray, rgb: np.ndarray, trajectory_ruh: np.ndarray) -> None:
    """Scatter the map from above, with the camera path as a thin line over it."""
    if ruh.shape[0]:
        ax.scatter(ruh[:, 0], ruh[:, 1], c=rgb.astype(np.float64) / 255.0, s=2.5, marker=".", linewidths=0,
                   rasterized=True)
    ax.plot(trajectory_ruh[:, 0], trajectory_ruh[:, 1], "-", lw=0.9, color="#1e64dc", label="camera path")
    ax.plot(trajectory_ruh[0, 0], trajectory_ruh[0, 1], "o", color="#222222", ms=5, label="start")
    ax.set_xlabel("right of the first camera")
    ax.set_ylabel("forward of the first camera")
    ax.set_title(f"point map from above ({ruh.shape[0]:,} points)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, lw=0.4, alpha=0.5)
    ax.legend(fontsize=8, loc="best")
