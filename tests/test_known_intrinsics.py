"""Known intrinsics (``source.intrinsics`` / ``--intrinsics``) beat the predictor's guess everywhere.

The simulated predictor here is given deliberately wrong focal lengths (a large
per-window focal error, in its intrinsics and in its ray map). With the true
calibration known, the store holds the known K for every frame (at the original
resolution), alignment and fusion unproject with it, and the COLMAP export
(read back with pycolmap) carries the known focal lengths.
"""

from __future__ import annotations

import numpy as np
import pytest

from da3stream.io.evaluation.metrics import trajectory_errors
from da3stream.io.store import RunStore
from da3stream.streaming.pipeline import reconstruct
from tests.pipeline_helpers import SMALL_CFG, small_predictor, small_sequence

N_FRAMES = 48
WRONG_FOCAL = 0.25
"""Std of the simulated predictor's per-window log focal error (about 25 %: deliberately wrong)."""
CFG = {**SMALL_CFG, "keyframes.enabled": False}


def intrinsics_text(K: np.ndarray) -> str:
    return ",".join(repr(float(v)) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))


@pytest.fixture(scope="module")
def seq():
    return small_sequence(N_FRAMES)


def run(seq, out, **cfg):
    frames = list(zip(seq.images(), seq.timestamps.tolist()))
    reconstruct(frames, out, predictor=small_predictor(seq, focal_noise_rel=WRONG_FOCAL), config={**CFG, **cfg})
    return RunStore.open(out)


