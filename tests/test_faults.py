"""Faults during a run: SIGKILL, a full disk, GPU out-of-memory, Ctrl-C and NaN/inf predictions never lose a run.

Every test drives the real pipeline with the simulated predictor on a tiny synthetic
sequence (64x48 frames, 24x32 depth grid) and compares what survives a fault with
an uninterrupted run of the same input.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from da3stream.bench.killresume import check_store, compare_stores, kill_resume_trials
from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
from da3stream.errors import PredictionError, StoreError
from da3stream.io.store import RunStore, SkipReason
from da3stream.streaming.pipeline import reconstruct
from da3stream.synthetic import make_sequence

N_FRAMES = 60
HW = (48, 64)
DEPTH_HW = (24, 32)
CFG = {"chunk_size": 16, "overlap": 4, "loop.enabled": False, "keyframes.enabled": False, "fusion.pixel_stride": 8}
TOL = 1e-9


@pytest.fixture(scope="module")
def seq():
    return make_sequence("demo", n_frames=N_FRAMES, width=HW[1], height=HW[0])


def sim(seq) -> SimulatedPredictor:
    return SimulatedPredictor(seq, depth_hw=DEPTH_HW, params=SimParams(), seed=0)


def frames_of(seq) -> list:
    """A re-iterable source: the simulator reads ground truth by index, so blank pixels do."""
    return [(np.zeros(HW + (3,), np.uint8), float(t)) for t in seq.timestamps]


@pytest.fixture(scope="module")
def reference(seq, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    reconstruct(frames_of(seq), out, predictor=sim(seq), config=CFG)
    return out


def assert_same_run(ref, other):
    cmp = compare_stores(ref, other)
    assert cmp["same_frames"] and cmp["same_source_log"], cmp
    assert cmp["max_abs_diff"] <= TOL and cmp["world_from_chunk_max_abs_diff"] <= TOL, cmp
    assert cmp["equal"], cmp


class Crash(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch it)."""


class Wrapped:
    """A predictor that calls ``hook(batch, call_number)`` before (and may replace) the inner prediction."""

    def __init__(self, inner, hook):
        self.inner, self.hook, self.calls = inner, hook, 0
        self.model_id = inner.model_id

    def predict(self, batch):
        self.calls += 1
        pred = self.inner.predict(batch)
        return self.hook(batch, self.calls, pred) or pred


# --------------------------------------------------------------------------- SIGKILL


def test_sigkill_at_random_moments_with_loop_closure_resumes_to_the_same_trajectory(tmp_path):
    """3 SIGKILLs in a chain of resuming worker processes on a revisiting path (loops close); CI size of the benchmark."""
    result = kill_resume_trials(tmp_path, kills=3, n_frames=96, seed=1)
    assert result["reference"]["loops"] > 0, "the scenario must exercise loop closure"
    for trial in result["trials"]:
        assert trial["store"]["readable"], trial
    assert result["comparison"]["same_frames"] and result["comparison"]["same_loops"], result["comparison"]
    assert result["max_abs_diff"] <= TOL, result["comparison"]
    assert result["all_equal"], result


# --------------------------------------------------------------------------- disk full


def _mount_tmpfs(mountpoint, size_bytes: int) -> bool:
    mountpoint.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mountpoint)],
                       capture_output=True)
    return r.returncode == 0


