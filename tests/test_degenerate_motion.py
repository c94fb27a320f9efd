"""Degenerate motion on synthetic sequences: the run continues, bad alignments are gated and flagged, and the
trajectory stays bounded. A hard scene cut starts a new segment, and the exports mark it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from da3stream.alignment.registration import pose_based_estimate
from da3stream.alignment.sim3 import Sim3
from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
from da3stream.io.store import ChunkStatus, RunStore
from da3stream.streaming.pipeline import reconstruct
from da3stream.synthetic import make_sequence
from tests.test_faults import Wrapped, assert_bounded

HW = (48, 64)
DEPTH_HW = (24, 32)
CFG = {"chunk_size": 16, "overlap": 4, "loop.enabled": False, "keyframes.enabled": False, "fusion.pixel_stride": 8}


def sim(seq) -> SimulatedPredictor:
    return SimulatedPredictor(seq, depth_hw=DEPTH_HW, params=SimParams(), seed=0)


def blank_frames(seq) -> list:
    return [(np.zeros(HW + (3,), np.uint8), float(t)) for t in seq.timestamps]


def centres_spread(store) -> tuple[float, float]:
    """(largest distance of a camera centre from the first one, median scene depth), both in world units."""
    st = RunStore.open(store)
    fr = st.frames_table()
    c = fr["world_from_cam"][:, :3, 3]
    depth = float(np.median(st.depth(slice(None)).astype(np.float32)))  # chunk 0 is the world: scale 1
    return float(np.linalg.norm(c - c[0], axis=1).max()), depth


def true_relative_scales(seq, store) -> tuple[np.ndarray, np.ndarray]:
    """(estimated, true) scale of prev_from_cur for every window after the first (the simulator knows each gauge)."""
    pred = sim(seq)
    st = RunStore.open(store)
    fr, ch = st.frames_table(), st.chunks_table()
    gauges = [pred.window_gauge(fr["index"][a:b], HW) for a, b in zip(ch["frame_start"], ch["frame_stop"])]
    true = np.array([gauges[c - 1].s / gauges[c].s for c in range(1, len(gauges))])  # chunk_from_world gauges
    est = np.array([Sim3.from_array(ch["chunk_from_prev"][c]).inverse().s for c in range(1, len(gauges))])
    return est, true


# --------------------------------------------------------------------------- static camera


def test_static_camera_with_keyframes_keeps_a_few_frames(tmp_path):
    seq = make_sequence("static", n_frames=64, width=HW[1], height=HW[0])
    s = reconstruct(seq.frames(), tmp_path / "kf.zarr", predictor=sim(seq), config={**CFG, "keyframes.enabled": True})
    assert s.status == "complete" and s.n_segments == 1
    assert 2 <= s.n_keyframes <= 4  # the first frame, then one per keyframes.max_skip dropped frames
    spread, depth = centres_spread(tmp_path / "kf.zarr")
    assert spread <= 0.01 * depth


def test_static_camera_every_frame_stays_put_and_scale_comes_from_depth(tmp_path):
    seq = make_sequence("static", n_frames=48, width=HW[1], height=HW[0])
    out = tmp_path / "static.zarr"
    s = reconstruct(blank_frames(seq), out, predictor=sim(seq), config=CFG)
    assert s.status == "complete" and s.n_segments == 1 and s.n_chunks == 4
    ch = RunStore.open(out).chunks_table()
    assert np.all(ch["status"][1:] != ChunkStatus.NEW_SEGMENT)
    spread, depth = centres_spread(out)
    assert spread <= 0.01 * depth, (spread, depth)
    est, true = true_relative_scales(seq, out)
    np.testing.assert_allclose(est, true, rtol=0.01)


# --------------------------------------------------------------------------- pure rotation


def test_pose_based_estimate_takes_scale_from_depth_at_zero_baseline():
    """Camera centres that do not move carry no scale: the depth ratio of the shared frames must give it."""
    rng = np.random.default_rng(0)
    K = 4
    a_from_cam = np.tile(np.eye(4), (K, 1, 1))
    for k in range(K):  # panning in place: rotations only, one centre
        a_from_cam[k, :3, :3] = Sim3.from_array(np.r_[1.0, _quat_about_y(0.1 * k), 0, 0, 0]).R
        a_from_cam[k, :3, 3] = [1.0, 2.0, 3.0]
    s_true = 2.5
    b_from_a = Sim3(1.0 / s_true, np.eye(3), np.array([0.3, -0.2, 0.1]))
    b_from_cam = b_from_a.apply_pose(a_from_cam)
    depth_a = rng.uniform(1.0, 5.0, (K, 6, 8))
    est = pose_based_estimate(a_from_cam, b_from_cam, depth_a, depth_a / s_true)
    assert est.s == pytest.approx(s_true, rel=1e-9)
    np.testing.assert_allclose(est.apply_pose(b_from_cam), a_from_cam, atol=1e-9)


def _quat_about_y(angle: float) -> list:
    return [0.0, np.sin(angle / 2), 0.0, np.cos(angle / 2)]


def test_pure_rotation_scale_comes_from_depth_not_zero_parallax(tmp_path):
    seq = make_sequence("pure_rotation", n_frames=72, width=HW[1], height=HW[0])
    out = tmp_path / "rot.zarr"
    s = reconstruct(blank_frames(seq), out, predictor=sim(seq), config=CFG)
    assert s.status == "complete" and s.n_segments == 1
    est, true = true_relative_scales(seq, out)
    np.testing.assert_allclose(est, true, rtol=0.01)
    spread, depth = centres_spread(out)
    assert spread <= 0.02 * depth, (spread, depth)
    # the rotation is recovered: the heading sweeps as in the ground truth
    fr = RunStore.open(out).frames_table()
    R_est, R_gt = fr["world_from_cam"][:, :3, :3], seq.ground_truth().world_from_cam[fr["index"], :3, :3]
    rel_est = np.einsum("ji,njk->nik", R_est[0], R_est)  # cam0_from_cam
    rel_gt = np.einsum("ji,njk->nik", R_gt[0], R_gt)
    angle = lambda cos: np.degrees(np.arccos(np.clip((cos - 1.0) / 2.0, -1.0, 1.0)))  # noqa: E731
    sweep = angle(np.trace(rel_gt, axis1=1, axis2=2)).max()
    error = angle(np.einsum("nij,nij->n", rel_est, rel_gt)).max()
    # the camera head of the simulator jitters 0.7 deg per axis and walks 0.2 deg per frame: a few degrees
    assert sweep > 90.0 and error < 6.0, (error, sweep)


# --------------------------------------------------------------------------- textureless / low confidence


def low_confidence_overlap(n_carry: int):
    """Overlap frames of every window after the first come back with DA3's lowest confidence and 30 % depth noise."""
    rng = np.random.default_rng(5)

    def hook(batch, call, pred):
        if call > 1:
            k = slice(0, n_carry)
            pred.depth[k] = pred.depth[k] * np.exp(0.3 * rng.standard_normal(pred.depth[k].shape)).astype(np.float32)
            pred.conf[k] = 1.0
        return pred
    return hook


