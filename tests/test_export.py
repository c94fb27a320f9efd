"""Exports: TUM / KITTI cover every processed frame; PLY is exact through open3d; exports follow pose rewrites."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import ExportError
from da3stream.io.export.run_exports import export_kitti, export_ply, export_tum
from da3stream.io.export.ply import PlyWriter, read_ply, write_ply
from da3stream.io.store import ChunkRecord, RunStore
from da3stream.io.export.trajectory import read_kitti, read_tum
from da3stream.alignment.voxel import voxel_downsample

DEPTH_HW = (12, 16)


def random_sim3(rng: np.random.Generator, scale_range=(0.5, 2.0)) -> Sim3:
    return Sim3(rng.uniform(*scale_range), Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(),
                rng.normal(size=3) * 3)


def make_store(path, n_chunks: int = 4, seed: int = 0, n_new: int = 6, overlap: int = 2, points: int = 50) -> RunStore:
    """A store of ``n_chunks`` windows with random chunk poses, per-chunk Sim(3)s and map points."""
    rng = np.random.default_rng(seed)
    h, w = DEPTH_HW
    store = RunStore.create(path, config={"chunk_size": n_new + overlap, "overlap": overlap}, model={"id": "test"},
                            source={"kind": "synthetic", "seed": seed}, image_hw=(2 * h, 2 * w), depth_hw=DEPTH_HW,
                            descriptor_dim=None, save_rgb=True, save_conf=True)
    nf = 0
    for c in range(n_chunks):
        chunk_from_cam = np.tile(np.eye(4), (n_new, 1, 1))
        chunk_from_cam[:, :3, :3] = Rotation.random(n_new, random_state=seed * 100 + c).as_matrix()
        chunk_from_cam[:, :3, 3] = rng.normal(size=(n_new, 3))
        world_from_chunk = random_sim3(rng)
        idx = np.arange(nf, nf + n_new) * 3 + 1  # every third source frame was kept
        store.append_chunk(ChunkRecord(
            chunk_id=c, frame_start=max(0, nf - overlap), frame_index=idx,
            frame_timestamp=idx / 29.97 + rng.uniform(0, 1e-3, n_new), chunk_from_cam=chunk_from_cam,
            world_from_cam=world_from_chunk.apply_pose(chunk_from_cam),
            intrinsics=np.tile(np.diag([20.0, 20.0, 1.0]), (n_new, 1, 1)),
            depth=rng.uniform(1, 5, (n_new, h, w)), conf=rng.uniform(1, 3, (n_new, h, w)),
            rgb=rng.integers(0, 256, (n_new, h, w, 3), dtype=np.uint8), world_from_chunk=world_from_chunk,
            points_xyz=rng.normal(size=(points, 3)).astype(np.float32),
            points_rgb=rng.integers(0, 256, (points, 3), dtype=np.uint8),
            points_conf=rng.uniform(1, 2, points),
        ))
        nf += n_new
    return store


def expected_world_points(store: RunStore) -> np.ndarray:
    """Map points composed with world_from_chunk, computed independently of the store's reader."""
    t = store.chunks_table()
    xyz_chunk, _ = store.map_points(world=False)
    out = []
    for c in range(t["world_from_chunk"].shape[0]):
        W = Sim3.from_array(t["world_from_chunk"][c])
        pts = xyz_chunk[t["point_start"][c]:t["point_stop"][c]].astype(np.float64)
        out.append((W.s * pts @ W.R.T + W.t).astype(np.float32))
    return np.concatenate(out)


def test_trajectory_exports_cover_every_frame(tmp_path):
    store = make_store(tmp_path / "run.zarr")
    table = store.frames_table()
    assert export_tum(store, tmp_path / "t.txt") == 24
    ts, T = read_tum(tmp_path / "t.txt")
    np.testing.assert_array_equal(ts, table["timestamp"])
    np.testing.assert_allclose(T, table["world_from_cam"], atol=1e-12)
    assert export_kitti(str(tmp_path / "run.zarr"), tmp_path / "k.txt") == 24  # by path too
    np.testing.assert_array_equal(read_kitti(tmp_path / "k.txt"), table["world_from_cam"])
    store.close()