@pytest.fixture(scope="module")
def runs(seq, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("known_k")
    wrong = run(seq, tmp / "wrong.zarr")
    known = run(seq, tmp / "known.zarr", **{"source.intrinsics": intrinsics_text(seq.intrinsics)})
    return wrong, known


def ate(st: RunStore, seq) -> float:
    t = st.frames_table()
    return trajectory_errors(seq.world_from_cam[t["index"]], t["world_from_cam"])["ate_rmse"]


def test_known_intrinsics_are_stored_for_every_frame(runs, seq):
    wrong, known = runs
    K = known.frames_table()["intrinsics"]
    assert K.shape == (N_FRAMES, 3, 3)
    np.testing.assert_array_equal(K, np.broadcast_to(seq.intrinsics, K.shape))
    # the predictor's guess is far off (the test would pass trivially otherwise)
    fx_wrong = wrong.frames_table()["intrinsics"][:, 0, 0]
    assert np.max(np.abs(fx_wrong / seq.intrinsics[0, 0] - 1)) > 0.1


def test_known_intrinsics_for_another_resolution_are_scaled_exactly(seq, tmp_path):
    K2 = np.diag([2.0, 2.0, 1.0]) @ seq.intrinsics  # a calibration of the 2x larger camera
    H, W = seq.image_hw
    calib = tmp_path / "calib.yaml"
    fx, fy, cx, cy = (float(v) for v in (K2[0, 0], K2[1, 1], K2[0, 2], K2[1, 2]))
    calib.write_text(f"fx: {fx!r}\nfy: {fy!r}\ncx: {cx!r}\ncy: {cy!r}\n"
                     f"width: {2 * W}\nheight: {2 * H}\n")
    st = run(seq, tmp_path / "r.zarr", **{"source.intrinsics": str(calib), "source.max_frames": 20})
    K = st.frames_table()["intrinsics"]
    np.testing.assert_array_equal(K, np.broadcast_to(np.diag([0.5, 0.5, 1.0]) @ K2, K.shape))


def test_known_intrinsics_align_at_least_as_well(runs, seq, tmp_path):
    wrong, known = runs
    e_wrong, e_known = ate(wrong, seq), ate(known, seq)
    assert e_known < 0.5 * e_wrong, (e_known, e_wrong)  # measured: 0.016 m against 0.76 m
    assert np.all(known.chunks_table()["residual"] <= wrong.chunks_table()["residual"] + 1e-6)
    # as good as a predictor whose own intrinsics are right
    frames = list(zip(seq.images(), seq.timestamps.tolist()))
    reconstruct(frames, tmp_path / "exact.zarr", predictor=small_predictor(seq, focal_noise_rel=0.0), config=CFG)
    assert e_known <= 1.01 * ate(RunStore.open(tmp_path / "exact.zarr"), seq)


def colmap_params(K: np.ndarray) -> list:
    """PINHOLE fx, fy, cx, cy as COLMAP writes them (its first pixel's centre is (0.5, 0.5))."""
    return [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]


def test_colmap_export_carries_the_known_focal_lengths(runs, seq, tmp_path):
    pycolmap = pytest.importorskip("pycolmap", reason="pycolmap reads the model back")
    from da3stream.io.export.colmap import export_colmap

    _, known = runs
    export_colmap(known, tmp_path / "sparse", fmt="bin")
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert rec.num_images() == N_FRAMES
    K = seq.intrinsics
    for cam in rec.cameras.values():
        np.testing.assert_allclose(np.asarray(cam.params)[:4], colmap_params(K), rtol=1e-12)


def test_cli_intrinsics_end_to_end(seq, tmp_path, monkeypatch, capsys):
    from da3stream.cli import main
    from da3stream.streaming import pipeline

    pycolmap = pytest.importorskip("pycolmap", reason="pycolmap reads the model back")
    n = 24
    video = tmp_path / "seq.mp4"
    seq.write_video(video)
    monkeypatch.setattr(pipeline, "_resolve_predictor",
                        lambda predictor, cfg: small_predictor(seq, focal_noise_rel=WRONG_FOCAL))
    out, sparse = tmp_path / "r.zarr", tmp_path / "sparse"
    K = seq.intrinsics
    rc = main([str(video), "--out", str(out), "--intrinsics", intrinsics_text(K), "--max-frames", str(n),
               "--chunk-size", "16", "--overlap", "4", "--no-loop", "--no-keyframes", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    st = RunStore.open(out)
    assert st.source["calibration"]["K"] == K.tolist()
    np.testing.assert_array_equal(st.frames_table()["intrinsics"], np.broadcast_to(K, (n, 3, 3)))
    assert main(["export", str(out), "--colmap", str(sparse)]) == 0
    rec = pycolmap.Reconstruction(str(sparse))
    for cam in rec.cameras.values():
        np.testing.assert_allclose(np.asarray(cam.params)[:4], colmap_params(K), rtol=1e-12)


def test_undistorted_frames_store_the_new_pinhole_camera(seq, tmp_path):
    from da3stream.io.sources.calibration import Undistorter, parse_intrinsics

    text = intrinsics_text(seq.intrinsics) + ",-0.05,0.01,0.0,0.0"
    st = run(seq, tmp_path / "r.zarr", **{"source.intrinsics": text, "source.max_frames": 20})
    K_new = Undistorter(parse_intrinsics(text), seq.image_hw).K_new
    assert not np.allclose(K_new, seq.intrinsics)
    K = st.frames_table()["intrinsics"]
    np.testing.assert_array_equal(K, np.broadcast_to(K_new, K.shape))


def test_network_predictor_uses_the_known_camera_on_its_depth_grid(tmp_path, monkeypatch):
    """The DA3 network (random small weights): stored K is the known one; the grid K is the network's map of it."""
    from da3stream.core import random_predictor
    from da3stream.streaming.stages.predict import PredictStage

    seq = small_sequence(12, width=64, height=48)
    net = random_predictor("small", seed=0, process_res=70, device="cpu")
    grid_K = []
    predict = PredictStage.__call__

    def watched(stage, frames):
        pred = predict(stage, frames)
        grid_K.append(pred.intrinsics.copy())
        return pred

    monkeypatch.setattr(PredictStage, "__call__", watched)
    K = seq.intrinsics
    frames = list(zip(seq.images(), seq.timestamps.tolist()))
    cfg = {"chunk_size": 8, "overlap": 2, "keyframes.enabled": False, "loop.enabled": False,
           "source.intrinsics": intrinsics_text(K)}
    reconstruct(frames, tmp_path / "r.zarr", predictor=net, config=cfg)
    st = RunStore.open(tmp_path / "r.zarr")
    np.testing.assert_array_equal(st.frames_table()["intrinsics"], np.broadcast_to(K, (12, 3, 3)))
    K_net = net.to_network_intrinsics(K, seq.image_hw)
    assert len(grid_K) == 2
    for k in grid_K:
        np.testing.assert_allclose(k, np.broadcast_to(K_net, k.shape), rtol=1e-12, atol=1e-9)
