"""Synthetic worlds, camera paths and rendering: geometry, conventions and files."""

from __future__ import annotations

import numpy as np
import pytest

from da3stream.errors import ConfigError, ExportError
from da3stream.synthetic import (
    PRESETS,
    Material,
    MeshBuilder,
    SyntheticSequence,
    cast,
    corridor_world,
    intrinsics_from_fov,
    look_at,
    make_path,
    make_sequence,
    pose_from_angles,
    read_tum,
    render_sequence,
    render_views,
    scale_intrinsics,
    walk,
)

F32_REL = 2e-5  # relative tolerance of float32 ray casting


@pytest.fixture(scope="module")
def demo_small():
    """The demo preset at a small size (shared by several tests, rendered lazily)."""
    return make_sequence("demo", n_frames=60, width=96, height=72)


def _plane_world(z0: float) -> "object":
    b = MeshBuilder()
    m = b.material(Material("tiles", (0.9, 0.9, 0.9), (0.1, 0.1, 0.1), scale=0.5))
    b.quad((-1000.0, -1000.0, z0), (2000.0, 0.0, 0.0), (0.0, 2000.0, 0.0), m)
    return b.build("plane")


def test_plane_depth_matches_analytic_geometry():
    z0 = -1.5  # floor plane z = z0; camera above it looking down and forward
    world = _plane_world(z0)
    P = pose_from_angles(np.array([[0.3, -0.2, 0.0]]), np.array([0.4]), np.array([-0.25]), np.array([0.1]))
    K = intrinsics_from_fov(64, 48, 60.0)
    depth = cast(world, P, K, (48, 64))["depth"][0]
    # analytic: ray X = c + t * R K^-1 [u, v, 1]; hits z = z0 at t = (z0 - c_z) / d_z; t is the z-depth
    u, v = np.meshgrid(np.arange(64.0), np.arange(48.0))
    d = np.einsum("ij,hwj->hwi", P[0, :3, :3] @ np.linalg.inv(K), np.stack([u, v, np.ones_like(u)], -1))
    t = (z0 - P[0, 2, 3]) / d[..., 2]
    hit = (t > 0) & (t < 500.0)  # well inside the 2 km plane
    miss = t <= 0  # above the horizon
    assert hit.mean() > 0.5 and miss.sum() > 50  # horizon in view: both hits and misses are tested
    assert np.all(np.isfinite(depth[hit])) and np.all(np.isinf(depth[miss]))
    expected = t
    np.testing.assert_allclose(depth[hit], expected[hit], rtol=F32_REL)


