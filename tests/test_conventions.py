"""Pins of the frame, axis and layout conventions (docs/CONVENTIONS.md)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.points import points_from_rays, unproject_depth
from da3stream.alignment.sim3 import Sim3, cam_from_world_3x4_to_world_from_cam, invert_rigid
from da3stream.errors import ShapeError

ATOL = 1e-12


def _random_sim3(rng, scale_range=(0.1, 10.0)) -> Sim3:
    s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    return Sim3(s, Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix(), rng.normal(size=3) * 3)


def _look_at(centre: np.ndarray, target: np.ndarray, down=np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """world_from_cam (4, 4) of an OpenCV camera at ``centre`` looking at ``target``."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(down, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    M = np.eye(4)
    M[:3, :3] = np.stack([x, y, z], axis=1)
    M[:3, 3] = centre
    return M


def test_sim3_composition_reads_right_to_left(rng):
    a_from_b, b_from_c = _random_sim3(rng), _random_sim3(rng)
    x_c = rng.normal(size=(20, 3))
    a_from_c = a_from_b @ b_from_c
    np.testing.assert_allclose(a_from_c.apply(x_c), a_from_b.apply(b_from_c.apply(x_c)), atol=1e-9)
    np.testing.assert_allclose(a_from_c.matrix(), a_from_b.matrix() @ b_from_c.matrix(), atol=1e-9)
    # The other order is a different transform (the test can fail).
    assert not np.allclose((b_from_c @ a_from_b).apply(x_c), a_from_c.apply(x_c))
    np.testing.assert_allclose((a_from_b @ a_from_b.inverse()).matrix(), np.eye(4), atol=1e-9)


def test_sim3_maps_x_to_s_R_x_plus_t(rng):
    T = _random_sim3(rng)
    x = rng.normal(size=3)
    np.testing.assert_allclose(T.apply(x), T.s * T.R @ x + T.t, atol=1e-12)


