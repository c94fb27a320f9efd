"""Cameras of a prediction: poses and intrinsics fitted to the ray map, and the depth grid's map to the image.

- :func:`poses_from_rays` replaces the camera head's poses and intrinsics by
  those fitted to DA3's ray map (``align.pose_source``).
- :func:`use_known_intrinsics` replaces the predicted intrinsics by a known
  calibration (``source.intrinsics``) mapped to the depth grid.
- :class:`ImageGrid` maps between the predictor's depth grid and the original
  image: intrinsics are stored at the ORIGINAL resolution (docs/CONVENTIONS.md),
  colours on the depth grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from da3stream.alignment.ray_pose import pose_from_rays
from da3stream.core.types import Prediction
from da3stream.errors import AlignmentError

log = logging.getLogger(__name__)

__all__ = ["ImageGrid", "poses_from_rays", "use_known_intrinsics"]


def poses_from_rays(pred: Prediction, frames: list, pose_source: str) -> bool:
    """Set ``pred``'s poses and intrinsics from its ray map unless ``pose_source`` is ``"head"`` (or no rays);
    True when it did.

    A failed fit (degenerate rays) keeps the camera head's and says so in the log.
    """
    if pred.rays is None or pose_source == "head":
        return False
    try:
        chunk_from_cam, K = pose_from_rays(pred.rays, tuple(pred.depth.shape[1:]), pred.ray_conf)
    except AlignmentError as exc:
        log.warning("window of frames %d-%d: poses from rays failed (%s); using the camera head", frames[0].index,
                    frames[-1].index, exc)
        return False
    pred.world_from_cam = chunk_from_cam
    pred.intrinsics = K
    return True


def use_known_intrinsics(pred: Prediction, K_orig: np.ndarray, image_hw: tuple, predictor: Any) -> None:
    """Set ``pred``'s intrinsics to the known ``K_orig`` (3, 3, at the original ``image_hw``) on its depth grid.

    A known calibration beats the network's guess. The ray map is dropped with the
    predicted intrinsics (after :func:`poses_from_rays` has taken the poses from it):
    its directions encode the network's focal lengths, so alignment, loop
    verification and fusion unproject depth with the known camera instead.
    """
    K = np.broadcast_to(np.asarray(K_orig, np.float64), (len(pred), 3, 3))
    pred.intrinsics = ImageGrid.from_prediction(pred, image_hw, predictor).grid_intrinsics(K)
    pred.rays = None
    pred.ray_conf = None


@dataclass(frozen=True)
class ImageGrid:
    """The depth grid of a run and its map to the original image."""

    orig_from_grid: np.ndarray
    """(3, 3) float64: grid pixel (homogeneous) -> original image pixel."""
    depth_hw: tuple
    """(h, w) of the predictor's depth grid."""
    image_hw: tuple
    """(H, W) of the source images."""

    @classmethod
    def from_prediction(cls, pred: Prediction, image_hw: tuple, predictor: Any) -> "ImageGrid":
        """The grid of the first prediction (the predictor's own mapping when it has one)."""
        h, w = pred.depth.shape[1:]
        H, W = image_hw
        to_orig = getattr(predictor, "to_original_intrinsics", None)
        if callable(to_orig):
            K = pred.intrinsics[0]
            orig_from_grid = np.asarray(to_orig(K, image_hw), np.float64) @ np.linalg.inv(K)
        else:
            # pixel centres sit at integer coordinates (docs/CONVENTIONS.md): u = (u' + 0.5) * W / w - 0.5
            sx, sy = W / w, H / h
            orig_from_grid = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        return cls(orig_from_grid, (int(h), int(w)), tuple(image_hw))

    def orig_intrinsics(self, K_grid: np.ndarray) -> np.ndarray:
        """(N, 3, 3) intrinsics at the original resolution from (N, 3, 3) on the depth grid."""
        return np.einsum("ij,njk->nik", self.orig_from_grid, K_grid)

    def grid_intrinsics(self, K_orig: np.ndarray) -> np.ndarray:
        """(N, 3, 3) intrinsics on the depth grid from (N, 3, 3) at the original resolution."""
        return np.einsum("ij,njk->nik", np.linalg.inv(self.orig_from_grid), K_orig)

    def images(self, frames: list) -> np.ndarray:
        """(N, h, w, 3) uint8 colours of ``frames`` on the depth grid."""
        h, w = self.depth_hw
        out = np.empty((len(frames), h, w, 3), np.uint8)
        for i, f in enumerate(frames):
            img = f.image
            out[i] = img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        return out