def test_projection_conventions_opencv():
    # yaw 0, pitch 0: the camera looks along world +x, image right = world -y, image down = world -z
    P = pose_from_angles(np.zeros((1, 3)), np.zeros(1), np.zeros(1), np.zeros(1))[0]
    np.testing.assert_allclose(P[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)
    K = intrinsics_from_fov(320, 240, 70.0)
    cam_from_world = np.linalg.inv(P)
    for X, check in (((5.0, 0.0, 0.0), lambda uv: np.allclose(uv, K[:2, 2])),
                     ((5.0, 1.0, 0.0), lambda uv: uv[0] < K[0, 2]),  # world left -> image left
                     ((5.0, 0.0, 1.0), lambda uv: uv[1] < K[1, 2])):  # world up -> image up
        Xc = cam_from_world @ np.array([*X, 1.0])
        assert Xc[2] > 0  # in front: +z
        uv = (K @ (Xc[:3] / Xc[2]))[:2]
        assert check(uv), (X, uv)
    # a rendered surface point re-projects onto its own pixel and its z is the depth there
    world = make_sequence("demo", n_frames=2).world
    Pr = look_at((-5.0, -2.5, 1.6), (0.0, 0.0, 1.0))
    hits = cast(world, Pr[None], K, (240, 320))
    for v, u in ((17, 29), (120, 160), (200, 300)):
        X = hits["points"][0, v, u].astype(np.float64)
        Xc = np.linalg.inv(Pr) @ np.append(X, 1.0)
        np.testing.assert_allclose(Xc[2], hits["depth"][0, v, u], rtol=F32_REL)
        np.testing.assert_allclose((K @ (Xc[:3] / Xc[2]))[:2], (u, v), atol=2e-3)


def test_multiview_depth_consistency(demo_small):
    seq = demo_small
    K = seq.intrinsics
    h, w = seq.image_hw
    for i, j in ((0, 3), (10, 14), (30, 33)):
        di, dj = seq.depth(i), seq.depth(j)
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        pts_cam = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)]) * di.ravel()
        pts_world = seq.world_from_cam[i, :3, :3] @ pts_cam + seq.world_from_cam[i, :3, 3:4]
        Pj = np.linalg.inv(seq.world_from_cam[j])
        pj = Pj[:3, :3] @ pts_world + Pj[:3, 3:4]
        uvj = (K @ (pj / pj[2]))[:2]
        uj, vj = np.rint(uvj).astype(int)
        ok = (pj[2] > 0) & (uj >= 0) & (uj < w) & (vj >= 0) & (vj < h)
        assert ok.mean() > 0.5
        rel = np.abs(dj[vj[ok], uj[ok]] - pj[2, ok]) / pj[2, ok]
        # nearest-pixel sampling on slanted surfaces and occlusion edges allow a few outliers
        assert np.median(rel) < 0.01
        assert np.mean(rel < 0.03) > 0.9
    # and a wrong pose (frame 3 moved 2.5 m along its optical axis) is clearly detected
    wrong = seq.world_from_cam[3].copy()
    wrong[:3, 3] += 2.5 * wrong[:3, 2]
    di = seq.depth(0)
    pts_cam = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)]) * di.ravel()
    pts_world = seq.world_from_cam[0, :3, :3] @ pts_cam + seq.world_from_cam[0, :3, 3:4]
    pj = np.linalg.inv(wrong)[:3] @ np.vstack([pts_world, np.ones(u.size)])
    uvj = np.rint((K @ (pj / pj[2]))[:2]).astype(int)
    ok = (pj[2] > 0) & (uvj[0] >= 0) & (uvj[0] < w) & (uvj[1] >= 0) & (uvj[1] < h)
    assert ok.mean() > 0.1
    rel = np.abs(seq.depth(3)[uvj[1, ok], uvj[0, ok]] - pj[2, ok]) / pj[2, ok]
    assert np.median(rel) > 0.05 and np.mean(rel < 0.03) < 0.2


def test_intrinsics_scaling_keeps_rays():
    K = intrinsics_from_fov(320, 240, 70.0)
    K2 = scale_intrinsics(K, (240, 320), (120, 160))
    # pixel (u, v) of the small grid covers the same ray as (2u + 0.5, 2v + 0.5) of the big one
    for u, v in ((0, 0), (37, 81), (159, 119)):
        r_small = np.linalg.inv(K2) @ [u, v, 1.0]
        r_big = np.linalg.inv(K) @ [2 * u + 0.5, 2 * v + 0.5, 1.0]
        np.testing.assert_allclose(r_small, r_big, atol=1e-12)


def test_paths_are_rigid_and_closed():
    for name in ("walk", "robot_loop", "block_loop", "figure8", "drone_orbit", "corridor_aliasing", "static",
                 "pure_rotation"):
        path = make_path(name)
        _, P = path.sample(200)
        R = P[:, :3, :3]
        np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
        assert P.dtype == np.float64
        if path.closed:
            np.testing.assert_allclose(P[0], P[-1], atol=1e-9, err_msg=name)
        if name in ("static", "pure_rotation"):
            assert path.length_m == 0.0
        else:
            assert path.length_m > 5.0
    # a rounded rectangle (no gait): straight parts plus four quarter circles of radius 1
    assert make_path("robot_loop").length_m == pytest.approx(2 * (10 - 2) + 2 * (5.2 - 2) + 2 * np.pi, rel=1e-4)