def _fill(path) -> None:
    """Write a ballast file until the filesystem is full."""
    block = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def _wait_for_commits(store, n_chunks: int, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while check_store(store).get("chunks", 0) < n_chunks:
        assert time.time() < deadline, f"{store}: {n_chunks} windows were not committed in {timeout_s} s"
        time.sleep(0.02)


def test_disk_full_on_a_small_tmpfs_then_resume_after_freeing_space(tmp_path, seq, reference):
    """A real ENOSPC from the kernel (another file fills the disk mid-run): one-line StoreError naming the store,
    the store readable at its last commit; after the file is deleted, resume completes the same run."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 16 << 20):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission); the injected-ENOSPC test covers it")
    try:
        out, ballast = disk / "run.zarr", disk / "ballast.bin"

        def fill_at_window_4(batch, call, pred):
            if call == 4:  # once two windows are on disk (the writer runs behind the predictor), fill it
                _wait_for_commits(out, 2)
                _fill(ballast)

        with pytest.raises(StoreError) as info:
            reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), fill_at_window_4), config=CFG)
        msg = str(info.value)
        assert "\n" not in msg and "disk full" in msg and str(out) in msg, msg
        report = check_store(out)  # consistent at its last commit
        assert report["exists"] and report["readable"], report
        assert 2 <= report["chunks"] < 5
        ballast.unlink()  # space freed
        summary = reconstruct(frames_of(seq), out, predictor=sim(seq), config=CFG, resume=True)
        assert summary.status == "complete" and summary.resumed
        assert_same_run(reference, out)
    finally:
        r = subprocess.run(["umount", str(disk)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def png_folder(seq, tmp_path_factory):
    folder = tmp_path_factory.mktemp("png") / "frames"
    seq.write_image_folder(folder)
    return folder


def run_cli(args, capsys):
    from da3stream.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


CLI_CFG = ["--chunk-size", "16", "--overlap", "4", "--no-loop", "--no-keyframes", "--quiet", "--set", "fusion.pixel_stride=8"]


@pytest.fixture
def cli_model(monkeypatch):
    """Make the CLI build the given predictor instead of loading a checkpoint."""
    from da3stream.streaming import pipeline

    holder = {}
    monkeypatch.setattr(pipeline, "_resolve_predictor", lambda predictor, cfg: holder["predictor"])
    return holder


def test_disk_full_injected_at_the_store_writer_through_the_cli(tmp_path, seq, png_folder, cli_model, monkeypatch, capsys):
    """ENOSPC raised by the zarr writes of the third window: exit code 5, one line, store at commit 2, resume works."""
    import zarr.storage

    ref = tmp_path / "ref.zarr"
    cli_model["predictor"] = sim(seq)
    assert run_cli([png_folder, "--out", ref] + CLI_CFG, capsys) == (0, [])

    real_set, real_append = zarr.storage.LocalStore.set, RunStore.append_chunk
    disk = {"full": False, "armed": True}

    async def set_or_enospc(self, key, value):
        if disk["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)

    def append(self, record):
        if disk["armed"] and record.chunk_id == 2:  # the disk fills once, during the third window's commit
            disk["full"], disk["armed"] = True, False
        return real_append(self, record)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_or_enospc)
    monkeypatch.setattr(RunStore, "append_chunk", append)
    out = tmp_path / "full.zarr"
    cli_model["predictor"] = sim(seq)
    rc, err = run_cli([png_folder, "--out", out] + CLI_CFG, capsys)
    assert rc == StoreError.exit_code
    assert len(err) == 1 and err[0].startswith("error: ") and "disk full" in err[0] and str(out) in err[0], err
    assert "Traceback" not in err[0]
    disk["full"] = False  # space freed
    st = RunStore.open(out)
    assert st.n_chunks == 2 and check_store(out)["readable"]
    cli_model["predictor"] = sim(seq)
    assert run_cli([png_folder, "--out", out, "--resume"] + CLI_CFG, capsys) == (0, [])
    assert_same_run(ref, out)


def test_a_failed_write_stops_every_later_write(tmp_path):
    """After one store write fails, queued writes are not applied on top of the missing one."""
    from da3stream.streaming.writer import AsyncWriter

    done = []

    def fail():
        raise StoreError("boom")

    w = AsyncWriter(max_pending=4)
    w.submit(lambda: done.append(1))
    w.submit(fail)
    w.submit(lambda: done.append(3))
    with pytest.raises(StoreError, match="boom"):
        w.flush()
    w.submit(lambda: done.append(4))
    w.close()
    assert done == [1]


# --------------------------------------------------------------------------- out of memory


def oom_above(limit: int, from_call: int = 1):
    import torch

    def hook(batch, call, pred):
        if call >= from_call and len(batch) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return hook


def test_out_of_memory_error_is_recognised():
    import torch

    from da3stream.streaming.planner import is_out_of_memory

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_out_of_memory_retries_the_window_smaller(tmp_path, seq):
    """A predictor that fails above 12 frames: windows shrink 16 -> 10 and the run equals a chunk_size=10 run."""
    out = tmp_path / "oom.zarr"
    s = reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), oom_above(12)), config=CFG)
    assert s.status == "complete" and s.chunk_size == 10
    assert s.timings["oom_retries"] == 1
    st = RunStore.open(out)
    np.testing.assert_array_equal(st.frames_table()["index"], np.arange(N_FRAMES))  # every frame once
    assert st.config["chunk_size"] == 10
    ten = tmp_path / "ten.zarr"
    reconstruct(frames_of(seq), ten, predictor=sim(seq), config={**CFG, "chunk_size": 10})
    assert_same_run(ten, out)


def test_out_of_memory_mid_run_then_a_crash_resumes_with_the_smaller_windows(tmp_path, seq):
    out_ref, out = tmp_path / "ref.zarr", tmp_path / "crashed.zarr"
    reconstruct(frames_of(seq), out_ref, predictor=Wrapped(sim(seq), oom_above(12, from_call=3)), config=CFG)
    assert RunStore.open(out_ref).config["chunk_size"] == 16  # the store was created before the shrink

    def hook(batch, call, pred):
        oom_above(12, from_call=3)(batch, call, pred)
        if call == 6:
            raise Crash()

    with pytest.raises(Crash):
        reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), hook), config=CFG)
    # the resumed process has plenty of memory, yet it must go on with the windows the run had shrunk to
    s = reconstruct(frames_of(seq), out, predictor=sim(seq), config=CFG, resume=True)
    assert s.chunk_size == 10 and s.status == "complete"
    assert_same_run(out_ref, out)


def test_out_of_memory_at_the_smallest_window_is_a_one_line_error(tmp_path, seq):
    with pytest.raises(PredictionError) as info:
        reconstruct(frames_of(seq), tmp_path / "x.zarr", predictor=Wrapped(sim(seq), oom_above(0)), config=CFG)
    msg = str(info.value)
    assert "\n" not in msg and "out of memory with a window of 5 frames" in msg, msg


# --------------------------------------------------------------------------- Ctrl-C


def interrupt_at(n: int):
    def hook(batch, call, pred):
        if call == n:
            raise KeyboardInterrupt
    return hook


def test_keyboard_interrupt_keeps_the_committed_windows_and_resume_completes(tmp_path, seq, reference):
    out = tmp_path / "int.zarr"
    with pytest.raises(KeyboardInterrupt):
        reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), interrupt_at(3)), config=CFG)
    st = RunStore.open(out)
    assert st.status == "interrupted" and st.n_chunks == 2
    assert check_store(out)["readable"]
    s = reconstruct(frames_of(seq), out, predictor=sim(seq), config=CFG, resume=True)
    assert s.status == "complete" and s.resumed
    assert_same_run(reference, out)


def test_ctrl_c_through_the_cli_exits_130_with_one_line(tmp_path, seq, png_folder, cli_model, capsys):
    ref, out = tmp_path / "ref.zarr", tmp_path / "int.zarr"
    cli_model["predictor"] = sim(seq)
    assert run_cli([png_folder, "--out", ref] + CLI_CFG, capsys) == (0, [])
    cli_model["predictor"] = Wrapped(sim(seq), interrupt_at(4))
    rc, err = run_cli([png_folder, "--out", out] + CLI_CFG, capsys)
    assert rc == 130
    assert len(err) == 1 and err[0].startswith("interrupted:") and "--resume" in err[0], err
    assert RunStore.open(out).status == "interrupted"
    cli_model["predictor"] = sim(seq)
    assert run_cli([png_folder, "--out", out, "--resume"] + CLI_CFG, capsys) == (0, [])
    assert_same_run(ref, out)


SIGINT_WORKER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
    from da3stream.streaming import pipeline
    from da3stream.synthetic import make_sequence
    from da3stream import cli

    import pathlib, signal, threading
    interrupted = threading.Event()

    # note the signal, then raise KeyboardInterrupt as Python's default handler does; installed
    # explicitly, since a process started from a background job inherits SIGINT ignored
    def on_sigint(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)

    class Slow:
        # from the second window on, each forward waits until the SIGINT has arrived
        def __init__(self, inner):
            self.inner, self.model_id, self.calls = inner, inner.model_id, 0
        def predict(self, batch):
            self.calls += 1
            if self.calls >= 2:
                pathlib.Path({marker!r}).touch()
                interrupted.wait(120)
            return self.inner.predict(batch)

    seq = make_sequence("demo", n_frames={n}, width={w}, height={h})
    pred = Slow(SimulatedPredictor(seq, depth_hw={dhw!r}, params=SimParams(), seed=0))
    pipeline._resolve_predictor = lambda predictor, cfg: pred
    sys.exit(cli.main({args!r}))
""")