def test_textureless_low_confidence_overlap_is_gated_flagged_and_bounded(tmp_path):
    seq = make_sequence("textureless", n_frames=60, width=HW[1], height=HW[0])
    out = tmp_path / "tl.zarr"
    s = reconstruct(blank_frames(seq), out, predictor=Wrapped(sim(seq), low_confidence_overlap(4)), config=CFG)
    assert s.status == "complete"
    ch = RunStore.open(out).chunks_table()
    flagged = ch["status"][1:]
    assert np.all((flagged == ChunkStatus.GATED) | (flagged == ChunkStatus.NEW_SEGMENT)), ch["status"]
    assert all(r for r in ch["flag_reason"][1:])
    assert s.n_gated == int(np.sum(flagged == ChunkStatus.GATED)) >= 1
    assert_bounded(out, seq, segment_tol=0.1)


def test_textureless_scene_with_keyframes_runs(tmp_path):
    """Little image change: the keyframe filter keeps few frames; the run still completes and stays accurate."""
    seq = make_sequence("textureless", n_frames=90, width=HW[1], height=HW[0])
    out = tmp_path / "tlk.zarr"
    s = reconstruct(seq.frames(), out, predictor=sim(seq), config={**CFG, "keyframes.enabled": True})
    assert s.status == "complete" and s.n_segments == 1 and s.n_keyframes < 90
    assert_bounded(out, seq)