def test_walk_has_fast_turn_static_stretch_and_slow_part():
    path = walk()
    t, P = path.sample(path.natural_frames)
    yaw = np.unwrap(np.arctan2(P[:, 1, 2], P[:, 0, 2]))
    rate = np.degrees(np.abs(np.diff(yaw))) * path.fps
    speed = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1) * path.fps
    assert rate.max() > 120.0  # a fast turn
    static = np.all(np.abs(np.diff(P, axis=0)) < 1e-12, axis=(1, 2))
    assert static.sum() >= int(1.0 * path.fps)  # at least a second without any motion
    moving = speed[speed > 0.05]
    assert moving.min() < 0.6 < 1.2 < moving.max()  # slow and normal walking speeds


def test_presets_render_with_finite_depth():
    for name in PRESETS:
        seq = make_sequence(name, n_frames=5, width=48, height=36)
        assert len(seq) == 5 and seq.images().shape == (5, 36, 48, 3)
        d = seq.depths()
        assert d.dtype == np.float32 and np.all(np.isfinite(d)), name  # backdrops/walls close every world
        assert np.all(d > 0.05), name
        assert seq.timestamps[1] - seq.timestamps[0] == pytest.approx(1.0 / seq.fps)
    cut = make_sequence("scene_cut", n_frames=40, width=32, height=24)
    (k,) = cut.events["cut_frames"]
    jumps = np.linalg.norm(np.diff(cut.world_from_cam[:, :3, 3], axis=0), axis=1)
    assert int(np.argmax(jumps)) + 1 == k and jumps.max() > 100.0
    assert cut.path_length_m < 200.0  # the teleport is not counted


def test_corridor_segments_look_alike():
    world = corridor_world(n_segments=6, segment_length=6.0)
    K = intrinsics_from_fov(80, 60, 70.0)
    a = look_at((1.0, -0.2, 1.6), (3.0, 1.2, 1.4))  # towards the left wall
    b = a.copy()
    b[0, 3] += 12.0  # two segments further on: same view
    c = a.copy()
    c[0, 3] += 3.0  # half a segment: a different view
    out = render_views(world, np.stack([a, b, c]), K, (60, 80), noise_std=0.0)
    near = out["depth"][0] < 6.0  # farther away the views differ (the corridor ends)
    assert near.mean() > 0.7
    np.testing.assert_allclose(out["depth"][0][near], out["depth"][1][near], rtol=1e-4)
    assert np.abs(out["rgb"][0].astype(int) - out["rgb"][1])[near].max() <= 2
    assert np.abs(out["rgb"][0].astype(int) - out["rgb"][2]).mean() > 10
    ap = world.appearance_position(np.array([[1.0, 0.2, 1.6], [13.0, 0.2, 1.6], [4.0, 0.2, 1.6]]))
    np.testing.assert_allclose(ap[0], ap[1], atol=1e-9)
    assert np.linalg.norm(ap[0] - ap[2]) > 1.0


def test_rendering_is_deterministic_and_batch_independent(demo_small):
    seq = demo_small
    a = render_sequence(seq.world, walk(), 60, 96, 72, 70.0, seed=0)
    a.render_batch = 7
    b = render_sequence(seq.world, walk(), 60, 96, 72, 70.0, seed=0)
    b.render_batch = 3
    np.testing.assert_array_equal(a.images([5, 6, 7]), b.images([7, 6, 5])[::-1])
    np.testing.assert_array_equal(a.images([5]), seq.images([5]))
    c = render_sequence(seq.world, walk(), 60, 96, 72, 70.0, seed=1)
    assert not np.array_equal(a.rgb(5), c.rgb(5))  # the seed changes the sensor noise


def test_textures_have_contrast_and_textureless_has_little():
    def grad_energy(img):
        g = img.astype(np.float64).mean(axis=-1)
        return float(np.mean(np.abs(np.diff(g, axis=0))) + np.mean(np.abs(np.diff(g, axis=1))))

    tex = make_sequence("demo", n_frames=4, width=160, height=120, noise_std=0.0)
    plain = make_sequence("textureless", n_frames=4, width=160, height=120, noise_std=0.0)
    e_tex = np.mean([grad_energy(im) for im in tex.images()])
    e_plain = np.mean([grad_energy(im) for im in plain.images()])
    assert e_tex > 8.0
    assert e_plain < 0.4 * e_tex
    assert tex.images().std() > 40.0