def test_sigint_to_a_cli_process_stops_cleanly_and_resume_completes(tmp_path, seq, png_folder, repo_root):
    """A real SIGINT to a running CLI process: exit 130, one line, no traceback, status interrupted; resume completes."""
    ref = tmp_path / "ref.zarr"
    reconstruct(str(png_folder), ref, predictor=sim(seq), config=CFG)
    out = tmp_path / "sigint.zarr"
    args = [str(png_folder), "--out", str(out)] + CLI_CFG
    marker = tmp_path / "second-forward-started"
    code = SIGINT_WORKER.format(root=str(repo_root), n=N_FRAMES, w=HW[1], h=HW[0], dhw=DEPTH_HW, args=args,
                                marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # causal, not timed: the worker holds its second forward until the signal comes, so the run
        # cannot finish first however loaded the machine is
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if marker.exists() and (out / "zarr.json").exists() and check_store(out).get("chunks", 0) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("interrupted:"), err[-2000:]
    st = RunStore.open(out)
    assert st.status == "interrupted" and 1 <= st.n_chunks < RunStore.open(ref).n_chunks
    s = reconstruct(str(png_folder), out, predictor=sim(seq), config=CFG, resume=True)
    assert s.status == "complete"
    assert_same_run(ref, out)


# --------------------------------------------------------------------------- NaN / inf predictions


def poison(kind: str, frame: int):
    """Spoil the prediction of the window holding source ``frame`` (content-based, so a resumed run sees it too)."""

    def hook(batch, call, pred):
        if frame not in batch.indices:
            return None
        if kind == "pose_nan":
            pred.world_from_cam[1, 0, 3] = np.nan
        elif kind == "intrinsics_inf":
            pred.intrinsics[0, 0, 0] = np.inf
        elif kind == "depth_all_nan":
            pred.depth[...] = np.nan
        return pred
    return hook


@pytest.mark.parametrize("kind", ["pose_nan", "intrinsics_inf", "depth_all_nan"])
def test_non_finite_window_is_rejected_flagged_and_the_run_continues(tmp_path, seq, kind):
    """Windows: 0-15, 12-27, [24-39 rejected], 40-55 (new segment), 52-59."""
    out = tmp_path / f"{kind}.zarr"
    s = reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), poison(kind, 30)), config=CFG)
    assert s.status == "complete" and s.n_segments == 2
    st = RunStore.open(out)
    src, fr, ch = st.source_table(), st.frames_table(), st.chunks_table()
    rejected = np.arange(28, 40)
    np.testing.assert_array_equal(src["index"], np.arange(N_FRAMES))  # every frame is in the source log
    np.testing.assert_array_equal(src["skipped_reason"][rejected], int(SkipReason.PREDICTION_REJECTED))
    assert not src["kept"][rejected].any() and s.n_skipped == len(rejected)
    np.testing.assert_array_equal(fr["index"], np.setdiff1d(np.arange(N_FRAMES), rejected))
    np.testing.assert_array_equal(ch["segment"], [0, 0, 1, 1])
    assert ch["status"][2] == 3 and ch["flag_reason"][2] == "previous_window_rejected"
    assert st.attrs_get("run")["timings"]["rejected_windows"] == 1
    assert_bounded(out, seq)


