"""nerfstudio export: the OpenGL pose convention, corner-origin intrinsics at the depth grid, images and depth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.points import unproject_depth
from da3stream.alignment.sim3 import invert_rigid
from da3stream.cli import main
from da3stream.errors import ExportError
from da3stream.io.export.depth import grid_intrinsics
from da3stream.io.export.nerfstudio import export_nerfstudio, opencv_to_opengl_world_from_cam
from da3stream.io.store import RunStore
from tests.export_helpers import N_NEW, PLANE_DEPTH_HW, file_source_store, pipeline_store, plane_store


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    return pipeline_store(tmp_path_factory.mktemp("run") / "run.zarr")


def frame_intrinsics(meta: dict, frame: dict) -> dict:
    return {k: frame.get(k, meta.get(k)) for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")}


def nerfstudio_ray(c2w: np.ndarray, intr: dict, col: int, row: int) -> tuple[np.ndarray, np.ndarray]:
    """nerfstudio's pinhole ray through the centre of pixel (row, col): pixel coordinates + 0.5,
    camera direction ((x - cx) / fx, -(y - cy) / fy, -1), rotated by the camera-to-world matrix."""
    x, y = col + 0.5, row + 0.5
    d_cam = np.array([(x - intr["cx"]) / intr["fl_x"], -(y - intr["cy"]) / intr["fl_y"], -1.0])
    return c2w[:3, 3], c2w[:3, :3] @ d_cam


def test_opengl_flip_is_an_axis_negation():
    rng = np.random.default_rng(0)
    world_from_cam = np.tile(np.eye(4), (5, 1, 1))
    world_from_cam[:, :3, :3] = Rotation.random(5, random_state=1).as_matrix()
    world_from_cam[:, :3, 3] = rng.normal(size=(5, 3))
    gl = opencv_to_opengl_world_from_cam(world_from_cam)
    np.testing.assert_array_equal(gl[:, :, 0], world_from_cam[:, :, 0])
    np.testing.assert_array_equal(gl[:, :3, 1:3], -world_from_cam[:, :3, 1:3])
    np.testing.assert_array_equal(gl[:, :, 3], world_from_cam[:, :, 3])  # same camera centre
    np.testing.assert_allclose(np.linalg.det(gl[:, :3, :3]), 1.0)
    np.testing.assert_allclose(opencv_to_opengl_world_from_cam(gl), world_from_cam)  # its own inverse


def test_projection_agrees_with_opencv(tmp_path):
    """A world point projected with the store's OpenCV pose + intrinsics and with the nerfstudio matrix +
    intrinsics lands on the same pixel (nerfstudio's coordinates are OpenCV's + 0.5)."""
    st = plane_store(tmp_path / "p.zarr", away=False)
    export_nerfstudio(st, tmp_path / "ns")
    meta = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    table = st.frames_table()
    K_grid = grid_intrinsics(st, table["intrinsics"])
    rng = np.random.default_rng(1)
    for r, frame in enumerate(meta["frames"]):
        intr = frame_intrinsics(meta, frame)
        c2w = np.array(frame["transform_matrix"])
        X = table["world_from_cam"][r] @ np.r_[rng.uniform(-1, 1, 2), rng.uniform(2, 6), 1.0]  # in front of the camera
        x_cv = invert_rigid(table["world_from_cam"][r]) @ X
        uv_cv = (K_grid[r] @ x_cv[:3])[:2] / x_cv[2]
        x_gl = np.linalg.inv(c2w) @ X
        assert x_gl[2] < 0  # nerfstudio cameras look along -z
        uv_ns = np.array([intr["fl_x"] * x_gl[0] / -x_gl[2] + intr["cx"], intr["fl_y"] * -x_gl[1] / -x_gl[2] + intr["cy"]])
        np.testing.assert_allclose(uv_ns, uv_cv + 0.5, atol=1e-9)
        np.testing.assert_array_equal(np.floor(uv_ns), np.rint(uv_cv))  # the same pixel
    st.close()


def test_depth_pixels_lie_on_nerfstudio_rays(tmp_path, run_path):
    """End to end on a pipeline run: each depth pixel unprojected the OpenCV way is the point at the exported
    depth along the ray nerfstudio generates for that pixel from transforms.json."""
    st = RunStore.open(run_path)
    info = export_nerfstudio(st, tmp_path / "ns")
    meta = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    assert info["frames"] == len(meta["frames"]) == st.n_frames
    table = st.frames_table()
    chunks = st.chunks_table()
    K_grid = grid_intrinsics(st, table["intrinsics"])
    h, w = st.depth_hw
    rng = np.random.default_rng(2)
    for r in (0, st.n_frames // 2, st.n_frames - 1):
        frame = meta["frames"][r]
        intr = frame_intrinsics(meta, frame)
        assert (intr["w"], intr["h"]) == (w, h)
        s = chunks["world_from_chunk"][table["chunk_id"][r]][0]
        depth_world = st.depth(r).astype(np.float32) * np.float32(s)
        X = unproject_depth(depth_world[None], K_grid[r][None], table["world_from_cam"][r][None])[0]
        png = cv2.imread(str(tmp_path / "ns" / frame["depth_file_path"]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == (h, w)
        c2w = np.array(frame["transform_matrix"])
        for row, col in zip(rng.integers(0, h, 20), rng.integers(0, w, 20)):
            if png[row, col] == 0:
                continue
            origin, direction = nerfstudio_ray(c2w, intr, col, row)
            point = origin + direction * (png[row, col] / 1000.0)  # z-depth: the ray has unit camera-z
            np.testing.assert_allclose(point, X[row, col], atol=1e-3 * max(1.0, float(np.abs(X[row, col]).max())))
        img = cv2.cvtColor(cv2.imread(str(tmp_path / "ns" / frame["file_path"])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(img, st.rgb(r))  # RGB order, the store's depth-grid image


def test_shared_intrinsics_are_top_level(tmp_path, run_path):
    st = plane_store(tmp_path / "p.zarr")
    info = export_nerfstudio(st, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "transforms.json").read_text())
    assert info["shared_intrinsics"] and meta["w"] == PLANE_DEPTH_HW[1] and meta["h"] == PLANE_DEPTH_HW[0]
    assert meta["fl_x"] == pytest.approx(15.0) and meta["cx"] == pytest.approx(7.75 + 0.5)
    assert not any("fl_x" in f for f in meta["frames"])
    assert all((tmp_path / "a" / f["file_path"]).is_file() and (tmp_path / "a" / f["depth_file_path"]).is_file()
               for f in meta["frames"])
    st.close()
    # different intrinsics per frame: written per frame, none at the top level
    st2 = plane_store(tmp_path / "q.zarr", fx_step=0.5)
    info = export_nerfstudio(st2, tmp_path / "b", every=2)
    meta = json.loads((tmp_path / "b" / "transforms.json").read_text())
    assert not info["shared_intrinsics"] and "fl_x" not in meta and len(meta["frames"]) == N_NEW
    assert [f["fl_x"] for f in meta["frames"]] == pytest.approx([15.0 + 0.25 * r for r in range(0, 2 * N_NEW, 2)])
    st2.close()


def test_store_without_rgb_and_cli(tmp_path, run_path):
    st = plane_store(tmp_path / "p.zarr", save_rgb=False)
    with pytest.raises(ExportError, match="keeps no RGB"):
        export_nerfstudio(st, tmp_path / "x")
    st.close()
    assert main(["export", str(run_path), "--nerfstudio", str(tmp_path / "ns"), "--every", "4", "--quiet"]) == 0
    meta = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    n = RunStore.open(run_path).n_frames
    assert len(meta["frames"]) == (n + 3) // 4
    assert main(["export", str(run_path), "--quiet"]) == 2  # nothing to export: a config error


def test_ply_file_path_is_the_world_map_read_by_open3d(tmp_path, run_path):
    """splatfacto's initial points: ``ply_file_path`` beside transforms.json, in the frame of transform_matrix."""
    o3d = pytest.importorskip("open3d", reason="open3d reads the PLY as nerfstudio does")
    st = RunStore.open(run_path)
    info = export_nerfstudio(st, tmp_path / "ns")
    meta = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    pcd = o3d.io.read_point_cloud(str(tmp_path / "ns" / meta["ply_file_path"]))
    xyz, rgb = st.map_points()  # the run's world frame = the world of transform_matrix
    assert info["points"] == len(pcd.points) == st.n_points
    np.testing.assert_array_equal(np.asarray(pcd.points), xyz.astype(np.float64))
    np.testing.assert_array_equal(np.rint(np.asarray(pcd.colors) * 255).astype(np.uint8), rgb)
    # the map lies in front of the cameras as nerfstudio sees them (looking along -z of the OpenGL camera)
    c2w = np.array(meta["frames"][0]["transform_matrix"])
    x_cam = (xyz.astype(np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
    assert np.median(x_cam[:, 2]) < 0
    info = export_nerfstudio(st, tmp_path / "small", max_points=300)
    assert 0 < info["points"] <= 300 and len(o3d.io.read_point_cloud(str(tmp_path / "small" / "points3D.ply")).points) == info["points"]
    st.close()


@pytest.mark.parametrize("kind", ["images", "video"])
def test_original_resolution_images_from_the_source(tmp_path, kind):
    path, src, frames = file_source_store(tmp_path / "run.zarr", tmp_path / "src", kind)
    st = RunStore.open(path)
    H, W = st.image_hw
    info = export_nerfstudio(st, tmp_path / "ns", original_images=True)
    meta = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    assert info["resolution_hw"] == [H, W] != list(st.depth_hw)
    table = st.frames_table()
    for frame in meta["frames"]:
        r = int(np.flatnonzero(table["index"] == frame["source_index"])[0])
        intr, K = frame_intrinsics(meta, frame), table["intrinsics"][r]
        assert (intr["w"], intr["h"]) == (W, H)  # the stored intrinsics are for this size, corner origin
        assert intr["fl_x"] == pytest.approx(K[0, 0]) and intr["cx"] == pytest.approx(K[0, 2] + 0.5)
        img = cv2.cvtColor(cv2.imread(str(tmp_path / "ns" / frame["file_path"])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(img, frames[frame["source_index"]])
    st.close()
    assert main(["export", str(path), "--nerfstudio", str(tmp_path / "cli"), "--nerfstudio-original", "--quiet"]) == 0
    assert cv2.imread(str(tmp_path / "cli" / meta["frames"][0]["file_path"])).shape[:2] == (H, W)
