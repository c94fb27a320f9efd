"""Per-frame depth export (16-bit PNG / npz) and frame selection (--every, --keyframes-only) for all exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.points import unproject_depth
from da3stream.alignment.sim3 import Sim3
from da3stream.cli import main
from da3stream.errors import ExportError
from da3stream.io.export.depth import (
    PNG16_MAX, depth_to_png16, export_depth, png16_to_depth, read_depth_export,
)
from da3stream.io.evaluation.metrics import evaluate
from da3stream.io.export.run_exports import export_kitti, export_tum, full_trajectory, trajectory
from da3stream.io.store import RunStore
from da3stream.io.export.trajectory import read_kitti, read_tum
from tests.export_helpers import CHUNK_SCALE, N_NEW, PLANE_DEPTH_HW, pipeline_store, plane_store


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    """A pipeline run with the keyframe filter on (it drops a few of the 40 frames)."""
    return pipeline_store(tmp_path_factory.mktemp("run") / "run.zarr")


def stored_world_depth(store: RunStore, row: int) -> np.ndarray:
    """Stored depth of ``row`` in world units, computed independently of the exporter."""
    c = int(store.frames_table()["chunk_id"][row])
    s = Sim3.from_array(store.chunks_table()["world_from_chunk"][c]).s
    return store.depth(row).astype(np.float32) * np.float32(s)


# ----------------------------------------------------------------------------- encoding


def test_png16_quantisation_round_trip(rng):
    depth = rng.uniform(0.2, 60.0, (30, 40)).astype(np.float32)
    depth[0, :4] = [np.nan, np.inf, -1.0, 0.0]  # invalid
    depth[1, :2] = [70.0, 1e-4]  # beyond 65.535 at scale 1000; rounds to 0
    values, lost = depth_to_png16(depth, 1000.0)
    assert values.dtype == np.uint16 and lost == 2
    assert np.all(values[0, :4] == 0) and np.all(values[1, :2] == 0)
    back = png16_to_depth(values, 1000.0)
    ok = values > 0
    assert np.all(np.isnan(back[~ok]))
    np.testing.assert_allclose(back[ok], depth[ok], atol=0.5 / 1000 + 1e-6)
    np.testing.assert_array_equal(values[ok], np.rint(depth[ok].astype(np.float64) * 1000))


def test_png16_export_round_trips_and_is_in_world_units(tmp_path):
    store = plane_store(tmp_path / "p.zarr")
    info = export_depth(store, tmp_path / "d", fmt="png16")
    assert info["frames"] == 2 * N_NEW and info["depth_scale"] == 1000.0
    manifest = json.loads((tmp_path / "d" / "depth_scale.json").read_text())
    assert manifest["depth_scale"] == 1000.0 and manifest["resolution_hw"] == list(PLANE_DEPTH_HW)
    back = read_depth_export(tmp_path / "d")
    table = store.frames_table()
    assert sorted(back) == sorted(table["index"].tolist())
    for row, index in enumerate(table["index"]):
        want = stored_world_depth(store, row)
        got = back[int(index)]["depth"]
        valid = np.isfinite(want) & (want > 0)
        assert np.array_equal(np.isfinite(got), valid)
        np.testing.assert_allclose(got[valid], want[valid], atol=0.5 / 1000 + 1e-5)
        np.testing.assert_allclose(back[int(index)]["world_from_cam"], table["world_from_cam"][row], atol=1e-12)
        conf = store.conf(row).astype(np.float32)
        np.testing.assert_allclose(back[int(index)]["conf"], conf, atol=0.5 / manifest["conf_scale"] + 1e-6)
    # the second window's depth is its chunk depth x its scale (2.5), not the raw stored value
    row = N_NEW + 1
    raw = store.depth(row).astype(np.float32)
    np.testing.assert_allclose(np.nanmedian(back[int(table["index"][row])]["depth"] / raw), CHUNK_SCALE, rtol=1e-3)
    # the frame looking away has no valid depth at all
    assert np.isnan(back[int(table["index"][-1])]["depth"]).all()
    store.close()


def test_npz_export_is_exact_and_unprojects_onto_the_world_map(tmp_path):
    store = plane_store(tmp_path / "p.zarr")
    export_depth(store, tmp_path / "d", fmt="npz", compress=True)
    back = read_depth_export(tmp_path / "d")
    table = store.frames_table()
    chunks = store.chunks_table()
    for row, index in enumerate(table["index"]):
        item = back[int(index)]
        assert item["depth"].dtype == np.float32 and item["conf"].dtype == np.float32
        np.testing.assert_array_equal(item["depth"], stored_world_depth(store, row))
        np.testing.assert_array_equal(item["conf"], store.conf(row).astype(np.float32))
        # exported depth + exported intrinsics + world_from_cam give the chunk geometry composed into the world
        X_export = unproject_depth(item["depth"][None], item["intrinsics"][None], item["world_from_cam"][None])[0]
        c = int(table["chunk_id"][row])
        K_grid = np.diag([0.5, 0.5, 1.0]) @ table["intrinsics"][row]
        X_chunk = unproject_depth(store.depth(row).astype(np.float32)[None], K_grid[None], table["chunk_from_cam"][row][None])[0]
        X_world = Sim3.from_array(chunks["world_from_chunk"][c]).apply(X_chunk.reshape(-1, 3).astype(np.float64))
        ok = np.isfinite(X_world).all(axis=1)
        np.testing.assert_allclose(X_export.reshape(-1, 3)[ok], X_world[ok], rtol=1e-5, atol=1e-4)
    store.close()


def test_auto_scales_use_the_full_16_bit_range(tmp_path):
    store = plane_store(tmp_path / "p.zarr")
    info = export_depth(store, tmp_path / "d", depth_scale=None)
    depth = np.stack([stored_world_depth(store, r) for r in range(store.n_frames)])
    max_depth = depth[np.isfinite(depth)].max()
    assert info["depth_scale"] == pytest.approx(PNG16_MAX / max_depth)
    assert info["invalid_out_of_range"] == 0
    import cv2

    peak = max(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).max() for p in (tmp_path / "d" / "depth").glob("*.png"))
    assert peak == PNG16_MAX
    # a scale too large for the range loses the far pixels, counts them, and marks them invalid
    info = export_depth(store, tmp_path / "d2", depth_scale=10000.0)
    assert info["invalid_out_of_range"] > 0
    store.close()


def test_every_and_bad_arguments(tmp_path):
    store = plane_store(tmp_path / "p.zarr")
    info = export_depth(store, tmp_path / "d", every=3)
    assert info["frames"] == 3  # rows 0, 3, 6 in time order
    assert sorted(read_depth_export(tmp_path / "d")) == [0, 6, 12]
    with pytest.raises(ExportError, match="every must be a positive integer"):
        export_depth(store, tmp_path / "e", every=0)
    with pytest.raises(ExportError, match="depth format must be one of png16, npz"):
        export_depth(store, tmp_path / "e", fmt="exr")
    with pytest.raises(ExportError, match="depth_scale must be a positive number"):
        export_depth(store, tmp_path / "e", depth_scale=-1.0)
    store.close()


def test_cli_depth_export(tmp_path, run_path):
    assert main(["export", str(run_path), "--depth", str(tmp_path / "d"), "--depth-format", "npz", "--every", "2", "--quiet"]) == 0
    st = RunStore.open(run_path)
    back = read_depth_export(tmp_path / "d")
    assert len(back) == (st.n_frames + 1) // 2
    first = st.frames_table()["index"][0]
    np.testing.assert_array_equal(back[int(first)]["depth"], stored_world_depth(st, 0))
    assert main(["export", str(run_path), "--depth", str(tmp_path / "d"), "--every", "0", "--quiet"]) == ExportError.exit_code


# ----------------------------------------------------------------------------- trajectories: every source frame


def geodesic_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(Ra.T @ Rb).as_rotvec())))


def test_dropped_frames_get_interpolated_poses(tmp_path):
    store = plane_store(tmp_path / "p.zarr")
    ts, T, idx, is_kf = full_trajectory(store)
    # read fine: 0..16 except 7 (subsampled); 15 and 16 come after the last keyframe (14)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(is_kf, idx % 2 == 0)
    np.testing.assert_allclose(ts, idx / 10.0)
    ts_k, T_k, idx_k = trajectory(store)
    np.testing.assert_array_equal(T[is_kf], T_k)  # keyframes keep their stored pose exactly
    for k in np.flatnonzero(~is_kf):
        a = int(np.flatnonzero(idx_k == idx[k] - 1)[0])
        b = a + 1
        w = (ts[k] - ts_k[a]) / (ts_k[b] - ts_k[a])
        assert w == pytest.approx(0.5)
        np.testing.assert_allclose(T[k][:3, 3], (1 - w) * T_k[a][:3, 3] + w * T_k[b][:3, 3], atol=1e-12)
        total = geodesic_deg(T_k[a][:3, :3], T_k[b][:3, :3])
        assert geodesic_deg(T_k[a][:3, :3], T[k][:3, :3]) == pytest.approx(w * total, rel=1e-6, abs=1e-9)
        assert geodesic_deg(T[k][:3, :3], T_k[b][:3, :3]) == pytest.approx((1 - w) * total, rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(T[k][:3, :3].T @ T[k][:3, :3], np.eye(3), atol=1e-12)
    # keyframes only, and every N-th
    _, T2, idx2, kf2 = full_trajectory(store, keyframes_only=True)
    np.testing.assert_array_equal(idx2, idx_k)
    assert kf2.all()
    _, _, idx3, _ = full_trajectory(store, every=4)
    np.testing.assert_array_equal(idx3, idx[::4])
    store.close()


def test_tum_kitti_flags_through_the_cli(tmp_path):
    store = plane_store(tmp_path / "p.zarr")
    store.close()
    path = str(tmp_path / "p.zarr")
    assert main(["export", path, "--tum", str(tmp_path / "all.txt"), "--kitti", str(tmp_path / "all.kitti"), "--quiet"]) == 0
    assert main(["export", path, "--tum", str(tmp_path / "kf.txt"), "--keyframes-only", "--quiet"]) == 0
    assert main(["export", path, "--tum", str(tmp_path / "e.txt"), "--every", "3", "--quiet"]) == 0
    ts_all, T_all = read_tum(tmp_path / "all.txt")
    ts_kf, T_kf = read_tum(tmp_path / "kf.txt")
    ts_e, _ = read_tum(tmp_path / "e.txt")
    assert len(ts_all) == 14 and len(ts_kf) == 2 * N_NEW and len(ts_e) == 5
    np.testing.assert_allclose(read_kitti(tmp_path / "all.kitti"), T_all, atol=1e-12)
    np.testing.assert_allclose(ts_e, ts_all[::3])
    assert set(np.round(ts_kf, 6)) <= set(np.round(ts_all, 6))
    # library calls: same counts
    assert export_tum(path, tmp_path / "x.txt") == 14
    assert export_kitti(path, tmp_path / "x.kitti", keyframes_only=True) == 2 * N_NEW


def test_interpolated_trajectory_of_a_run_matches_ground_truth(tmp_path, run_path):
    """The keyframe filter dropped frames of the run; their interpolated poses are as accurate as the keyframes'."""
    from tests.pipeline_helpers import small_sequence

    st = RunStore.open(run_path)
    src = st.source_table()
    n_read = int(src["index"].shape[0])
    assert st.n_frames < n_read == 40  # some frames were dropped
    export_tum(st, tmp_path / "all.txt")
    export_tum(st, tmp_path / "kf.txt", keyframes_only=True)
    ts_all, _ = read_tum(tmp_path / "all.txt")
    assert len(ts_all) == 40 - int((~src["kept"] & (src["timestamp"] > st.frames_table()["timestamp"].max())).sum())
    gt = tmp_path / "gt.tum"
    small_sequence(40).write_tum(gt)
    e_all = evaluate(tmp_path / "all.txt", gt)
    e_kf = evaluate(tmp_path / "kf.txt", gt)
    assert e_all["n_matched"] == len(ts_all) and e_kf["n_matched"] == st.n_frames
    assert e_all["ate_rmse"] <= 1.5 * e_kf["ate_rmse"] + 1e-9