def assert_bounded(store_path, seq, segment_tol: float = 0.05) -> dict:
    """The trajectory is finite; each segment matches ground truth up to its own Sim(3) within ``segment_tol`` x its
    own path length; and in segment 0's frame no camera is farther from the truth than the whole path is long."""
    from da3stream.alignment.umeyama import umeyama

    st = RunStore.open(store_path)
    fr = st.frames_table()
    seg = st.chunks_table()["segment"][fr["chunk_id"]]
    assert np.all(np.isfinite(fr["world_from_cam"]))
    pos = fr["world_from_cam"][:, :3, 3]
    gt = seq.ground_truth().world_from_cam[fr["index"], :3, 3]
    length = float(np.linalg.norm(np.diff(gt, axis=0), axis=1).sum())
    errors = {}
    for s in np.unique(seg):
        sel = seg == s
        if sel.sum() >= 3 and np.ptp(gt[sel], axis=0).max() > 0:
            errors[int(s)] = _fit_error(pos[sel], gt[sel])
            seg_length = float(np.linalg.norm(np.diff(gt[sel], axis=0), axis=1).sum())
            assert errors[int(s)] <= segment_tol * seg_length, (s, errors, seg_length)
    T0 = umeyama(pos[seg == 0], gt[seg == 0])
    worst = float(np.linalg.norm(T0.apply(pos) - gt, axis=1).max())
    assert worst <= length, (worst, length)
    return {"segment_errors": errors, "worst": worst, "length": length}


