"""Poses and intrinsics recovered from a ray map."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.ray_pose import pose_from_rays, ray_pixel_grid
from da3stream.errors import AlignmentError


def _rays(R, c, K, ray_hw, depth_hw):
    u, v = ray_pixel_grid(ray_hw, depth_hw)
    pix = np.stack([u, v, np.ones_like(u)], -1)
    d = pix @ np.linalg.inv(K).T @ R.T
    o = np.broadcast_to(c, d.shape)
    return np.concatenate([o, d], -1)[None].astype(np.float64)


@pytest.mark.parametrize("ray_hw", [(60, 80), (34, 46)])
def test_recovers_rotation_centre_and_intrinsics(rng, ray_hw):
    R = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    c = rng.normal(size=3)
    K = np.array([[70.0, 0, 41.2], [0, 72.0, 29.1], [0, 0, 1]])
    rays = _rays(R, c, K, ray_hw, (60, 80))
    pose, Kr = pose_from_rays(rays, (60, 80))
    np.testing.assert_allclose(pose[0, :3, :3], R, atol=1e-9)
    np.testing.assert_allclose(pose[0, :3, 3], c, atol=1e-9)
    np.testing.assert_allclose(Kr[0], K, atol=1e-7)


def test_weights_and_noise(rng):
    R = Rotation.from_rotvec([0.1, -0.2, 0.3]).as_matrix()
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    rays = _rays(R, np.zeros(3), K, (48, 64), (48, 64))
    rays[..., 3:] += rng.normal(scale=1e-3, size=rays[..., 3:].shape)
    pose, _ = pose_from_rays(rays.astype(np.float32), (48, 64), np.ones((1, 48, 64), np.float32))
    ang = np.degrees(Rotation.from_matrix(pose[0, :3, :3] @ R.T).magnitude())
    assert ang < 0.05


def test_degenerate_rays_raise():
    rays = np.zeros((1, 8, 8, 6))
    rays[..., 5] = 1.0  # every direction identical
    with pytest.raises(AlignmentError, match="degenerate"):
        pose_from_rays(rays, (8, 8))
