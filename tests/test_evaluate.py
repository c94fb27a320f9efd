"""ATE / RPE agree with evo (evo_ape tum gt est -as, evo_rpe with delta 1 frame)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import ExportError
from da3stream.io.evaluation.metrics import associate, evaluate
from da3stream.io.export.trajectory import write_tum

evo_fi = pytest.importorskip("evo.tools.file_interface", reason="evo is a dev dependency")
from evo import main_ape, main_rpe  # noqa: E402
from evo.core import sync  # noqa: E402
from evo.core.metrics import PoseRelation, Unit  # noqa: E402


def gt_trajectory(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth loop with a changing heading: (timestamps (n,), world_from_cam (n, 4, 4))."""
    t = np.arange(n) / 30.0
    a = t * 0.6
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, 3] = np.stack([5 * np.cos(a), 3 * np.sin(a), 0.5 * np.sin(3 * a)], axis=1)
    T[:, :3, :3] = Rotation.from_euler("zyx", np.stack([a + np.pi / 2, 0.1 * np.sin(a), 0.05 * np.cos(2 * a)], 1)).as_matrix()
    return t + 100.0, T


def noisy_estimate(rng, ts, T, dst_from_src: Sim3, sigma_t=0.05, sigma_r_deg=1.0):
    """The ground truth in another Sim(3) gauge, with position and rotation noise and jittered, thinned stamps."""
    E = dst_from_src.apply_pose(T)
    E[:, :3, 3] += rng.normal(scale=sigma_t * dst_from_src.s, size=(len(T), 3))
    E[:, :3, :3] = Rotation.from_rotvec(np.radians(sigma_r_deg) * rng.normal(size=(len(T), 3))).as_matrix() @ E[:, :3, :3]
    ts_est = ts + rng.uniform(-0.004, 0.004, size=len(ts))
    keep = rng.random(len(ts)) > 0.2
    return ts_est[keep], E[keep]


def evo_metrics(gt_path, est_path, max_diff=0.01):
    ref = evo_fi.read_tum_trajectory_file(str(gt_path))
    est = evo_fi.read_tum_trajectory_file(str(est_path))
    ref, est = sync.associate_trajectories(ref, est, max_diff=max_diff)
    ape = main_ape.ape(copy.deepcopy(ref), copy.deepcopy(est), pose_relation=PoseRelation.translation_part,
                       align=True, correct_scale=True)
    rpe_t = main_rpe.rpe(copy.deepcopy(ref), copy.deepcopy(est), pose_relation=PoseRelation.translation_part,
                         delta=1, delta_unit=Unit.frames, align=True, correct_scale=True)
    rpe_r = main_rpe.rpe(copy.deepcopy(ref), copy.deepcopy(est), pose_relation=PoseRelation.rotation_angle_deg,
                         delta=1, delta_unit=Unit.frames, align=True, correct_scale=True)
    return ape.stats, rpe_t.stats, rpe_r.stats, ref.num_poses, ref.path_length


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_evo_ape_and_rpe(tmp_path, seed):
    rng = np.random.default_rng(seed)
    ts, T = gt_trajectory(300)
    gauge = Sim3(rng.uniform(0.2, 5.0), Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 4)
    ts_est, E = noisy_estimate(rng, ts, T, gauge)
    gt_path, est_path = tmp_path / "gt.txt", tmp_path / "est.txt"
    write_tum(gt_path, ts, T)
    write_tum(est_path, ts_est, E)

    ours = evaluate(est_path, gt_path)
    ape, rpe_t, rpe_r, n, path_length = evo_metrics(gt_path, est_path)

    assert ours["n_matched"] == n
    for key, evo_key in (("ate_rmse", "rmse"), ("ate_mean", "mean"), ("ate_median", "median"), ("ate_max", "max")):
        assert ours[key] == pytest.approx(ape[evo_key], rel=1e-9), key
    assert ours["rpe_trans_rmse"] == pytest.approx(rpe_t["rmse"], rel=1e-9)
    assert ours["rpe_rot_rmse_deg"] == pytest.approx(rpe_r["rmse"], rel=1e-7)
    assert ours["path_length"] == pytest.approx(path_length, rel=1e-12)
    assert ours["ate_percent_of_path"] == pytest.approx(100 * ours["ate_rmse"] / path_length, rel=1e-12)
    assert ours["align_scale"] == pytest.approx(1.0 / gauge.s, rel=0.05)
    # the metric can fail: the noise we injected shows up at the right size (sigma * sqrt(3) ~ 0.087)
    assert 0.05 < ours["ate_rmse"] < 0.12


