"""Scale-out on a local Ray instance: split-and-merge, a killed worker, many sources, an interrupted merge.

One Ray instance (``ray.init(num_cpus=2)``) serves the module and is stopped at
its end. The source is a short synthetic video (a ground robot driving two
laps, so loops close within and across segments); its simulated predictor
reaches the workers as a zero-argument factory.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from da3stream.bench.scaleout import BASE_CONFIG, SyntheticFactory, _video
from da3stream.errors import ConfigError
from da3stream.io.store import RunStore

N_FRAMES = 120
SPLIT = dict(BASE_CONFIG, **{"scaleout": {"workers": 2, "ray_address": None}})


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def seq_files(tmp_path_factory):
    work = tmp_path_factory.mktemp("scaleout")
    factory = SyntheticFactory("robot_loop", N_FRAMES)
    video, gt = _video(work, factory)
    return work, factory, video, gt


@pytest.fixture(scope="module")
def single(seq_files):
    from da3stream.streaming import reconstruct

    work, factory, video, _gt = seq_files
    reconstruct(video, work / "single.zarr", predictor=factory(), config=BASE_CONFIG)
    return work / "single.zarr"


@pytest.fixture(scope="module")
def split_run(ray_local, seq_files):
    from da3stream.streaming import reconstruct

    work, factory, video, _gt = seq_files
    summary = reconstruct(video, work / "split.zarr", predictor=factory, config=SPLIT)
    return work / "split.zarr", summary


def _poses(path):
    t = RunStore.open(path, "r").frames_table()
    return t["index"], t["world_from_cam"]


def test_segments_cover_the_source_and_overlap_by_a_window():
    from da3stream.scaleout.split import overlap_frames, plan_segments

    segs = plan_segments(1000, 4, 16, 4)
    assert [s.own_start for s in segs] == [0, 250, 500, 750] and segs[-1].stop is None
    for a, b in zip(segs, segs[1:]):
        assert a.own_stop == b.start and a.stop - b.start == overlap_frames(16, 4, 1) >= 16
    assert len(plan_segments(50, 4, 16, 4)) == 1  # too short to split


def test_split_run_is_one_store_like_the_single_process_run(split_run, single, seq_files):
    from da3stream.cli import main
    from da3stream.io.evaluation.metrics import evaluate
    from da3stream.scaleout.driver import parts_dir

    out, summary = split_run
    work, _factory, _video, gt = seq_files
    assert summary.status == "complete" and summary.timings["segments_run"] == 2
    assert not parts_dir(out).exists()
    a, b = RunStore.open(single, "r"), RunStore.open(out, "r")
    # frame coverage: the same source frames read and kept, the same keyframes
    assert np.array_equal(a.source_table()["index"], b.source_table()["index"])
    assert np.array_equal(a.source_table()["kept"], b.source_table()["kept"])
    assert np.array_equal(a.frames_table()["index"], b.frames_table()["index"])
    # the segment boundary fell on a window boundary: the same windows, so the same stored depth
    assert np.array_equal(a.chunks_table()["frame_start"], b.chunks_table()["frame_start"])
    assert np.array_equal(a.depth(slice(0, N_FRAMES)), b.depth(slice(0, N_FRAMES)))
    assert b.attrs_get("compression")["frames_per_chunk"] == 1 and b.n_chunks == a.n_chunks
    assert b.committed["n_loops"] >= a.committed["n_loops"] > 0
    ate_single, ate_split = evaluate(single, gt)["ate_rmse"], evaluate(out, gt)["ate_rmse"]
    assert ate_split <= 1.1 * ate_single
    # exports and eval work on it unchanged
    tum, ply = work / "split.tum", work / "split.ply"
    assert main(["export", str(out), "--tum", str(tum), "--ply", str(ply), "--quiet"]) == 0
    assert len([ln for ln in tum.read_text().splitlines() if ln and not ln.startswith("#")]) == N_FRAMES
    assert ply.stat().st_size > 0
    assert main(["eval", str(out), "--gt", gt, "--json", "--quiet"]) == 0


def test_a_worker_killed_mid_segment_is_restarted_and_resumes(ray_local, split_run, seq_files, tmp_path):
    from da3stream.streaming import reconstruct

    _work, factory, video, _gt = seq_files
    marker = tmp_path / "held.pid"
    held = SyntheticFactory(factory.preset, factory.n_frames, hold_at_call=3, marker=str(marker))
    out = tmp_path / "killed.zarr"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(s=reconstruct(video, out, predictor=held, config=SPLIT)))
    run.start()
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "no worker reached the held forward"
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the worker's process, inside its third window
    run.join(timeout=180)
    assert not run.is_alive() and "s" in result
    parts = result["s"].timings["parts"]
    assert any(p["resumed"] for p in parts)
    idx_a, pose_a = _poses(split_run[0])
    idx_b, pose_b = _poses(out)
    assert np.array_equal(idx_a, idx_b)
    assert np.max(np.abs(pose_a - pose_b)) <= 1e-9


def test_a_predictor_that_cannot_pickle_is_one_clear_error(seq_files, tmp_path):
    from da3stream.streaming import reconstruct

    import threading

    class Locked:  # a predictor that holds a lock cannot be pickled
        def __init__(self, inner):
            self.inner, self.lock = inner, threading.Lock()

        def predict(self, batch, **priors):
            return self.inner.predict(batch, **priors)

    _work, factory, video, _gt = seq_files
    with pytest.raises(ConfigError, match="factory"):
        reconstruct(video, tmp_path / "x.zarr", predictor=Locked(factory()), config=SPLIT)


def test_many_sources_a_bad_one_among_good_ones(ray_local, seq_files, tmp_path):
    from da3stream.scaleout.batch import SUMMARY_NAME, reconstruct_many, summary_table

    _work, factory, video, gt = seq_files
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    good2 = tmp_path / "second.mp4"
    shutil.copy(video, good2)
    sources = [video, str(bad), str(good2)]
    seen = []
    rows = reconstruct_many(sources, tmp_path / "out", predictor=factory, config=BASE_CONFIG, workers=2,
                            ground_truth={video: gt}, progress=seen.append)
    assert [r["status"] for r in rows] == ["complete", "failed", "complete"]
    assert rows[1]["error"] and "broken.mp4" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert rows[0]["frames"] == N_FRAMES and rows[0]["ate_rmse"] > 0 and rows[2]["ate_rmse"] is None
    assert [s["done"] for s in seen] == [1, 2, 3] and seen[-1]["eta_s"] == 0
    assert (tmp_path / "out" / SUMMARY_NAME).is_file() and "broken.mp4" in summary_table(rows)
    # again: complete stores are skipped, an incomplete one resumes
    with RunStore.open(rows[2]["store"], "a") as st:
        st.set_status("interrupted")
    again = reconstruct_many(sources, tmp_path / "out", predictor=factory, config=BASE_CONFIG, workers=2)
    assert [r["status"] for r in again] == ["skipped", "failed", "complete"]
    assert RunStore.open(rows[2]["store"], "r").status == "complete"


class _Killed(Exception):
    pass


def _parts(work: Path, factory, video) -> list:
    from da3stream.scaleout.segment import run_segment
    from da3stream.scaleout.split import plan_segments

    folder = work / "run.zarr.parts"
    paths = []
    for seg in plan_segments(N_FRAMES, 2, 16, 4):
        paths.append(folder / f"part-{seg.k:03d}.zarr")
        run_segment(video, paths[-1], seg, factory(), BASE_CONFIG)
    return paths


def test_a_merge_interrupted_midway_reruns_to_the_same_store(seq_files, tmp_path, monkeypatch):
    from da3stream.scaleout import merge as merge_mod

    _work, factory, video, _gt = seq_files
    ref_parts = _parts(tmp_path / "ref", factory, video)
    merge_mod.merge_parts(ref_parts, tmp_path / "ref" / "run.zarr", BASE_CONFIG, factory())
    parts = _parts(tmp_path / "cut", factory, video)
    out = tmp_path / "cut" / "run.zarr"

    def die_after(k):
        if k == 40:
            raise _Killed

    with pytest.raises(_Killed):  # killed while moving pixels: some frames moved, nothing committed
        merge_mod.merge_parts(parts, out, BASE_CONFIG, factory(), after_move=die_after)
    assert RunStore.open(out, "r").n_frames == 0
    real = merge_mod._graph
    monkeypatch.setattr(merge_mod, "_graph", lambda *a, **k: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):  # killed after the assembly commit, before the pose graph
        merge_mod.merge_parts(parts, out, BASE_CONFIG, factory())
    monkeypatch.setattr(merge_mod, "_graph", real)
    merge_mod.merge_parts(parts, out, BASE_CONFIG, factory())
    merge_mod.merge_parts(parts, out, BASE_CONFIG, factory())  # a rerun of a finished merge changes nothing
    st, ref = RunStore.open(out, "r"), RunStore.open(tmp_path / "ref" / "run.zarr", "r")
    assert st.status == "complete" and st.committed["pose_epoch"] == 1
    idx_a, pose_a = _poses(ref.path)
    idx_b, pose_b = _poses(out)
    assert np.array_equal(idx_a, idx_b) and np.max(np.abs(pose_a - pose_b)) <= 1e-9
    assert np.array_equal(ref.depth(slice(0, N_FRAMES)), st.depth(slice(0, N_FRAMES)))
    assert st.committed["n_loops"] == ref.committed["n_loops"]


def test_cli_scaleout_flags_set_the_config():
    from da3stream.cli import _run_parser, config_overrides

    args = _run_parser().parse_args(["v.mp4", "--out", "r.zarr", "--workers", "4", "--ray", "auto"])
    assert config_overrides(args) == {"scaleout.workers": 4, "scaleout.ray_address": "auto"}


def test_a_local_ray_with_too_few_gpus_is_refused(ray_local):
    from da3stream.config import load_config, to_dict
    from da3stream.scaleout.workers import make_workers

    cfg = load_config({"scaleout": {"workers": 2, "gpus_per_worker": 1.0}})
    with pytest.raises(ConfigError, match="need 2 GPUs; the Ray cluster has 0"):
        make_workers(ray_local, 2, None, cfg, to_dict(cfg))


def test_a_failed_split_run_resumes_where_it_stopped(ray_local, split_run, seq_files, tmp_path):
    from da3stream.errors import Da3StreamError
    from da3stream.scaleout.driver import parts_dir
    from da3stream.streaming import reconstruct

    _work, factory, video, _gt = seq_files
    out = tmp_path / "failed.zarr"
    failing = SyntheticFactory(factory.preset, factory.n_frames, hold_at_call=3, marker=str(tmp_path / "m"), fail=True)
    with pytest.raises(Da3StreamError, match="simulated predictor failure"):
        reconstruct(video, out, predictor=failing, config=SPLIT)
    assert parts_dir(out).is_dir()
    with pytest.raises(Da3StreamError, match="--resume"):
        reconstruct(video, out, predictor=factory, config=SPLIT)
    summary = reconstruct(video, out, predictor=factory, config=SPLIT, resume=True)
    parts = summary.timings["parts"]
    assert all(p["status"] == "complete" for p in parts) and any(p.get("resumed") for p in parts)
    idx_a, pose_a = _poses(split_run[0])
    idx_b, pose_b = _poses(out)
    assert np.array_equal(idx_a, idx_b) and np.max(np.abs(pose_a - pose_b)) <= 1e-9
