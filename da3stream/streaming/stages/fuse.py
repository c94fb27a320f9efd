"""Map stage: the window's new frames voxel-fused into coloured points in its chunk frame.

Frames shared with the previous window were fused by that window, so overlap
surfaces are never written twice (:mod:`da3stream.streaming.fusion`).
"""

from __future__ import annotations

from da3stream.config import FusionConfig
from da3stream.streaming.fusion import empty_points, fuse_window
from da3stream.streaming.stages.cameras import ImageGrid
from da3stream.streaming.window import Window

__all__ = ["FuseStage", "with_colours"]


def with_colours(window: Window, grid: ImageGrid) -> Window:
    """``window`` with ``rgb_new``: its new frames' colours on the depth grid (fused, stored, loop-verified)."""
    return window.replace(rgb_new=grid.images(window.new_frames))


class FuseStage:
    """``stage(window) -> window`` with ``points`` (needs ``rgb_new``, see :func:`with_colours`)."""

    def __init__(self, cfg: FusionConfig) -> None:
        self.cfg = cfg

    def __call__(self, window: Window) -> Window:
        if not window.n_new:
            return window.replace(points=empty_points())
        f, pred, new = self.cfg, window.prediction, window.new
        points = fuse_window(
            pred.depth[new], pred.conf[new], pred.intrinsics[new], window.chunk_from_cam_new, window.rgb_new,
            conf_quantile=f.conf_quantile, voxel_size=f.voxel_size, voxel_fraction_of_depth=f.voxel_fraction_of_depth,
            pixel_stride=f.pixel_stride, max_points=f.max_points_per_chunk,
        )
        return window.replace(points=points)