def test_invert_rigid_is_exact_inverse(rng):
    M = np.tile(np.eye(4), (5, 1, 1))
    M[:, :3, :3] = Rotation.random(5, random_state=1).as_matrix()
    M[:, :3, 3] = rng.normal(size=(5, 3)) * 10
    inv = invert_rigid(M)
    np.testing.assert_allclose(inv @ M, np.tile(np.eye(4), (5, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(inv, np.linalg.inv(M), atol=1e-12)
    np.testing.assert_allclose(invert_rigid(inv), M, atol=1e-12)


def test_da3_cam_from_world_adapter():
    centre = np.array([1.0, -2.0, 3.0])
    world_from_cam = _look_at(centre, np.array([0.0, 0.0, 10.0]))
    cam_from_world_3x4 = np.linalg.inv(world_from_cam)[:3, :]
    out = cam_from_world_3x4_to_world_from_cam(cam_from_world_3x4[None])
    assert out.shape == (1, 4, 4)
    np.testing.assert_allclose(out[0], world_from_cam, atol=ATOL)
    # The translation of world_from_cam is the camera centre in the world.
    np.testing.assert_allclose(out[0, :3, 3], centre, atol=ATOL)
    # DA3's extrinsics project a world point exactly like the inverse of ours.
    X_world = np.array([0.5, 0.2, 9.0])
    x_cam_da3 = cam_from_world_3x4[:, :3] @ X_world + cam_from_world_3x4[:, 3]
    x_cam_ours = invert_rigid(out[0])[:3, :3] @ X_world + invert_rigid(out[0])[:3, 3]
    np.testing.assert_allclose(x_cam_da3, x_cam_ours, atol=ATOL)
    with pytest.raises(ShapeError):
        cam_from_world_3x4_to_world_from_cam(np.eye(4)[None])


def test_opencv_axes_point_in_front_has_positive_z():
    world_from_cam = _look_at(np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 5.0]))
    np.testing.assert_allclose(world_from_cam[:3, :3], np.eye(3), atol=ATOL)  # looking down +z, y down
    cam_from_world = invert_rigid(world_from_cam)
    K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    ahead = cam_from_world[:3, :3] @ np.array([0.0, 0.0, 5.0]) + cam_from_world[:3, 3]
    behind = cam_from_world[:3, :3] @ np.array([0.0, 0.0, -5.0]) + cam_from_world[:3, 3]
    assert ahead[2] > 0 and behind[2] < 0
    # +x right, +y down in the image.
    right_below = np.array([1.0, 1.0, 5.0])
    uvw = K @ right_below
    u, v = uvw[:2] / uvw[2]
    assert u > K[0, 2] and v > K[1, 2]


def test_unproject_depth_inverts_opencv_projection(rng):
    h, w = 6, 9
    K = np.array([[7.0, 0.0, 4.0], [0.0, 6.5, 2.5], [0.0, 0.0, 1.0]])
    world_from_cam = _look_at(np.array([0.5, 0.0, -1.0]), np.array([0.0, 0.3, 4.0]))
    depth = rng.uniform(1.0, 5.0, size=(1, h, w)).astype(np.float32)
    pts = unproject_depth(depth, K[None], world_from_cam[None]).astype(np.float64)[0]
    cam_from_world = invert_rigid(world_from_cam)
    pc = pts @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    np.testing.assert_allclose(pc[..., 2], depth[0], rtol=1e-5)  # z-depth along +z
    uv = (pc @ K.T)[..., :2] / pc[..., 2:3]
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    np.testing.assert_allclose(uv[..., 0], cols, atol=1e-4)  # pixel (row v, column u) centre at (u, v)
    np.testing.assert_allclose(uv[..., 1], rows, atol=1e-4)


def _ray_map(world_from_cam: np.ndarray, fx_n, fy_n, cx_n, cy_n, hr, wr) -> np.ndarray:
    """(hr, wr, 6) [direction, origin] in DA3's raw layout, cell centres on a [0, 2] normalised image."""
    x = (np.arange(wr) + 0.5) * 2.0 / wr
    y = (np.arange(hr) + 0.5) * 2.0 / hr
    X, Y = np.meshgrid(x, y)
    d_cam = np.stack([(X - cx_n) / fx_n, (Y - cy_n) / fy_n, np.ones_like(X)], axis=-1)
    d = d_cam @ world_from_cam[:3, :3].T
    return np.concatenate([d, np.broadcast_to(world_from_cam[:3, 3], d.shape)], axis=-1)


def test_da3_ray_layout_matches_official_decoder():
    """The official ray->pose decoder reads channels 0:3 as R K^-1 [u,v,1] and 3:6 as the camera centre."""
    torch = pytest.importorskip("torch")
    ray_utils = pytest.importorskip("depth_anything_3.utils.ray_utils", reason="official DA3 package not installed")
    torch.manual_seed(0)
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = Rotation.from_rotvec([0.1, -0.25, 0.05]).as_matrix()
    world_from_cam[:3, 3] = [0.3, -1.2, 2.0]
    # Centred principal point: the official QL split is exact only then.
    rays = _ray_map(world_from_cam, 1.3, 1.6, 1.0, 1.0, 16, 24)
    R, T, focal, pp = ray_utils.camray_to_caminfo(
        torch.tensor(rays[None, None], dtype=torch.float32), torch.ones(1, 1, 16, 24)
    )
    np.testing.assert_allclose(R[0, 0].numpy(), world_from_cam[:3, :3], atol=1e-5)
    np.testing.assert_allclose(T[0, 0].numpy(), world_from_cam[:3, 3], atol=1e-5)
    np.testing.assert_allclose(focal[0, 0].numpy(), [1.3, 1.6], atol=1e-4)
    np.testing.assert_allclose(pp[0, 0].numpy(), [1.0, 1.0], atol=1e-4)


def test_points_from_rays_match_unprojected_depth(rng):
    """origin + depth * direction on the ray grid equals unproject_depth with the ray grid's intrinsics."""
    hr, wr = 8, 12
    fx_n, fy_n, cx_n, cy_n = 1.2, 1.5, 1.1, 0.9
    world_from_cam = _look_at(np.array([0.2, 0.1, -0.5]), np.array([0.0, 0.5, 4.0]))
    rays_raw = _ray_map(world_from_cam, fx_n, fy_n, cx_n, cy_n, hr, wr)
    # Normalised [0, 2] image -> pixel-centre coordinates of the (hr, wr) grid.
    K = np.array([[fx_n * wr / 2, 0, cx_n * wr / 2 - 0.5], [0, fy_n * hr / 2, cy_n * hr / 2 - 0.5], [0, 0, 1]])
    depth = rng.uniform(1.0, 4.0, size=(1, hr, wr)).astype(np.float32)
    expected = unproject_depth(depth, K[None], world_from_cam[None])
    got_raw = points_from_rays(rays_raw[None].astype(np.float32), depth, layout="direction_origin")
    np.testing.assert_allclose(got_raw, expected, rtol=1e-5, atol=1e-5)
    rays_pred = np.concatenate([rays_raw[..., 3:], rays_raw[..., :3]], axis=-1)  # Prediction.rays layout
    got = points_from_rays(rays_pred[None].astype(np.float32), depth)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Swapping the layout gives different points (the pin can fail).
    assert not np.allclose(points_from_rays(rays_pred[None].astype(np.float32), depth, layout="direction_origin"), expected)
