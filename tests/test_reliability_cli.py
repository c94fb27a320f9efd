"""Bad input through the command line: a one-line error naming the file and the problem with the error's exit
code, or, where the run can go on, a flagged skip recorded in the store's ``source/`` table.

The CLI builds its predictor from ``--model``; runs that must succeed get the simulated
predictor instead (``pipeline._resolve_predictor`` is replaced), so these tests need no
network weights. Error cases that fail before any prediction use the real loading path.
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
from da3stream.errors import CheckpointError, ConfigError, SourceError, StoreError
from da3stream.io.store import RunStore, SkipReason
from da3stream.io.export.trajectory import read_tum
from da3stream.io.sources.video_write import write_video
from da3stream.synthetic import make_sequence
from tests.test_faults import CLI_CFG, Wrapped, run_cli

N = 24
HW = (48, 64)
DEPTH_HW = (24, 32)


@pytest.fixture(scope="module")
def seq():
    return make_sequence("demo", n_frames=N, width=HW[1], height=HW[0])


@pytest.fixture(scope="module")
def images(seq):
    return [seq.rgb(i) for i in range(N)]


def sim(seq, depth_hw=DEPTH_HW) -> SimulatedPredictor:
    return SimulatedPredictor(seq, depth_hw=depth_hw, params=SimParams(), seed=0)


@pytest.fixture
def model(monkeypatch):
    """``model["predictor"] = ...`` makes the CLI run with that predictor."""
    from da3stream.streaming import pipeline

    holder = {}
    monkeypatch.setattr(pipeline, "_resolve_predictor", lambda predictor, cfg: holder["predictor"])
    return holder


def write_folder(folder, images, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"frame_{i:03d}.{ext}"), np.ascontiguousarray(im[:, :, ::-1]))
    return folder


def one_line_error(result, exc_type, *needles) -> str:
    rc, err = result
    assert rc == exc_type.exit_code, (rc, err)
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("error: ") and "Traceback" not in line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def source_log(out):
    return RunStore.open(out).source_table()


# --------------------------------------------------------------------------- missing and empty sources


def test_missing_file_and_folder(tmp_path, capsys):
    for name in ("nothing_here.mp4", "no_folder"):
        one_line_error(run_cli([tmp_path / name, "--out", tmp_path / "o.zarr"], capsys), SourceError, name, "no such file")


def test_empty_folder_and_folder_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli([tmp_path / "empty", "--out", tmp_path / "o.zarr"], capsys), SourceError, "empty", "folder is empty")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("not an image")
    one_line_error(run_cli([docs, "--out", tmp_path / "o.zarr"], capsys), SourceError, "docs", "no image files")
    assert not (tmp_path / "o.zarr").exists()  # nothing is created for a source that cannot be read


# --------------------------------------------------------------------------- damaged videos


def _png_video(path, images):
    write_video(path, images, 10.0, codec="png", pix_fmt="rgb24")  # lossless: one self-contained packet per frame
    import av

    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]


def test_truncated_video_fails_on_open(tmp_path, images, capsys):
    full = tmp_path / "full.mp4"
    write_video(full, images, 10.0)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # the mp4 index is at the end
    one_line_error(run_cli([cut, "--out", tmp_path / "o.zarr"], capsys), SourceError, "cut.mp4", "not a readable video")


def test_video_with_zero_decodable_frames(tmp_path, images, capsys):
    path = tmp_path / "v.mov"
    packets = _png_video(path, images[:6])
    blob = bytearray(path.read_bytes())
    for pos, size in packets:
        blob[pos : pos + size] = bytes(size)
    bad = tmp_path / "zeros.mov"
    bad.write_bytes(bytes(blob))
    one_line_error(run_cli([bad, "--out", tmp_path / "o.zarr"], capsys), SourceError, "zeros.mov", "no decodable video frames")


def test_corrupt_frames_mid_video_are_skipped_recorded_and_survive_a_resume(tmp_path, seq, images, model, capsys):
    """Frames 5 and 23 (the last) are damaged: the run goes on; the source log records them as decode errors."""
    path = tmp_path / "v.mov"
    packets = _png_video(path, images)
    blob = bytearray(path.read_bytes())
    for k in (5, N - 1):
        pos, size = packets[k]
        blob[pos + size // 2 : pos + size // 2 + 64] = bytes(64)
    bad = tmp_path / "damaged.mov"
    bad.write_bytes(bytes(blob))

    out = tmp_path / "run.zarr"
    model["predictor"] = sim(seq)
    assert run_cli([bad, "--out", out] + CLI_CFG, capsys)[0] == 0
    src, fr = source_log(out), RunStore.open(out).frames_table()
    np.testing.assert_array_equal(src["index"], np.arange(N))
    skipped = src["skipped_reason"] != int(SkipReason.NONE)
    # a threaded decoder may also lose the frame before a damaged last packet; every loss is recorded
    assert {5, N - 1} <= set(np.flatnonzero(skipped).tolist()) <= {5, N - 2, N - 1}
    assert np.all(src["skipped_reason"][skipped] == int(SkipReason.DECODE_ERROR))
    assert not src["kept"][skipped].any() and np.all(np.isnan(src["timestamp"][skipped]))
    np.testing.assert_array_equal(fr["index"], np.flatnonzero(~skipped))

    # interrupted after the first window, then resumed: the same source log and trajectory
    out2 = tmp_path / "resumed.zarr"

    def stop(batch, call, pred):
        if call == 2:
            raise KeyboardInterrupt

    model["predictor"] = Wrapped(sim(seq), stop)
    assert run_cli([bad, "--out", out2] + CLI_CFG, capsys)[0] == 130
    model["predictor"] = sim(seq)
    assert run_cli([bad, "--out", out2, "--resume"] + CLI_CFG, capsys)[0] == 0
    src2 = source_log(out2)
    for key in ("index", "kept", "skipped_reason"):
        np.testing.assert_array_equal(src2[key], src[key])
    np.testing.assert_allclose(RunStore.open(out2).frames_table()["world_from_cam"], fr["world_from_cam"], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- image folders


def test_mixed_resolutions_in_one_folder(tmp_path, seq, images, model, capsys):
    folder = write_folder(tmp_path / "mixed", images)
    big = cv2.resize(images[3], (128, 96), interpolation=cv2.INTER_NEAREST)  # same aspect: resized back
    cv2.imwrite(str(folder / "frame_003.png"), big[:, :, ::-1])
    cv2.imwrite(str(folder / "frame_005.png"), images[5][:, :48, ::-1])  # another aspect ratio: skipped
    out = tmp_path / "run.zarr"
    model["predictor"] = sim(seq)
    assert run_cli([folder, "--out", out] + CLI_CFG, capsys)[0] == 0
    src = source_log(out)
    assert src["skipped_reason"][5] == int(SkipReason.INVALID) and not src["kept"][5]
    assert np.all(np.delete(src["skipped_reason"], 5) == int(SkipReason.NONE))
    np.testing.assert_array_equal(RunStore.open(out).frames_table()["index"], np.delete(np.arange(N), 5))


def test_grayscale_rgba_16bit_and_cmyk_images_are_read(tmp_path, seq, images, model, capsys):
    PIL_Image = pytest.importorskip("PIL.Image")
    folder = write_folder(tmp_path / "formats", images)
    gray = cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(folder / "frame_000.png"), gray)
    cv2.imwrite(str(folder / "frame_001.png"), np.dstack([images[1][:, :, ::-1], np.full(HW, 128, np.uint8)]))
    cv2.imwrite(str(folder / "frame_002.png"), images[2][:, :, ::-1].astype(np.uint16) * 257)
    (folder / "frame_003.png").unlink()
    PIL_Image.fromarray(images[3]).convert("CMYK").save(folder / "frame_003.jpg", quality=100)
    out = tmp_path / "run.zarr"
    model["predictor"] = sim(seq)
    assert run_cli([folder, "--out", out, "--set", "store.save_rgb=true"] + CLI_CFG, capsys)[0] == 0
    st = RunStore.open(out)
    assert np.all(st.source_table()["skipped_reason"] == int(SkipReason.NONE))
    np.testing.assert_array_equal(st.frames_table()["index"], np.arange(N))
    rgb = st.rgb(np.arange(4)).astype(int)
    assert np.all(rgb[0, ..., 0] == rgb[0, ..., 1])  # grayscale became three equal channels


def test_tiny_frames(tmp_path, images, capsys):
    folder = write_folder(tmp_path / "tiny", [cv2.resize(im, (20, 15)) for im in images[:3]])
    one_line_error(run_cli([folder, "--out", tmp_path / "o.zarr"], capsys), SourceError, "frame_000.png", "20x15",
                   "28-pixel")


def test_8k_frames_are_downscaled_on_read_and_run(tmp_path, model, capsys):
    """7680x4320 frames: with the default source.max_side (2048) the engine never holds an 8K frame past decoding."""
    seq16x9 = make_sequence("demo", n_frames=2, width=64, height=36)
    folder = tmp_path / "8k"
    folder.mkdir()
    for i in range(2):
        big = cv2.resize(seq16x9.rgb(i), (7680, 4320), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(folder / f"f{i}.jpg"), big[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
    seen = []

    def record(batch, call, pred):
        seen.append(batch.images.shape)

    model["predictor"] = Wrapped(sim(seq16x9, (18, 32)), record)
    out = tmp_path / "run.zarr"
    assert run_cli([folder, "--out", out] + CLI_CFG, capsys)[0] == 0
    st = RunStore.open(out)
    assert tuple(st.image_hw) == (1152, 2048) and st.n_frames == 2
    assert st.source["width"] == 7680 and st.source["output_width"] == 2048
    assert all(s[1:3] == (1152, 2048) for s in seen)


def test_non_ascii_and_space_paths_for_sources_and_outputs(tmp_path, seq, images, model, capsys):
    base = tmp_path / "données d'entrée été"
    folder = write_folder(base / "séquence 1", images)
    video = base / "vidéo à tester.mp4"
    write_video(video, images, 10.0)
    for source, name in ((folder, "dossier"), (video, "vidéo")):
        out = tmp_path / "sortie à tester" / f"run {name} ü.zarr"
        tum = tmp_path / "sortie à tester" / f"trajectoire {name}.txt"
        out.parent.mkdir(exist_ok=True)
        model["predictor"] = sim(seq)
        assert run_cli([source, "--out", out, "--tum", tum] + CLI_CFG, capsys)[0] == 0
        st = RunStore.open(out)
        assert st.status == "complete" and st.n_frames == N
        assert str(source) in st.source["path"]
        ts, poses = read_tum(tum)
        assert ts.shape == (N,) and np.all(np.isfinite(poses))


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(tmp_path, kind: str):
    d = tmp_path / f"ckpt {kind}"
    if kind == "missing":
        return d
    d.mkdir()
    if kind == "corrupt_config":
        (d / "config.json").write_text("{ not json")
        (d / "model.safetensors").write_bytes(b"")
        return d
    (d / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    if kind == "truncated":
        save_file({"model.x": torch.zeros(64, 64)}, str(d / "model.safetensors"))
        blob = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    elif kind == "other_preset":
        from da3stream.core import network

        key, value = next(iter(network.build_network("small").state_dict().items()))
        save_file({"model." + key: torch.zeros((2 * value.shape[0],) + tuple(value.shape[1:]))}, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("kind, needle", [
    ("missing", "checkpoint directory not found"),
    ("corrupt_config", "not valid JSON"),
    ("truncated", "corrupt or truncated"),
    ("other_preset", "shape mismatch"),
])
def test_wrong_or_corrupt_checkpoint(tmp_path, images, capsys, kind, needle):
    pytest.importorskip("da3stream.core.network", reason="network module not available")
    folder = write_folder(tmp_path / "frames", images[:2])
    ckpt = _checkpoint(tmp_path, kind)
    line = one_line_error(run_cli([folder, "--out", tmp_path / "o.zarr", "--model", ckpt, "--quiet"], capsys),
                          CheckpointError, needle)
    assert f"ckpt {kind}" in line


# --------------------------------------------------------------------------- config and CLI values


def test_unknown_config_key_gets_a_suggestion(tmp_path, images, capsys):
    folder = write_folder(tmp_path / "frames", images[:2])
    one_line_error(run_cli([folder, "--out", tmp_path / "o.zarr", "--set", "loop.enabeld=false"], capsys),
                   ConfigError, "unknown config key 'loop.enabeld'", "did you mean 'loop.enabled'")
    bad = tmp_path / "my config.yaml"
    bad.write_text("keyframes:\n  min_chnage: 0.1\n")
    one_line_error(run_cli([folder, "--out", tmp_path / "o.zarr", "--config", bad], capsys),
                   ConfigError, "my config.yaml", "keyframes.min_chnage", "did you mean 'keyframes.min_change'")
    bad.write_text("overlap: [unclosed\n")
    one_line_error(run_cli([folder, "--out", tmp_path / "o.zarr", "--config", bad], capsys),
                   ConfigError, "my config.yaml", "invalid YAML")


@pytest.mark.parametrize("args, needle", [
    (["--overlap", "-1"], "overlap must be >= 0"),
    (["--chunk-size", "8", "--overlap", "8"], "overlap (8) must be smaller than chunk_size (8)"),
    (["--chunk-size", "8", "--overlap", "12"], "must be smaller than chunk_size"),
    (["--chunk-size", "0"], "chunk_size must be >= 1"),
    (["--gpu-mem-gb", "-2"], "gpu_mem_gb must be > 0"),
    (["--fps", "-5"], "source.fps must be > 0"),
    (["--stride", "0"], "source.stride must be >= 1"),
    (["--set", "overlap=two"], "expected an integer"),
])
def test_invalid_cli_values(tmp_path, images, capsys, args, needle):
    folder = write_folder(tmp_path / "frames", images[:2])
    one_line_error(run_cli([folder, "--out", tmp_path / "o.zarr"] + args, capsys), ConfigError, needle)


def test_unparsable_number_is_argparses_usage_error(tmp_path, capsys):
    from da3stream.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), "--out", str(tmp_path / "o.zarr"), "--overlap", "abc"])
    assert info.value.code == 2
    assert "argument --overlap: invalid int value: 'abc'" in capsys.readouterr().err


# --------------------------------------------------------------------------- stores passed to --resume


@pytest.fixture
def finished_store(tmp_path, seq, images, model, capsys):
    folder = write_folder(tmp_path / "frames", images)
    out = tmp_path / "run.zarr"
    model["predictor"] = sim(seq)
    assert run_cli([folder, "--out", out] + CLI_CFG, capsys)[0] == 0
    return folder, out


def test_resume_refuses_a_store_from_a_newer_format(finished_store, seq, model, capsys):
    folder, out = finished_store
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (out / "zarr.json").write_text(json.dumps(meta))
    model["predictor"] = sim(seq)
    one_line_error(run_cli([folder, "--out", out, "--resume"] + CLI_CFG, capsys), StoreError, str(out),
                   "newer da3stream (format 99 > 1)")


def test_resume_refuses_a_store_made_with_another_config(finished_store, seq, model, capsys):
    folder, out = finished_store
    model["predictor"] = sim(seq)
    args = [folder, "--out", out, "--resume"] + CLI_CFG + ["--set", "align.kernel=cauchy"]
    one_line_error(run_cli(args, capsys), StoreError, str(out), "cannot resume: config key 'align.kernel' differs",
                   "'huber'", "'cauchy'")


def test_resume_refuses_a_corrupt_store_and_run_refuses_an_existing_one(finished_store, seq, model, capsys):
    folder, out = finished_store
    model["predictor"] = sim(seq)
    one_line_error(run_cli([folder, "--out", out] + CLI_CFG, capsys), StoreError, str(out), "already exists",
                   "--resume")
    (out / "zarr.json").write_text('{"attributes": ')
    one_line_error(run_cli([folder, "--out", out, "--resume"] + CLI_CFG, capsys), StoreError, str(out),
                   "store metadata is corrupt")


# --------------------------------------------------------------------------- a real process


def test_errors_in_a_real_process_are_one_line_without_traceback(tmp_path):
    """Outside pytest's log capture: the user's terminal sees exactly one line."""
    cases = [
        ([str(tmp_path / "missing video.mp4"), "--out", str(tmp_path / "o.zarr")], SourceError, "missing video.mp4"),
        ([str(tmp_path), "--out", str(tmp_path / "o.zarr"), "--set", "loop.enabeld=1"], ConfigError, "did you mean"),
    ]
    for args, exc_type, needle in cases:
        r = subprocess.run([sys.executable, "-m", "da3stream.cli"] + args, capture_output=True, text=True, timeout=120)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == exc_type.exit_code, r.stderr
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
