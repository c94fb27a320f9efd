"""COLMAP export: read back with pycolmap (text and binary); counts, poses, cameras, reprojection, line layout."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import invert_rigid
from da3stream.cli import main
from da3stream.errors import ExportError
from da3stream.io.export.colmap import export_colmap, group_intrinsics, spread_tracks
from da3stream.io.store import RunStore
from tests.export_helpers import (
    N_NEW, PLANE_IMAGE_HW, PLANE_K, file_source_store, n_wall_points, pipeline_store, plane_store,
)

pycolmap = pytest.importorskip("pycolmap", reason="pycolmap reads the models back")

REPROJ_ATOL = 1e-6
"""Pixels: observations are exact float64 projections."""


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    return pipeline_store(tmp_path_factory.mktemp("run") / "run.zarr")


def cam_from_world_3x4(image) -> np.ndarray:
    cfw = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
    return np.asarray(cfw.matrix())


def reprojection_errors(rec) -> tuple[np.ndarray, int]:
    """Pixel distance between every observation and its 3D point projected by pycolmap; and the count."""
    errs = []
    for image in rec.images.values():
        cam = rec.cameras[image.camera_id]
        M = cam_from_world_3x4(image)
        obs = [(p.xy, p.point3D_id) for p in image.points2D]
        if not obs:
            continue
        xy = np.array([o[0] for o in obs])
        X = np.array([rec.points3D[o[1]].xyz for o in obs])
        x_cam = X @ M[:3, :3].T + M[:3, 3]
        assert np.all(x_cam[:, 2] > 0)
        errs.append(np.linalg.norm(np.asarray(cam.img_from_cam(x_cam)) - xy, axis=1))
    e = np.concatenate(errs) if errs else np.zeros(0)
    return e, e.size


def check_against_store(rec, st: RunStore, stats: dict, rows=None) -> None:
    table = st.frames_table()
    rows = np.arange(st.n_frames) if rows is None else rows
    assert rec.num_images() == stats["images"] == len(rows)
    assert rec.num_points3D() == stats["points"]
    assert rec.num_cameras() == stats["cameras"]
    H, W = st.image_hw
    by_name = {im.name: im for im in rec.images.values()}
    for r in rows:
        image = by_name[f"frame_{int(table['index'][r]):06d}.png"]
        # pose: cam_from_world is the inverse of the store's world_from_cam
        np.testing.assert_allclose(cam_from_world_3x4(image), invert_rigid(table["world_from_cam"][r])[:3], atol=1e-9)
        # camera: PINHOLE at the original resolution, principal point shifted to COLMAP's corner origin
        cam = rec.cameras[image.camera_id]
        assert (cam.width, cam.height) == (W, H) and cam.model_name == "PINHOLE"
        K = table["intrinsics"][r]
        np.testing.assert_allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], atol=1e-6)
    errors, n_obs = reprojection_errors(rec)
    assert n_obs == stats["observations"] > 0
    assert errors.max() < REPROJ_ATOL
    # every 3D point has a track whose elements point back at it
    for pid, point in rec.points3D.items():
        elements = point.track.elements
        assert len(elements) >= 1
        for el in elements:
            assert rec.images[el.image_id].points2D[el.point2D_idx].point3D_id == pid


@pytest.mark.parametrize("fmt", ["text", "bin"])
def test_pipeline_run_round_trips_through_pycolmap(tmp_path, run_path, fmt):
    st = RunStore.open(run_path)
    stats = export_colmap(st, tmp_path / "sparse", fmt=fmt)
    ext = ".txt" if fmt == "text" else ".bin"
    assert sorted(p.name for p in (tmp_path / "sparse").iterdir()) == sorted(f"{n}{ext}" for n in ("cameras", "images", "points3D"))
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    check_against_store(rec, st, stats)
    # one camera per distinct intrinsics
    assert stats["cameras"] == len(np.unique(st.frames_table()["intrinsics"].reshape(-1, 9), axis=0))
    # points: the fused map in the world frame, with its colours; almost all of it is seen by its chunk's frames
    xyz_map, rgb_map = st.map_points(world=True)
    assert stats["points"] + stats["points_without_view"] == xyz_map.shape[0]
    assert stats["points_without_view"] < 0.02 * xyz_map.shape[0]
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    rgb = np.array([p.color for p in rec.points3D.values()])
    dist, nn = cKDTree(xyz_map.astype(np.float64)).query(xyz)
    assert dist.max() < 1e-5 * max(1.0, float(np.abs(xyz_map).max()))
    np.testing.assert_array_equal(rgb, rgb_map[nn])
    assert rec.compute_mean_track_length() > 2.0  # points are seen by several frames of their window


def test_text_and_binary_models_are_identical(tmp_path, run_path):
    export_colmap(run_path, tmp_path / "t", fmt="text")
    export_colmap(run_path, tmp_path / "b", fmt="bin")
    a, b = pycolmap.Reconstruction(str(tmp_path / "t")), pycolmap.Reconstruction(str(tmp_path / "b"))
    assert sorted(a.images) == sorted(b.images) and sorted(a.points3D) == sorted(b.points3D)
    for i in a.images:
        np.testing.assert_array_equal(cam_from_world_3x4(a.images[i]), cam_from_world_3x4(b.images[i]))
        np.testing.assert_array_equal([p.xy for p in a.images[i].points2D], [p.xy for p in b.images[i].points2D])
    for p in a.points3D:
        np.testing.assert_array_equal(a.points3D[p].xyz, b.points3D[p].xyz)


def test_images_txt_has_two_lines_per_image_even_without_observations(tmp_path):
    """The frame that looks away observes nothing: its POINTS2D line is present and empty."""
    st = plane_store(tmp_path / "p.zarr")
    stats = export_colmap(st, tmp_path / "t", fmt="text")
    lines = (tmp_path / "t" / "images.txt").read_text().split("\n")
    assert lines[-1] == ""  # file ends with a newline
    data = [ln for ln in lines[:-1] if not ln.startswith("#")]
    assert len(data) == 2 * stats["images"] == 2 * 2 * N_NEW
    assert data[-1] == "" and data[-2].endswith("frame_000014.png")
    assert all(data[k] for k in range(1, len(data) - 2, 2))  # the other images do observe points
    rec = pycolmap.Reconstruction(str(tmp_path / "t"))
    assert rec.num_images() == 2 * N_NEW
    assert rec.images[2 * N_NEW].num_points2D() == 0
    check_against_store(rec, st, stats)
    st.close()


def test_quaternions_are_written_w_first(tmp_path):
    st = plane_store(tmp_path / "p.zarr")
    export_colmap(st, tmp_path / "t", fmt="text")
    rows = [ln for ln in (tmp_path / "t" / "images.txt").read_text().split("\n") if ln and not ln.startswith("#")]
    table = st.frames_table()
    first = rows[0].split()
    quat_wxyz = np.array([float(v) for v in first[1:5]])
    t = np.array([float(v) for v in first[5:8]])
    cam_from_world = invert_rigid(table["world_from_cam"][0])
    quat_xyzw = Rotation.from_matrix(cam_from_world[:3, :3]).as_quat()
    quat_xyzw *= np.sign(quat_xyzw[3])
    np.testing.assert_allclose(quat_wxyz, np.r_[quat_xyzw[3], quat_xyzw[:3]], atol=1e-12)
    np.testing.assert_allclose(t, cam_from_world[:3, 3], atol=1e-12)
    assert quat_wxyz[0] >= 0
    st.close()


def test_occluded_points_are_not_observed(tmp_path):
    """Points behind the wall project into every frame but fail the depth test; without it they are observed."""
    st = plane_store(tmp_path / "p.zarr")
    with_test = export_colmap(st, tmp_path / "a", fmt="bin")
    assert with_test["points_without_view"] == 2 * n_wall_points()  # every hidden point, in both windows
    assert with_test["points"] == 2 * n_wall_points()
    without = export_colmap(st, tmp_path / "b", fmt="bin", depth_tolerance=None)
    assert without["points_without_view"] == 0 and without["points"] == 4 * n_wall_points()
    rec = pycolmap.Reconstruction(str(tmp_path / "a"))
    check_against_store(rec, st, with_test)
    # the wall points all lie in front of the hidden ones: every written point is a wall point
    table = st.frames_table()
    for image in rec.images.values():
        row = int(np.flatnonzero(table["index"] == int(image.name[6:12]))[0])
        M = cam_from_world_3x4(image)
        for p in image.points2D:
            z = (M[:3, :3] @ rec.points3D[p.point3D_id].xyz + M[:3, 3])[2]
            assert z < 6.5 * (2.5 if table["chunk_id"][row] == 1 else 1.0)
    st.close()


def test_cameras_are_grouped_by_intrinsics(tmp_path):
    st = plane_store(tmp_path / "p.zarr", fx_step=0.01, away=False)
    per_frame = export_colmap(st, tmp_path / "a", fmt="bin")
    assert per_frame["cameras"] == 2 * N_NEW
    shared = export_colmap(st, tmp_path / "b", fmt="bin", intrinsics_tol=1.0)
    assert shared["cameras"] == 1
    rec = pycolmap.Reconstruction(str(tmp_path / "b"))
    assert rec.num_cameras() == 1
    np.testing.assert_allclose(rec.cameras[1].params, [PLANE_K[0, 0], PLANE_K[1, 1], PLANE_K[0, 2] + 0.5, PLANE_K[1, 2] + 0.5])
    assert (rec.cameras[1].width, rec.cameras[1].height) == PLANE_IMAGE_HW[::-1]
    errors, n = reprojection_errors(rec)  # observations follow the shared camera
    assert n == shared["observations"] > 0 and errors.max() < REPROJ_ATOL
    group, reps = group_intrinsics(np.array([[1.0, 1, 0, 0], [1.05, 1, 0, 0], [1.2, 1, 0, 0], [1.0, 1, 0, 0]]), 0.1)
    np.testing.assert_array_equal(group, [0, 0, 1, 0])
    np.testing.assert_array_equal(reps, [[1.0, 1, 0, 0], [1.2, 1, 0, 0]])
    st.close()


def test_spread_tracks_keeps_evenly_spaced_views():
    visible = np.zeros((10, 3), bool)
    visible[:, 0] = True  # seen by all 10 frames
    visible[[2, 5], 1] = True  # seen twice
    got = spread_tracks(visible, 4)
    np.testing.assert_array_equal(np.flatnonzero(got[:, 0]), [0, 3, 5, 8])  # first view of each of 4 runs
    np.testing.assert_array_equal(got[:, 1], visible[:, 1])
    assert not got[:, 2].any()
    assert got.sum(axis=0).tolist() == [4, 2, 0]


def test_every_and_max_track_length(tmp_path, run_path):
    st = RunStore.open(run_path)
    rows = np.argsort(st.frames_table()["timestamp"], kind="stable")[::3]
    stats = export_colmap(st, tmp_path / "e", fmt="bin", every=3, max_track_length=2)
    rec = pycolmap.Reconstruction(str(tmp_path / "e"))
    check_against_store(rec, st, stats, rows=rows)
    assert max(len(p.track.elements) for p in rec.points3D.values()) <= 2


def test_cli_and_errors(tmp_path, run_path):
    assert main(["export", str(run_path), "--colmap", str(tmp_path / "m"), "--colmap-format", "text", "--quiet"]) == 0
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    assert rec.num_images() == RunStore.open(run_path).n_frames
    assert main(["export", str(run_path), "--colmap", str(tmp_path / "m2"), "--quiet"]) == 0
    assert (tmp_path / "m2" / "points3D.bin").is_file()
    with pytest.raises(ExportError, match="COLMAP format must be one of text, bin"):
        export_colmap(run_path, tmp_path / "x", fmt="json")
    with pytest.raises(ExportError, match="every must be a positive integer"):
        export_colmap(run_path, tmp_path / "x", every=-2)
    empty = RunStore.create(tmp_path / "e.zarr", config={}, model={}, source={}, image_hw=(4, 4), depth_hw=(4, 4),
                            descriptor_dim=None, save_rgb=False, save_conf=False)
    with pytest.raises(ExportError, match="no committed frames"):
        export_colmap(empty, tmp_path / "x")
    empty.close()


def test_single_camera_is_shared_by_every_image(tmp_path):
    st = plane_store(tmp_path / "p.zarr", fx_step=0.5)  # every frame has its own fx
    assert export_colmap(st, tmp_path / "many", fmt="text")["cameras"] == 2 * N_NEW
    stats = export_colmap(st, tmp_path / "one", fmt="text", single_camera=True)
    rec = pycolmap.Reconstruction(str(tmp_path / "one"))
    assert stats["cameras"] == rec.num_cameras() == 1 and rec.num_images() == 2 * N_NEW
    cam = next(iter(rec.cameras.values()))
    fx = PLANE_K[0, 0] + 0.5 * np.arange(2 * N_NEW)
    np.testing.assert_allclose(cam.params, [np.median(fx), PLANE_K[1, 1], PLANE_K[0, 2] + 0.5, PLANE_K[1, 2] + 0.5])
    errors, n_obs = reprojection_errors(rec)  # observations are projected with the shared camera
    assert n_obs == stats["observations"] > 0 and errors.max() < REPROJ_ATOL
    st.close()


def test_intrinsics_equal_to_1e9_relative_share_one_camera_automatically(tmp_path):
    """A known calibration stored per frame (float noise below 1e-9 relative at fx ~ 7500 px): one camera."""
    from da3stream.io.export.colmap import _cameras

    K = np.tile(np.array([[7503.38, 0.0, 511.5], [0.0, 7503.38, 287.5], [0.0, 0.0, 1.0]]), (6, 1, 1))
    K[:, 0, 0] *= 1.0 + 1.5e-10 * np.arange(6)  # >= 1.1e-6 px apart: more than the absolute intrinsics_tol 1e-6
    group, params, _ = _cameras(K, 1e-6)
    assert params.shape[0] == 1 and not group.any()
    K[5, 0, 0] *= 1.0 + 1e-6  # a real difference: grouped by the absolute intrinsics_tol again
    assert _cameras(K, 1e-6)[1].shape[0] == 6
    assert _cameras(K, 1e-6, single=True)[1].shape[0] == 1


def test_max_points_subsamples_the_map(tmp_path, run_path):
    st = RunStore.open(run_path)
    full = export_colmap(st, tmp_path / "full", fmt="bin")
    stats = export_colmap(st, tmp_path / "small", fmt="bin", max_points=500)
    rec = pycolmap.Reconstruction(str(tmp_path / "small"))
    assert st.n_points > 500 and 0 < rec.num_points3D() == stats["points"] <= 500 < full["points"]
    check_against_store(rec, st, stats)  # poses, cameras and exact reprojection as before
    assert (tmp_path / "small" / "points3D.bin").stat().st_size < (tmp_path / "full" / "points3D.bin").stat().st_size / 4
    with pytest.raises(ExportError, match="max_points must be >= 1"):
        export_colmap(st, tmp_path / "x", max_points=0)


@pytest.mark.parametrize("kind", ["images", "video"])
def test_colmap_images_are_the_source_frames_at_the_original_resolution(tmp_path, kind):
    import cv2

    path, src, frames = file_source_store(tmp_path / "run.zarr", tmp_path / "src", kind)
    st = RunStore.open(path)
    H, W = st.image_hw
    assert (H, W) == frames.shape[1:3] and st.depth_hw != (H, W)
    stats = export_colmap(st, tmp_path / "sparse", fmt="bin", images=tmp_path / "images")
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert stats["image_files"] == rec.num_images() == st.n_frames
    for image in rec.images.values():
        img = cv2.imread(str(tmp_path / "images" / image.name))
        cam = rec.cameras[image.camera_id]
        assert img.shape[:2] == (cam.height, cam.width) == (H, W)
        index = int(image.name[len("frame_"):-len(".png")])
        np.testing.assert_array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), frames[index])
    st.close()
    # the CLI, with the source moved: --source says where it is now
    moved = tmp_path / ("moved" + src.suffix)
    src.rename(moved)
    args = ["export", str(path), "--colmap", str(tmp_path / "m"), "--colmap-images", str(tmp_path / "im"), "--quiet"]
    assert main(args) != 0  # the recorded source is gone: a one-line export error
    assert main(args + ["--source", str(moved), "--single-camera", "--max-points", "100"]) == 0
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    assert rec.num_cameras() == 1 and rec.num_points3D() <= 100
    assert sorted(p.name for p in (tmp_path / "im").iterdir()) == sorted(im.name for im in rec.images.values())