def test_ply_export_is_exact_through_open3d(tmp_path):
    o3d = pytest.importorskip("open3d", reason="open3d reads PLY back")
    store = make_store(tmp_path / "run.zarr")
    n = export_ply(store, tmp_path / "map.ply")
    assert n == 4 * 50
    pcd = o3d.io.read_point_cloud(str(tmp_path / "map.ply"))
    xyz, rgb = store.map_points()
    np.testing.assert_array_equal(np.asarray(pcd.points), xyz.astype(np.float64))
    np.testing.assert_array_equal(np.rint(np.asarray(pcd.colors) * 255).astype(np.uint8), rgb)
    np.testing.assert_allclose(xyz, expected_world_points(store), rtol=1e-6, atol=1e-6)
    store.close()


def test_exports_follow_a_pose_rewrite(tmp_path):
    store = make_store(tmp_path / "run.zarr")
    export_tum(store, tmp_path / "before.txt")
    export_ply(store, tmp_path / "before.ply")
    # a loop closure moves chunks 2 and 3 by a correction
    t = store.chunks_table()
    frames = store.frames_table()
    correction = random_sim3(np.random.default_rng(5))
    new_wfc = [Sim3.from_array(a) for a in t["world_from_chunk"]]
    new_wfc[2:] = [correction @ W for W in new_wfc[2:]]
    new_cam = np.stack([new_wfc[c].apply_pose(P) for c, P in zip(frames["chunk_id"], frames["chunk_from_cam"])])
    store.rewrite_poses(np.stack([W.to_array() for W in new_wfc]), new_cam)

    export_tum(store, tmp_path / "after.txt")
    export_ply(store, tmp_path / "after.ply")
    _, T_before = read_tum(tmp_path / "before.txt")
    _, T_after = read_tum(tmp_path / "after.txt")
    np.testing.assert_allclose(T_after, new_cam, atol=1e-12)
    np.testing.assert_allclose(T_after[:12], T_before[:12], atol=1e-12)  # chunks 0-1 untouched
    assert np.abs(T_after[12:, :3, 3] - T_before[12:, :3, 3]).max() > 0.1
    before, after = read_ply(tmp_path / "before.ply"), read_ply(tmp_path / "after.ply")
    np.testing.assert_allclose(after["xyz"], expected_world_points(store), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(after["xyz"][:100], before["xyz"][:100])
    expected_moved = correction.apply(before["xyz"][100:].astype(np.float64))
    np.testing.assert_allclose(after["xyz"][100:], expected_moved, rtol=1e-5, atol=1e-5)
    store.close()


def test_voxel_export_matches_voxel_downsample(tmp_path):
    store = make_store(tmp_path / "run.zarr", points=400)
    n = export_ply(store, tmp_path / "v.ply", voxel=0.5)
    got = read_ply(tmp_path / "v.ply")
    want_xyz, want_rgb = voxel_downsample(*store.map_points(), 0.5)
    assert n == want_xyz.shape[0] < 1600
    np.testing.assert_array_equal(got["xyz"], want_xyz)
    np.testing.assert_array_equal(got["rgb"], want_rgb)
    store.close()


def test_voxel_downsample_averages_within_voxels():
    xyz = np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.2, 0.1, 0.1], [np.nan, 0, 0]], np.float32)
    rgb = np.array([[0, 0, 0], [100, 50, 1], [7, 7, 7], [9, 9, 9]], np.uint8)
    out_xyz, out_rgb = voxel_downsample(xyz, rgb, 1.0)
    np.testing.assert_allclose(out_xyz, [[0.2, 0.2, 0.2], [1.2, 0.1, 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(out_rgb, [[50, 25, 0], [7, 7, 7]])  # 0.5 rounds to even


def test_ply_round_trip_with_normals(tmp_path, rng):
    o3d = pytest.importorskip("open3d", reason="open3d reads PLY back")
    xyz = rng.normal(size=(1000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (1000, 3), dtype=np.uint8)
    normals = rng.normal(size=(1000, 3)).astype(np.float32)
    write_ply(tmp_path / "n.ply", xyz, rgb, normals)
    back = read_ply(tmp_path / "n.ply")
    np.testing.assert_array_equal(back["xyz"], xyz)
    np.testing.assert_array_equal(back["rgb"], rgb)
    np.testing.assert_array_equal(back["normals"], normals)
    pcd = o3d.io.read_point_cloud(str(tmp_path / "n.ply"))
    np.testing.assert_array_equal(np.asarray(pcd.points), xyz.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(pcd.normals), normals.astype(np.float64))
    assert (tmp_path / "n.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_ply_writer_refuses_a_wrong_count_and_leaves_no_file(tmp_path):
    xyz = np.zeros((3, 3), np.float32)
    rgb = np.zeros((3, 3), np.uint8)
    with pytest.raises(ExportError, match="2 points written, 3 declared"):
        with PlyWriter(tmp_path / "x.ply", 3) as w:
            w.write(xyz[:2], rgb[:2])
    assert not (tmp_path / "x.ply").exists() and not list(tmp_path.iterdir())
    with pytest.raises(ExportError, match="more points written"):
        with PlyWriter(tmp_path / "x.ply", 2) as w:
            w.write(xyz, rgb)
    assert not list(tmp_path.iterdir())


def test_empty_store_and_bad_arguments(tmp_path):
    store = RunStore.create(tmp_path / "e.zarr", config={}, model={}, source={}, image_hw=(4, 4), depth_hw=(4, 4),
                            descriptor_dim=None, save_rgb=False, save_conf=False)
    with pytest.raises(ExportError, match="no committed frames"):
        export_tum(store, tmp_path / "t.txt")
    assert export_ply(store, tmp_path / "e.ply") == 0
    assert read_ply(tmp_path / "e.ply")["xyz"].shape == (0, 3)
    with pytest.raises(ExportError, match="voxel must be a positive number"):
        export_ply(store, tmp_path / "e.ply", voxel=-1.0)
    with pytest.raises(ExportError, match="not a PLY file"):
        (tmp_path / "junk.ply").write_bytes(b"hello")
        read_ply(tmp_path / "junk.ply")
    store.close()


def test_ply_min_conf_drops_low_confidence_points_through_open3d(tmp_path):
    o3d = pytest.importorskip("open3d", reason="open3d reads PLY back")
    from da3stream.cli import main

    store = make_store(tmp_path / "run.zarr")
    xyz_all, rgb_all = store.map_points()
    conf = np.concatenate([b.conf for b in store.iter_map_points()]).astype(np.float32)
    keep = conf >= 1.5
    assert 0 < keep.sum() < keep.size
    n = export_ply(store, tmp_path / "map.ply", min_conf=1.5)
    assert n == int(keep.sum())
    pcd = o3d.io.read_point_cloud(str(tmp_path / "map.ply"))
    np.testing.assert_array_equal(np.asarray(pcd.points), xyz_all[keep].astype(np.float64))
    np.testing.assert_array_equal(np.rint(np.asarray(pcd.colors) * 255).astype(np.uint8), rgb_all[keep])
    # with a voxel: the kept points, voxel-downsampled
    n_vox = export_ply(store, tmp_path / "vox.ply", voxel=0.5, min_conf=1.5)
    assert n_vox == voxel_downsample(xyz_all[keep], rgb_all[keep], 0.5)[0].shape[0]
    with pytest.raises(ExportError, match="min_conf must be a finite number"):
        export_ply(store, tmp_path / "bad.ply", min_conf=float("nan"))
    store.close()
    assert main(["export", str(tmp_path / "run.zarr"), "--ply", str(tmp_path / "cli.ply"), "--min-conf", "1.5", "--quiet"]) == 0
    assert np.asarray(o3d.io.read_point_cloud(str(tmp_path / "cli.ply")).points).shape == (int(keep.sum()), 3)
