"""What a user meets first on the command line (issue 13): random-weight presets, an honest progress bar,
output-path errors before the model loads, warnings instead of silent degradation, no leftovers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from da3stream.errors import StoreError
from da3stream.io.store import RunStore
from da3stream.io.store.zarr_util import LOCK_NAME, WriterLock
from da3stream.streaming.pipeline import reconstruct
from tests.test_faults import CFG, Wrapped, frames_of, interrupt_at, run_cli, sim
from tests.test_faults import seq  # noqa: F401 - the module's fixture


# --------------------------------------------------------------------------- item 7: the writer lock


def test_the_writer_lock_exists_while_running_and_is_removed_when_the_run_completes(tmp_path, seq):
    out = tmp_path / "r.zarr"
    seen = []

    def progress(info):
        seen.append((out / LOCK_NAME).exists())
        assert not WriterLock(out).acquire()  # a second writer is refused while the run holds it

    reconstruct(frames_of(seq), out, predictor=sim(seq), config=CFG, progress=progress)
    assert seen and all(seen)
    assert not (out / LOCK_NAME).exists()
    assert RunStore.open(out).status == "complete"


def test_the_writer_lock_is_removed_after_an_interrupted_and_a_failed_run(tmp_path, seq):
    out = tmp_path / "i.zarr"
    with pytest.raises(KeyboardInterrupt):
        reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), interrupt_at(3)), config=CFG)
    assert not (out / LOCK_NAME).exists()

    def fail(batch, call, pred):
        if call == 3:
            raise StoreError("injected")

    out2 = tmp_path / "f.zarr"
    with pytest.raises(StoreError):
        reconstruct(frames_of(seq), out2, predictor=Wrapped(sim(seq), fail), config=CFG)
    assert not (out2 / LOCK_NAME).exists()
    s = reconstruct(frames_of(seq), out2, predictor=sim(seq), config=CFG, resume=True)  # resume still works
    assert s.status == "complete" and not (out2 / LOCK_NAME).exists()


def test_a_lock_file_left_by_a_killed_writer_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    lock = WriterLock(tmp_path)
    assert lock.acquire()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


# --------------------------------------------------------------------------- item 7: report never replaces ./report.html


@pytest.fixture(scope="module")
def store(seq, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s.zarr"
    reconstruct(frames_of(seq), out, predictor=sim(seq), config=CFG)
    return out


def test_report_without_out_refuses_to_replace_report_html_unless_overwrite(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.html").write_text("mine")
    rc, err = run_cli(["report", store, "--quiet"], capsys)
    assert rc == 8 and len(err) == 1 and "report.html" in err[0] and "--overwrite" in err[0], err
    assert (tmp_path / "report.html").read_text() == "mine"
    assert run_cli(["report", store, "--quiet", "--overwrite"], capsys)[0] == 0
    assert (tmp_path / "report.html").read_text().startswith("<!")
    assert run_cli(["report", store, "--quiet", "--out", tmp_path / "report.html"], capsys)[0] == 0  # named: replaced


# --------------------------------------------------------------------------- item 9: the main help names every source


def test_main_help_names_bags_mcap_and_what_topic_does(capsys):
    from da3stream.cli import _run_parser

    text = " ".join(_run_parser().format_help().split())
    for word in ("ROS 1", "ROS 2", "MCAP", ".mcap", "image folder", "video file"):
        assert word in text, word
    topic = text[text.rindex("--topic TOPIC"):][:300]
    assert "image topic" in topic and "default" in topic, topic


# --------------------------------------------------------------------------- items 3-6: the run command

from tests.test_faults import png_folder  # noqa: E402,F401 - the module's fixture

QUICK = ["--chunk-size", "16", "--overlap", "4", "--no-loop", "--set", "fusion.pixel_stride=8"]


@pytest.fixture
def cli_sim(monkeypatch, seq):
    """The CLI runs the simulated predictor; ``calls`` counts the model loads."""
    from da3stream.streaming import pipeline

    calls = []

    def resolve(predictor, cfg):
        calls.append(cfg.model.id)
        return predictor if predictor is not None else sim(seq)

    monkeypatch.setattr(pipeline, "_resolve_predictor", resolve)
    return calls


def test_model_random_small_runs_from_the_cli_and_is_labelled_random(tmp_path, png_folder, caplog, capsys):
    out = tmp_path / "r.zarr"
    args = [png_folder, "--out", out, "--model", "random-small", "--max-frames", "10", "--chunk-size", "6",
            "--overlap", "2", "--no-loop", "--no-keyframes", "--quiet", "--set", "model.process_res=56",
            "--set", "model.device=cpu", "--set", "fusion.pixel_stride=8"]
    with caplog.at_level("WARNING"):
        rc, err = run_cli(args, capsys)
    assert rc == 0, err
    assert any("RANDOM" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    st = RunStore.open(out)
    assert st.status == "complete" and st.n_frames == 10
    assert st.model["weights_random"] is True and st.model["id"].startswith("random:small")
    # the exports say so too: the PLY header and nerfstudio's transforms.json
    import json

    rc, err = run_cli(["export", out, "--ply", tmp_path / "map.ply", "--nerfstudio", tmp_path / "ns"], capsys)
    assert rc == 0, err
    header = (tmp_path / "map.ply").read_bytes().split(b"end_header")[0].decode()
    assert "RANDOM weights" in header and "random:small" in header
    meta = json.loads((tmp_path / "ns" / "transforms.json").read_text())["da3stream"]
    assert meta["weights_random"] is True and meta["model"].startswith("random:small")


def test_no_model_error_names_the_download_command_and_model_dir(tmp_path, png_folder, capsys):
    rc, err = run_cli([png_folder, "--out", tmp_path / "r.zarr", "--quiet"], capsys)
    assert rc == 2 and len(err) == 1, err
    assert "huggingface-cli download depth-anything/DA3-LARGE --local-dir checkpoints/DA3-LARGE" in err[0]
    assert "--model" in err[0] and "predictor=" not in err[0]
    assert not (tmp_path / "r.zarr").exists()


def test_progress_counts_source_frames_read_against_the_folder_total(tmp_path, png_folder, cli_sim, capsys):
    rc, err = run_cli([png_folder, "--out", tmp_path / "r.zarr", "--max-frames", "40"] + QUICK, capsys)
    assert rc == 0
    text = "\n".join(err)
    assert "40/40" in text and "keyframes=" in text and "windows=" in text and "loops=" in text, text[-400:]
    rc, err = run_cli([png_folder, "--out", tmp_path / "all.zarr"] + QUICK, capsys)
    assert rc == 0 and "60/60" in "\n".join(err)  # keyframes are fewer: the bar still ends at 100 %


def test_a_video_gets_its_total_from_the_container(tmp_path, seq):
    from da3stream.cli import _source_total
    from da3stream.config import load_config
    from da3stream.io.sources.video_write import write_video

    video = tmp_path / "v.mp4"
    write_video(video, [seq.rgb(i) for i in range(30)], 10.0)
    assert _source_total(str(video), load_config(None)) == 30
    assert _source_total(str(video), load_config(None, {"source.stride": 4})) == 8
    assert _source_total(str(video), load_config(None, {"source.max_frames": 12})) == 12
    assert _source_total(str(video), load_config(None, {"source.fps": 5.0})) == 15


def test_out_that_is_an_existing_file_fails_before_the_model_loads(tmp_path, png_folder, cli_sim, capsys):
    out = tmp_path / "r.zarr"
    out.write_text("not a store")
    rc, err = run_cli([png_folder, "--out", out, "--quiet"], capsys)
    assert rc == 5 and len(err) == 1 and str(out) in err[0] and "existing file" in err[0], err
    assert cli_sim == [] and out.read_text() == "not a store"


def test_out_that_is_a_non_store_directory_is_named_not_a_store(tmp_path, png_folder, cli_sim, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        rc, err = run_cli([png_folder, "--out", out, "--quiet"] + extra, capsys)
        assert rc == 5 and len(err) == 1 and "not a da3stream store" in err[0], err
    assert cli_sim == [] and (out / "notes.txt").read_text() == "keep"


def test_out_in_a_read_only_directory_fails_before_the_model_loads(tmp_path, png_folder, cli_sim, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (the check itself: test_unwritable_out_is_refused)")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        rc, err = run_cli([png_folder, "--out", out, "--quiet"], capsys)
    finally:
        out.chmod(0o700)
    assert rc == 5 and len(err) == 1 and "not writable" in err[0], err
    assert cli_sim == []


def test_unwritable_out_is_refused(tmp_path, monkeypatch):
    from da3stream.io.store import paths

    empty, missing = tmp_path / "ro", tmp_path / "ro" / "new.zarr"
    empty.mkdir()
    paths.check_out_path(empty)
    paths.check_out_path(missing)
    monkeypatch.setattr(paths.os, "access", lambda p, mode: False)
    with pytest.raises(StoreError, match="not writable"):
        paths.check_out_path(empty)
    with pytest.raises(StoreError, match="not writable"):
        paths.check_out_path(missing)


def test_resume_where_no_store_is_says_to_drop_resume(tmp_path, png_folder, cli_sim, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "missing.zarr", empty):
        rc, err = run_cli([png_folder, "--out", out, "--resume", "--quiet"], capsys)
        assert rc == 5 and len(err) == 1 and "drop --resume" in err[0], err
    assert cli_sim == [] and not (tmp_path / "missing.zarr").exists()
    (empty / LOCK_NAME).write_text("")  # what a writer killed before its first commit leaves: resume starts over
    assert run_cli([png_folder, "--out", empty, "--resume"] + QUICK + ["--quiet"], capsys)[0] == 0


# --------------------------------------------------------------------------- item 6: no silent degradation


def _cut_video(tmp_path, seq, n=30):
    """An mp4 with its index first (faststart), cut at 60 %: it opens, declares n frames and decodes fewer."""
    import av

    from da3stream.io.sources.video_write import write_video

    full, fast, cut = tmp_path / "full.mp4", tmp_path / "fast.mp4", tmp_path / "cut.mp4"
    write_video(full, [seq.rgb(i) for i in range(n)], 10.0)
    with av.open(str(full)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    blob = fast.read_bytes()
    cut.write_bytes(blob[: len(blob) * 6 // 10])
    return cut


def test_a_truncated_video_warns_and_is_recorded_in_the_store(tmp_path, seq, cli_sim, caplog, capsys):
    cut = _cut_video(tmp_path, seq)
    out = tmp_path / "r.zarr"
    with caplog.at_level("WARNING"):
        rc, err = run_cli([cut, "--out", out, "--quiet", "--no-keyframes"] + QUICK, capsys)
    assert rc == 0, err
    st = RunStore.open(out)
    trunc = st.attrs_get("run")["source_truncated"]
    assert trunc["declared"] == 30 and 0 < trunc["decoded"] < 30 and st.status == "complete"
    assert any("declares 30 frames" in r.getMessage() for r in caplog.records)
    # an intact video records nothing
    full = tmp_path / "full.mp4"
    assert run_cli([full, "--out", tmp_path / "ok.zarr", "--quiet"] + QUICK, capsys)[0] == 0
    assert "source_truncated" not in RunStore.open(tmp_path / "ok.zarr").attrs_get("run")


def test_frames_of_another_size_but_the_same_aspect_ratio_warn_once(tmp_path, seq, caplog):
    import cv2

    from da3stream.io.sources import open_source

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(6):
        im = seq.rgb(i)
        if i in (2, 4):
            im = cv2.resize(im, (im.shape[1] * 2, im.shape[0] * 2))
        cv2.imwrite(str(folder / f"f{i:02d}.png"), np.ascontiguousarray(im[:, :, ::-1]))
    with caplog.at_level("WARNING"), open_source(str(folder)) as src:
        frames = list(src)
    assert len(frames) == 6 and {f.image.shape for f in frames} == {seq.rgb(0).shape}
    warned = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
    assert len(warned) == 1 and "128x96" in warned[0], warned


def test_the_intact_robot_video_is_not_called_truncated(shared_dir, caplog):
    """Its container declares one frame more than decodes (FRAME_COUNT_SLACK): no false alarm on an intact file."""
    from da3stream.io.sources import open_source

    with caplog.at_level("WARNING"), open_source(str(shared_dir / "data" / "robot_unitree.mp4")) as src:
        n = sum(1 for _ in src)
    assert n >= src.info.n_frames - 1 and src.truncated is None
    assert not any("could be decoded" in r.getMessage() for r in caplog.records)
