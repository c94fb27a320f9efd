"""Kill a run with SIGKILL mid-way, resume it, and get the uninterrupted trajectory back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from da3stream.io.store import RunStore
from da3stream.streaming.pipeline import reconstruct
from tests.pipeline_helpers import SMALL_CFG, small_predictor, small_sequence, trajectory

N_FRAMES = 72
CFG = {**SMALL_CFG, "keyframes.enabled": True}

WORKER = """
import sys
sys.path.insert(0, {root!r})
from tests.pipeline_helpers import SlowPredictor, small_predictor, small_sequence
from da3stream.streaming.pipeline import reconstruct
seq = small_sequence({n})
slow = SlowPredictor(small_predictor(seq), {delay}, hold_from_call={hold}, marker={marker!r})
reconstruct({video!r}, {out!r}, predictor=slow, config={cfg!r})
"""


def _committed_chunks(path) -> int:
    try:
        return int(RunStore.open(path, "r").committed["n_chunks"])
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return 0


def _kill_after(tmp_path, video, out, n_chunks: int, delay: float, repo_root) -> int:
    # the worker holds the forward of window n_chunks + 2 (window n_chunks + 1 may be predicted ahead):
    # the kill lands while a window is in flight, not after the run, however loaded the machine is
    marker = tmp_path / "held"
    code = WORKER.format(root=str(repo_root), n=N_FRAMES, video=str(video), out=str(out), delay=delay, cfg=CFG,
                         hold=n_chunks + 2, marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker ended early: {proc.stderr.read().decode()[-2000:]}")
            if _committed_chunks(out) >= n_chunks and marker.exists():
                break
            time.sleep(0.05)
        time.sleep(delay * 0.5)  # let the window in flight move on before the kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return _committed_chunks(out)


@pytest.fixture(scope="module")
def video_and_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    seq = small_sequence(N_FRAMES)
    video = tmp / "seq.mp4"
    seq.write_video(video)
    ref = tmp / "ref.zarr"
    reconstruct(str(video), ref, predictor=small_predictor(seq), config=CFG)
    return seq, video, ref


@pytest.mark.parametrize("kill_after", [1, 3])
def test_kill_and_resume_equals_uninterrupted(tmp_path, video_and_reference, repo_root, kill_after):
    seq, video, ref = video_and_reference
    out = tmp_path / "killed.zarr"
    committed = _kill_after(tmp_path, video, out, kill_after, delay=0.4, repo_root=repo_root)
    assert committed >= kill_after
    st = RunStore.open(out, "r")  # readable after the kill, and not complete
    assert st.status in ("running",)
    n_before = st.n_frames
    summary = reconstruct(str(video), out, predictor=small_predictor(seq), config=CFG, resume=True)
    assert summary.resumed and summary.status == "complete"
    i_ref, p_ref = trajectory(ref)
    i_res, p_res = trajectory(out)
    np.testing.assert_array_equal(i_res, i_ref)
    np.testing.assert_allclose(p_res, p_ref, rtol=0, atol=1e-9)
    assert RunStore.open(out).n_frames == len(i_ref) > n_before
    # the source log, map and chunk table match too
    a, b = RunStore.open(ref), RunStore.open(out)
    np.testing.assert_array_equal(a.source_table()["kept"], b.source_table()["kept"])
    np.testing.assert_allclose(a.chunks_table()["world_from_chunk"], b.chunks_table()["world_from_chunk"], atol=1e-9)
    assert a.n_points == b.n_points


def test_resume_refuses_a_different_config(tmp_path, video_and_reference):
    from da3stream.errors import StoreError

    seq, video, ref = video_and_reference
    out = tmp_path / "r.zarr"
    reconstruct(str(video), out, predictor=small_predictor(seq), config={**CFG, "source.max_frames": 30})
    with pytest.raises(StoreError, match="cannot resume: config key 'overlap' differs"):
        reconstruct(str(video), out, predictor=small_predictor(seq), config={**CFG, "source.max_frames": 30, "overlap": 2}, resume=True)


def test_resume_of_a_complete_run_changes_nothing(tmp_path, video_and_reference):
    seq, video, ref = video_and_reference
    out = tmp_path / "c.zarr"
    reconstruct(str(video), out, predictor=small_predictor(seq), config=CFG)
    before = trajectory(out)[1]
    s = reconstruct(str(video), out, predictor=small_predictor(seq), config=CFG, resume=True)
    assert s.status == "complete"
    np.testing.assert_allclose(trajectory(out)[1], before, atol=1e-12)


class _InterruptedAt:
    """A predictor that raises KeyboardInterrupt (Ctrl-C) at its ``call``-th forward."""

    def __init__(self, inner, call: int) -> None:
        self.inner, self.call, self.calls = inner, call, 0

    def predict(self, batch, **kwargs):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt
        return self.inner.predict(batch, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("interrupt_at", [2, 3])
def test_resume_with_the_network_predictor_is_exact(tmp_path, interrupt_at):
    """The DA3 network carries rays, ray confidence and descriptors: the carry rebuilt from the store is exact."""
    from da3stream.core import random_predictor

    seq = small_sequence(20, width=64, height=48)
    source = list(zip(seq.images(), seq.timestamps.tolist()))
    cfg = {"chunk_size": 8, "overlap": 2, "keyframes.enabled": False, "loop.enabled": False}

    def network():
        return random_predictor("small", seed=0, process_res=70, device="cpu")

    ref, out = tmp_path / "ref.zarr", tmp_path / "resumed.zarr"
    reconstruct(source, ref, predictor=network(), config=cfg)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(source, out, predictor=_InterruptedAt(network(), interrupt_at), config=cfg)
    assert RunStore.open(out, "r").n_chunks == interrupt_at - 1
    s = reconstruct(source, out, predictor=network(), config=cfg, resume=True)
    assert s.resumed and s.status == "complete"
    i_ref, p_ref = trajectory(ref)
    i_res, p_res = trajectory(out)
    np.testing.assert_array_equal(i_res, i_ref)
    np.testing.assert_allclose(p_res, p_ref, rtol=0, atol=1e-9)
    a, b = RunStore.open(ref), RunStore.open(out)
    rows = np.arange(a.n_frames)
    np.testing.assert_array_equal(b.depth(rows), a.depth(rows))
    np.testing.assert_allclose(b.chunks_table()["world_from_chunk"], a.chunks_table()["world_from_chunk"], rtol=0,
                               atol=1e-9)
