"""End-to-end runs of the streaming engine on small synthetic sequences."""

from __future__ import annotations

import numpy as np
import pytest

from da3stream.core.types import FrameBatch, Prediction
from da3stream.io.evaluation.metrics import evaluate
from da3stream.io.store import RunStore
from da3stream.streaming.pipeline import reconstruct
from tests.pipeline_helpers import SMALL_CFG, small_predictor, small_sequence, trajectory


@pytest.fixture(scope="module")
def seq():
    return small_sequence(80)


def test_single_frame_run(tmp_path, seq):
    pred = small_predictor(seq)
    s = reconstruct(seq.frames(0, 1), tmp_path / "one.zarr", predictor=pred, config=SMALL_CFG)
    assert s.status == "complete" and s.n_frames == 1 and s.n_chunks == 1
    st = RunStore.open(tmp_path / "one.zarr")
    t = st.frames_table()
    assert t["world_from_cam"].shape == (1, 4, 4)
    np.testing.assert_allclose(t["world_from_cam"][0][3], [0, 0, 0, 1])


@pytest.mark.parametrize("n", [10, 16])  # shorter than one window, exactly one window
def test_short_runs(tmp_path, seq, n):
    pred = small_predictor(seq)
    s = reconstruct(seq.frames(0, n), tmp_path / "s.zarr", predictor=pred, config={**SMALL_CFG, "keyframes.enabled": False})
    assert s.n_chunks == 1 and s.n_frames == n
    idx, poses = trajectory(tmp_path / "s.zarr")
    np.testing.assert_array_equal(idx, np.arange(n))
    assert np.all(np.isfinite(poses))