def _fit_error(est: np.ndarray, gt: np.ndarray) -> float:
    """Largest camera-centre error after the best Sim(3); for a straight-line path (no unique rotation), after the
    best scale of the distances from the first camera."""
    from da3stream.alignment.umeyama import umeyama
    from da3stream.errors import AlignmentError

    try:
        T = umeyama(est, gt)
        return float(np.linalg.norm(T.apply(est) - gt, axis=1).max())
    except AlignmentError:
        d_est, d_gt = np.linalg.norm(est - est[0], axis=1), np.linalg.norm(gt - gt[0], axis=1)
        k = float(d_est @ d_gt / max(d_est @ d_est, 1e-300))
        return float(np.abs(k * d_est - d_gt).max())


def test_partial_nan_depth_is_masked_and_counted(tmp_path, seq):
    def hook(batch, call, pred):
        pred.depth[0, :3, :3] = np.nan
        pred.conf[0, 0, 0] = np.inf
        return pred

    out = tmp_path / "d.zarr"
    s = reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), hook), config=CFG)
    assert s.status == "complete" and s.n_segments == 1
    st = RunStore.open(out)
    assert np.all(np.isfinite(st.depth(slice(None)).astype(np.float32)))
    assert st.attrs_get("run")["timings"]["nonfinite_depth_values"] == 9 * s.n_chunks


def test_rejected_window_then_a_crash_resumes_identically(tmp_path, seq):
    full, out = tmp_path / "full.zarr", tmp_path / "crash.zarr"
    reconstruct(frames_of(seq), full, predictor=Wrapped(sim(seq), poison("pose_nan", 30)), config=CFG)

    def hook(batch, call, pred):
        if call == 4:  # the window after the rejected one
            raise Crash()
        return poison("pose_nan", 30)(batch, call, pred)

    with pytest.raises(Crash):
        reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), hook), config=CFG)
    reconstruct(frames_of(seq), out, predictor=Wrapped(sim(seq), poison("pose_nan", 30)), config=CFG, resume=True)
    assert_same_run(full, out)


def test_prediction_contract_violations_still_fail_in_one_line(tmp_path, seq):
    """A wrong shape is a bug in the predictor, not a bad window: it is not silently skipped."""

    def hook(batch, call, pred):
        pred.world_from_cam = np.full((len(batch), 3, 4), np.nan)
        return pred

    with pytest.raises(PredictionError, match=r"world_from_cam: expected shape") as info:
        reconstruct(frames_of(seq), tmp_path / "s.zarr", predictor=Wrapped(sim(seq), hook), config=CFG)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- --resume with nothing to resume


def test_resume_with_nothing_committed_starts_a_new_run(tmp_path, seq, reference):
    """A kill before the first commit leaves no store, or only a lock file / a half-created one: resume starts over."""
    import zarr

    missing = tmp_path / "never.zarr"
    lock_only = tmp_path / "lock.zarr"
    lock_only.mkdir()
    (lock_only / ".da3stream-writer.lock").touch()
    half = tmp_path / "half.zarr"
    zarr.create_group(zarr.storage.LocalStore(half), zarr_format=3, attributes={"format": "da3stream.run"})
    for out in (missing, lock_only, half):
        s = reconstruct(frames_of(seq), out, predictor=sim(seq), config=CFG, resume=True)
        assert s.status == "complete" and not s.resumed
        assert_same_run(reference, out)
    # a directory that is not ours is never removed
    user = tmp_path / "my files"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a da3stream store"):
        reconstruct(frames_of(seq), user, predictor=sim(seq), config=CFG, resume=True)
    assert (user / "notes.txt").read_text() == "keep me"
