"""What the simulator knows about a sequence, and the camera-grid geometry it shares with the renderer.

:class:`GroundTruth` holds true poses, intrinsics and depth/sky callbacks (no
rendering required); :func:`scale_intrinsics`, :func:`da3_depth_hw` and
:func:`pixel_rays` map cameras between image grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from da3stream.errors import ConfigError, check_shape

DepthFn = Callable[[np.ndarray, np.ndarray, tuple], np.ndarray]
"""(indices (N,), intrinsics (N, 3, 3) for the grid, (h, w)) -> (N, h, w) float32 z-depth (inf = nothing hit)."""
SkyFn = Callable[[np.ndarray, np.ndarray, tuple], np.ndarray]
"""Same arguments as :data:`DepthFn` -> (N, h, w) bool, True where the ray sees the sky/backdrop."""


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What the simulator needs to know about a sequence (no rendering required)."""

    world_from_cam: np.ndarray
    """(F, 4, 4) float64 true camera poses, metres."""
    intrinsics: np.ndarray
    """(F, 3, 3) or (3, 3) float64 true intrinsics for ``image_hw``."""
    image_hw: tuple
    """(H, W) of the source images."""
    depth_fn: DepthFn = field(repr=False)
    """True z-depth on any grid: see :data:`DepthFn`."""
    sky_fn: Optional[SkyFn] = field(default=None, repr=False)
    """Sky/backdrop mask on any grid, or None (then: where depth is not finite)."""
    appearance_fn: Optional[Callable[[np.ndarray], np.ndarray]] = field(default=None, repr=False)
    """Maps world positions (M, 3) to look-alike coordinates (M, k), metric near each point (see World.appearance_position); None = identity."""
    alias_translation: Optional[np.ndarray] = None
    """(3,) translation (metres) under which the world repeats itself (e.g. one corridor segment), or None."""

    def __post_init__(self) -> None:
        P = np.asarray(self.world_from_cam, dtype=np.float64)
        check_shape("GroundTruth.world_from_cam", P, ("F", 4, 4), "f")
        K = np.asarray(self.intrinsics, dtype=np.float64)
        if K.ndim == 2:
            check_shape("GroundTruth.intrinsics", K, (3, 3), "f")
            K = np.broadcast_to(K, (P.shape[0], 3, 3))
        check_shape("GroundTruth.intrinsics", K, (P.shape[0], 3, 3), "f")
        if len(self.image_hw) != 2 or min(self.image_hw) < 1:
            raise ConfigError(f"GroundTruth.image_hw must be (H, W) > 0, got {self.image_hw}")
        if self.alias_translation is not None:
            v = np.asarray(self.alias_translation, dtype=np.float64).reshape(3)
            if not np.linalg.norm(v) > 0:
                raise ConfigError("GroundTruth.alias_translation must be a non-zero (3,) vector")
            object.__setattr__(self, "alias_translation", v)
        object.__setattr__(self, "world_from_cam", P)
        object.__setattr__(self, "intrinsics", K)
        object.__setattr__(self, "image_hw", (int(self.image_hw[0]), int(self.image_hw[1])))

    @property
    def n_frames(self) -> int:
        return int(self.world_from_cam.shape[0])


def scale_intrinsics(K: np.ndarray, from_hw: tuple, to_hw: tuple) -> np.ndarray:
    """Intrinsics (..., 3, 3) of an image resized from ``from_hw`` to ``to_hw`` with pixel centres aligned.

    Pixel ``(row v, column u)`` is centred at ``(u, v)``; resizing maps
    ``u' = (u + 0.5) * s - 0.5``, so ``f' = f * s`` and ``c' = (c + 0.5) * s - 0.5``.
    """
    K = np.asarray(K, dtype=np.float64)
    sy = to_hw[0] / from_hw[0]
    sx = to_hw[1] / from_hw[1]
    out = K.copy()
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return out


def da3_depth_hw(image_hw: tuple, process_res: int = 504, patch: int = 14) -> tuple[int, int]:
    """The depth grid DA3 would produce: longest side ``process_res``, both sides rounded to a multiple of ``patch``."""
    h, w = image_hw
    s = process_res / max(h, w)
    nh, nw = round(h * s), round(w * s)
    return (max(patch, int(np.floor(nh / patch + 0.5)) * patch), max(patch, int(np.floor(nw / patch + 0.5)) * patch))


def pixel_rays(world_from_cam: np.ndarray, intrinsics: np.ndarray, u: np.ndarray, v: np.ndarray,
               dtype=np.float32) -> np.ndarray:
    """Ray directions ``R K^-1 [u, v, 1]`` (camera-z 1) for a pixel grid, in the frame of ``world_from_cam``.

    Args:
        world_from_cam: (N, 4, 4) poses.
        intrinsics: (3, 3) or (N, 3, 3).
        u, v: (w,) column and (h,) row coordinates of the grid's pixel centres.

    Returns:
        (N, h, w, 3) directions of ``dtype`` (one matrix product for all cameras).
    """
    P = np.asarray(world_from_cam, dtype=np.float64)
    n = P.shape[0]
    K_inv = np.broadcast_to(np.linalg.inv(np.asarray(intrinsics, dtype=np.float64)), (n, 3, 3))
    M = P[:, :3, :3] @ K_inv  # (N, 3, 3): pixel -> direction
    uu, vv = np.meshgrid(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))
    pix = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)], axis=1).astype(dtype)  # (h*w, 3)
    stacked = np.swapaxes(M, 1, 2).transpose(1, 0, 2).reshape(3, 3 * n).astype(dtype)  # [M_0^T ... M_{N-1}^T]
    dirs = pix @ stacked  # (h*w, 3N)
    return np.ascontiguousarray(dirs.reshape(uu.shape + (n, 3)).transpose(2, 0, 1, 3))