def test_store_contents_and_conventions(tmp_path, seq):
    pred = small_predictor(seq)
    out = tmp_path / "run.zarr"
    s = reconstruct(seq.frames(0, 40), out, predictor=pred, config={**SMALL_CFG, "keyframes.enabled": False})
    st = RunStore.open(out)
    assert st.status == "complete"
    assert st.config["chunk_size"] == 16 and st.config["overlap"] == 4
    assert st.model["id"] == pred.model_id
    t = st.frames_table()
    # every frame once, in order, with its source timestamp
    np.testing.assert_array_equal(t["index"], np.arange(40))
    np.testing.assert_allclose(t["timestamp"], np.arange(40) / seq.fps)
    # intrinsics are stored for the ORIGINAL resolution (depth grid is half size here)
    assert tuple(st.image_hw) == seq.image_hw and tuple(st.depth_hw) == (seq.image_hw[0] // 2, seq.image_hw[1] // 2)
    K_gt = seq.ground_truth().intrinsics
    K_gt = K_gt[0] if K_gt.ndim == 3 else K_gt
    np.testing.assert_allclose(t["intrinsics"][:, 0, 0], K_gt[0, 0], rtol=0.05)
    np.testing.assert_allclose(t["intrinsics"][:, :2, 2], np.broadcast_to(K_gt[:2, 2], (40, 2)), rtol=0.05, atol=1.0)
    assert st.depth(np.arange(3)).dtype == np.float16
    # chunks: frame ranges overlap by `overlap`, the first chunk is the world frame
    c = st.chunks_table()
    assert s.n_chunks == len(c["frame_start"]) == 3
    np.testing.assert_allclose(c["world_from_chunk"][0], [1, 0, 0, 0, 1, 0, 0, 0])
    assert np.all(c["frame_start"][1:] == c["frame_stop"][:-1] - 4)
    # the fused map: points exist and are not duplicated by overlap frames (each chunk fuses only new frames)
    xyz, rgb = st.map_points(world=True)
    assert xyz.shape[0] > 1000 and rgb.dtype == np.uint8


def test_video_and_folder_give_the_same_trajectory(tmp_path, seq):
    video = tmp_path / "seq.mp4"
    folder = tmp_path / "frames"
    n = 40
    sub = small_sequence(n)
    sub.write_video(video)
    sub.write_image_folder(folder)
    cfg = {**SMALL_CFG, "keyframes.enabled": False}
    reconstruct(str(video), tmp_path / "v.zarr", predictor=small_predictor(sub), config=cfg)
    reconstruct(str(folder), tmp_path / "f.zarr", predictor=small_predictor(sub), config=cfg)
    iv, pv = trajectory(tmp_path / "v.zarr")
    if_, pf = trajectory(tmp_path / "f.zarr")
    np.testing.assert_array_equal(iv, if_)
    # the simulated predictor reads ground truth by frame index, so pixels (codec loss) do not matter
    np.testing.assert_allclose(pv, pf, atol=1e-9)


class _BrokenOverlap:
    """Returns garbage depth for the first frames of every window after the first (a degenerate overlap)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def predict(self, batch: FrameBatch) -> Prediction:
        p = self.inner.predict(batch)
        self.calls += 1
        if self.calls == 2:
            p.conf[:4] = 0.0
            p.depth[:4] = 1.0  # a constant plane: every overlap point is the same ray length -> degenerate or gated
        return p


def test_degenerate_overlap_is_gated_not_fatal(tmp_path, seq):
    pred = _BrokenOverlap(small_predictor(seq))
    s = reconstruct(seq.frames(0, 40), tmp_path / "g.zarr", predictor=pred, config={**SMALL_CFG, "keyframes.enabled": False})
    assert s.status == "complete" and s.n_chunks == 3
    c = RunStore.open(tmp_path / "g.zarr").chunks_table()
    assert c["status"][1] in (1, 3), "the broken window must be flagged (gated or new segment)"
    assert c["status"][2] == 0
    _, poses = trajectory(tmp_path / "g.zarr")
    assert np.all(np.isfinite(poses))


class _NaNPredictor:
    def __init__(self, inner, bad_pose: bool):
        self.inner, self.bad_pose = inner, bad_pose

    def predict(self, batch):
        p = self.inner.predict(batch)
        if self.bad_pose:
            p.world_from_cam[-1, 0, 3] = np.nan
        else:
            p.depth[0, :5, :5] = np.nan
        return p


def test_nan_depth_is_masked(tmp_path, seq):
    s = reconstruct(seq.frames(0, 20), tmp_path / "n.zarr", predictor=_NaNPredictor(small_predictor(seq), False), config=SMALL_CFG)
    assert s.status == "complete"
    d = RunStore.open(tmp_path / "n.zarr").depth(np.arange(1)).astype(np.float32)
    assert np.all(np.isfinite(d))


def test_nan_pose_is_rejected_with_one_line_error(tmp_path, seq):
    from da3stream.errors import PredictionError

    # every window has a NaN pose: each is rejected (tests/test_faults.py), and with none left the run fails in one line
    with pytest.raises(PredictionError, match="every window's prediction was rejected"):
        reconstruct(seq.frames(0, 20), tmp_path / "p.zarr", predictor=_NaNPredictor(small_predictor(seq), True), config=SMALL_CFG)


def test_accuracy_against_ground_truth_and_naive_chaining(tmp_path):
    """On the demo world: ATE <= 0.5 % of path length and <= 1/3 of naive chaining (seeded noise)."""
    seq = small_sequence(240, width=192, height=144)
    gt = tmp_path / "gt.tum"
    seq.write_tum(gt)
    cfg = {"chunk_size": 32, "overlap": 8, "loop.enabled": False}
    reconstruct(seq.frames(), tmp_path / "ours.zarr", predictor=small_predictor(seq), config=cfg)
    reconstruct(seq.frames(), tmp_path / "naive.zarr", predictor=small_predictor(seq), config={**cfg, "align.mode": "poses", "align.pose_source": "head"})
    ours = evaluate(tmp_path / "ours.zarr", gt)
    naive = evaluate(tmp_path / "naive.zarr", gt)
    assert ours["ate_percent_of_path"] <= 0.5, ours
    assert ours["ate_rmse"] <= naive["ate_rmse"] / 3.0, (ours["ate_rmse"], naive["ate_rmse"])