def test_video_round_trip(tmp_path):
    av = pytest.importorskip("av")
    seq = make_sequence("demo", n_frames=12, width=64, height=48)
    for codec, suffix in (("libx264", ".mp4"), ("mpeg4", ".avi")):
        if codec not in av.codecs_available:
            continue
        path = tmp_path / f"demo{suffix}"
        assert seq.write_video(path, codec=codec) == 12
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 12
        assert frames[0].shape == (48, 64, 3)
        # lossy, but close to the rendered frames
        assert np.abs(frames[3].astype(int) - seq.rgb(3)).mean() < 25


def test_image_folder_names_need_natural_sort(tmp_path):
    import cv2

    seq = make_sequence("demo", n_frames=12, width=32, height=24)
    written = seq.write_image_folder(tmp_path / "imgs")
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert len(names) == 12
    assert names[:3] == ["frame_0.png", "frame_1.png", "frame_10.png"]  # plain sort is wrong
    assert [p.name for p in written] == [f"frame_{i}.png" for i in range(12)]
    back = cv2.imread(str(tmp_path / "imgs" / "frame_10.png"))[..., ::-1]
    np.testing.assert_array_equal(back, seq.rgb(10))  # png is lossless


def test_tum_round_trip(tmp_path, demo_small):
    from scipy.spatial.transform import Rotation

    seq = demo_small
    path = seq.write_tum(tmp_path / "gt.tum")
    first = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")][0].split()
    assert len(first) == 8
    np.testing.assert_allclose([float(x) for x in first[1:4]], seq.world_from_cam[0, :3, 3], atol=1e-8)
    np.testing.assert_allclose([float(x) for x in first[4:8]],
                               Rotation.from_matrix(seq.world_from_cam[0, :3, :3]).as_quat(), atol=1e-8)  # quat_xyzw
    ts, P = read_tum(path)
    np.testing.assert_allclose(ts, seq.timestamps, atol=1e-9)
    np.testing.assert_allclose(P, seq.world_from_cam, atol=1e-7)
    bad = tmp_path / "bad.tum"
    bad.write_text("0 1 2 3\n")
    with pytest.raises(ExportError, match="bad.tum:1"):
        read_tum(bad)


def test_npz_round_trip_rebuilds_world(tmp_path):
    seq = make_sequence("aliasing", n_frames=6, width=40, height=30)
    p = seq.save_npz(tmp_path / "seq.npz")
    back = SyntheticSequence.load(p)
    np.testing.assert_array_equal(back.images(), seq.images())
    np.testing.assert_array_equal(back.depths(), seq.depths())
    np.testing.assert_array_equal(back.world_from_cam, seq.world_from_cam)
    assert back.world is not None and back.world.alias_period == seq.world.alias_period
    K2 = scale_intrinsics(seq.intrinsics, (30, 40), (15, 20))
    np.testing.assert_array_equal(back.gt_depth([2], K2, (15, 20)), seq.gt_depth([2], K2, (15, 20)))
    gt_only = SyntheticSequence.load(seq.save_npz(tmp_path / "gt_only.npz", with_images=False))
    np.testing.assert_array_equal(gt_only.depths([1]), seq.depths([1]))  # re-rendered from the recipe


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        make_sequence("nope")
    with pytest.raises(ConfigError, match="unknown path"):
        make_path("nope")
    with pytest.raises(ConfigError, match="Material.kind"):
        Material("velvet", (0, 0, 0), (1, 1, 1))
    seq = make_sequence("static", n_frames=3, width=16, height=12)
    with pytest.raises(Exception, match="out of range"):
        seq.images([3])


def test_command_line_write_and_list(tmp_path, capsys):
    import json

    from da3stream.synthetic.__main__ import main

    assert main(["list"]) == 0
    assert "demo" in json.loads(capsys.readouterr().out)
    rc = main(["write", "static", "--frames", "3", "--width", "32", "--height", "24", "--tum", str(tmp_path / "gt.tum"),
               "--images", str(tmp_path / "imgs")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 3 and len(read_tum(tmp_path / "gt.tum")[0]) == 3
    assert main(["write", "nope"]) == 2  # ConfigError exit code, one line on stderr
    assert capsys.readouterr().err.count("\n") == 1