def test_exact_estimate_in_another_gauge_has_zero_error(tmp_path):
    ts, T = gt_trajectory(100)
    gauge = Sim3(2.5, Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix(), [1.0, -2.0, 3.0])
    write_tum(tmp_path / "gt.txt", ts, T)
    write_tum(tmp_path / "est.txt", ts, gauge.apply_pose(T))
    out = evaluate(tmp_path / "est.txt", tmp_path / "gt.txt")
    assert out["n_matched"] == 100
    assert out["ate_rmse"] < 1e-9 and out["rpe_trans_rmse"] < 1e-9 and out["rpe_rot_rmse_deg"] < 1e-5
    assert out["align_scale"] == pytest.approx(1 / 2.5, rel=1e-12)


def test_association_matches_evo(rng):
    for trial in range(20):
        a = np.sort(rng.uniform(0, 10, rng.integers(1, 60)))
        b = rng.uniform(-1, 11, rng.integers(1, 60))
        b = np.round(b, 2) if trial % 2 else np.sort(b)  # rounded, unsorted stamps produce ties and unsorted input
        for s1, s2 in ((a, b), (b, a)):
            if not np.all(np.diff(s2) >= 0) and trial % 4 == 1:
                continue  # evo's linear fallback resolves exact ties by first occurrence; both are "nearest"
            i1, i2 = associate(s1, s2, max_diff=0.05)
            short_first = len(s2) > len(s1)
            short, long_ = (s1, s2) if short_first else (s2, s1)
            e_short, e_long = sync.matching_time_indices(short, long_, 0.05)
            got_short, got_long = (i1, i2) if short_first else (i2, i1)
            np.testing.assert_array_equal(got_short, e_short)
            np.testing.assert_array_equal(long_[got_long], long_[np.array(e_long, dtype=np.int64)])


def test_store_input_equals_its_tum_export(tmp_path):
    from da3stream.io.export.run_exports import export_tum

    try:
        from test_export import make_store
    except ImportError:  # tests/ imported as a package
        from tests.test_export import make_store

    store = make_store(tmp_path / "run.zarr", n_chunks=3, seed=4)
    ts = store.frames_table()["timestamp"]
    world_from_cam = store.frames_table()["world_from_cam"]
    rng = np.random.default_rng(9)
    gt = world_from_cam.copy()
    gt[:, :3, 3] += rng.normal(scale=0.01, size=(len(gt), 3))
    write_tum(tmp_path / "gt.txt", ts, gt)
    export_tum(store, tmp_path / "est.txt")
    a = evaluate(store, tmp_path / "gt.txt")
    b = evaluate(str(tmp_path / "run.zarr"), tmp_path / "gt.txt")
    c = evaluate(tmp_path / "est.txt", tmp_path / "gt.txt")
    assert a == b
    for key in ("ate_rmse", "ate_max", "rpe_trans_rmse", "path_length", "n_matched"):
        assert c[key] == pytest.approx(a[key], rel=1e-9)  # the TUM file stores rotations as quaternions
    assert c["rpe_rot_rmse_deg"] == pytest.approx(a["rpe_rot_rmse_deg"], abs=1e-9)
    assert a["n_matched"] == len(ts)
    store.close()


def test_no_overlap_in_time_is_a_clear_error(tmp_path):
    ts, T = gt_trajectory(20)
    write_tum(tmp_path / "gt.txt", ts, T)
    write_tum(tmp_path / "est.txt", ts + 50.0, T)
    with pytest.raises(ExportError, match=r"gt\.txt: only 0 of 20 estimated poses have a ground-truth timestamp within 0\.01 s"):
        evaluate(tmp_path / "est.txt", tmp_path / "gt.txt")