# --------------------------------------------------------------------------- scene cut


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory):
    seq = make_sequence("scene_cut", n_frames=120, width=HW[1], height=HW[0])
    out = tmp_path_factory.mktemp("cut") / "cut.zarr"
    summary = reconstruct(seq.frames(), out, predictor=sim(seq), config={**CFG, "keyframes.enabled": True})
    return seq, out, summary


def test_scene_cut_starts_a_new_segment(cut_run):
    seq, out, s = cut_run
    cut = seq.events["cut_frames"][0]
    assert s.status == "complete" and s.n_segments == 2
    st = RunStore.open(out)
    fr, ch = st.frames_table(), st.chunks_table()
    new_seg = np.flatnonzero(ch["status"] == ChunkStatus.NEW_SEGMENT)
    assert len(new_seg) == 1 and ch["flag_reason"][new_seg[0]] == "scene_cut"
    assert fr["index"][ch["frame_start"][new_seg[0]]] == cut  # the segment starts exactly at the cut
    np.testing.assert_array_equal(ch["segment"][fr["chunk_id"]], (fr["index"] >= cut).astype(int))
    report = assert_bounded(out, seq)
    assert set(report["segment_errors"]) == {0, 1}


def test_no_false_cut_on_fast_motion(tmp_path):
    seq = make_sequence("robot_loop", n_frames=96, width=HW[1], height=HW[0])  # subsampled: large frame-to-frame changes
    s = reconstruct(seq.frames(), tmp_path / "fast.zarr", predictor=sim(seq), config={**CFG, "keyframes.enabled": True})
    assert s.status == "complete" and s.n_segments == 1


def test_exports_mark_the_segments(cut_run, tmp_path):
    from evo.tools import file_interface

    from da3stream.io.export.run_exports import export_kitti, export_tum
    from da3stream.io.export.trajectory import read_kitti, read_tum

    seq, out, _ = cut_run
    cut_t = float(seq.timestamps[seq.events["cut_frames"][0]])
    tum = tmp_path / "traj.tum"
    n = export_tum(out, tum)
    lines = tum.read_text().splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith("# segment")]
    assert [lines[i] for i in marks] == ["# segment 0 starts", "# segment 1 starts"]
    assert float(lines[marks[1] + 1].split()[0]) == pytest.approx(cut_t)
    ts, poses = read_tum(tum)
    evo_traj = file_interface.read_tum_trajectory_file(str(tum))  # evo skips the comment lines
    assert len(ts) == n == evo_traj.num_poses
    np.testing.assert_allclose(evo_traj.positions_xyz, poses[:, :3, 3], rtol=0, atol=1e-12)

    kitti = tmp_path / "traj.kitti"
    assert export_kitti(out, kitti) == n and read_kitti(kitti).shape == (n, 4, 4)
    assert file_interface.read_kitti_poses_file(str(kitti)).num_poses == n
    side = json.loads((tmp_path / "traj.kitti.segments.json").read_text())
    assert [s["segment"] for s in side["segments"]] == [0, 1] and side["poses"] == n
    assert side["segments"][1]["first_pose"] == int(np.flatnonzero(np.isclose(ts, cut_t))[0])
    assert sum(s["poses"] for s in side["segments"]) == n


def test_single_segment_exports_are_unchanged(tmp_path):
    from da3stream.io.export.run_exports import export_kitti, export_tum

    seq = make_sequence("demo", n_frames=20, width=HW[1], height=HW[0])
    out = tmp_path / "one.zarr"
    reconstruct(blank_frames(seq), out, predictor=sim(seq), config=CFG)
    export_tum(out, tmp_path / "t.tum")
    (tmp_path / "k.txt.segments.json").write_text("{}")  # stale sidecar of an earlier export
    export_kitti(out, tmp_path / "k.txt")
    assert sum(line.startswith("#") for line in (tmp_path / "t.tum").read_text().splitlines()) == 1  # the header
    assert not (tmp_path / "k.txt.segments.json").exists()
