"""Cross-fading camera poses of frames shared by two windows.

After loop closure rewrites ``world_from_chunk``, the frames in the overlap of
windows A and B have two world poses (one through each window). Using A's for
the first half and B's for the second would make the trajectory jump; blending
them with weights that ramp from A to B across the overlap keeps it continuous.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.errors import AlignmentError, check_shape

__all__ = ["blend_frame_poses", "overlap_ramp"]


def blend_frame_poses(world_from_cam_a: np.ndarray, world_from_cam_b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Interpolate rigid poses: SLERP on rotation, linear on camera centre.

    Args:
        world_from_cam_a: (K, 4, 4) rigid poses from window A.
        world_from_cam_b: (K, 4, 4) rigid poses of the same frames from window B.
        weights: (K,) in [0, 1]; 0 returns A's pose, 1 returns B's.

    Returns:
        (K, 4, 4) float64 rigid ``world_from_cam``: rotation
        ``R_a exp(w log(R_a^T R_b))`` (the shorter geodesic) and centre
        ``(1 - w) c_a + w c_b``.
    """
    A = np.asarray(world_from_cam_a, dtype=np.float64)
    B = np.asarray(world_from_cam_b, dtype=np.float64)
    check_shape("blend_frame_poses(world_from_cam_a)", A, ("K", 4, 4))
    k = A.shape[0]
    check_shape("blend_frame_poses(world_from_cam_b)", B, (k, 4, 4))
    w = np.asarray(weights, dtype=np.float64)
    check_shape("blend_frame_poses(weights)", w, (k,))
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
        raise AlignmentError("blend_frame_poses: poses contain NaN or inf")
    if not (np.all(np.isfinite(w)) and np.all((w >= 0.0) & (w <= 1.0))):
        raise AlignmentError("blend_frame_poses(weights): must lie in [0, 1]")
    out = np.zeros((k, 4, 4))
    out[:, 3, 3] = 1.0
    if k == 0:
        return out
    rot_a = Rotation.from_matrix(A[:, :3, :3])
    delta = (rot_a.inv() * Rotation.from_matrix(B[:, :3, :3])).as_rotvec()
    R = (rot_a * Rotation.from_rotvec(delta * w[:, None])).as_matrix()
    # Exact endpoints (the quaternion round trip would perturb them at 1e-16).
    R = np.where((w == 0.0)[:, None, None], A[:, :3, :3], R)
    R = np.where((w == 1.0)[:, None, None], B[:, :3, :3], R)
    out[:, :3, :3] = R
    out[:, :3, 3] = (1.0 - w)[:, None] * A[:, :3, 3] + w[:, None] * B[:, :3, 3]
    return out


def overlap_ramp(k: int) -> np.ndarray:
    """(k,) float64 weights ``(i + 1) / (k + 1)``: a linear hand-over from A (first frame) to B (last)."""
    if k < 0:
        raise AlignmentError(f"overlap_ramp: k must be >= 0, got {k}")
    return (np.arange(k, dtype=np.float64) + 1.0) / (k + 1.0)
