"""The Zarr run store: round trip, live reading from another process, SIGKILL consistency, ENOSPC, throughput.

Run as a script (``python tests/test_store.py writer PATH MODE SEED``) this file is
the writer subprocess that the concurrency and kill tests start.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import ShapeError, StoreError
from da3stream.io.store import ChunkRecord, LoopEdge, RunStore

HW = (16, 24)
OVERLAP = 2
CONFIG = {"chunk_size": 8, "overlap": OVERLAP, "align": {"kernel": "huber", "max_points": 4000}, "source": {"prefetch": 64}}
SOURCE = {"path": "synthetic.mp4", "n_frames": 10000, "fps": 30.0}


# ----------------------------------------------------------------------------- deterministic content


def n_new_of(c: int) -> int:
    return 3 + c % 3


def frames_before(c: int) -> int:
    return sum(n_new_of(k) for k in range(c))


def pose(x: float, y: float, z: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = [x, y, z]
    return T


def wfc_row(c: int, epoch: int) -> np.ndarray:
    """world_from_chunk of chunk c after ``epoch`` pose rewrites: [s, quat_xyzw, t]."""
    return np.array([1.0, 0, 0, 0, 1, float(c), float(epoch), 0.0])


def record(c: int, epoch: int = 0, hw=HW) -> ChunkRecord:
    """Window c: every value encodes its row so a reader can check it (depth of row r is r + 1)."""
    nf, F = frames_before(c), n_new_of(c)
    rows = np.arange(nf, nf + F)
    h, w = hw
    carry = np.arange(max(0, nf - OVERLAP), nf)
    edges = []
    if c % 3 == 2:
        edges = [LoopEdge(0, c, 0, nf, Sim3(1.5, np.eye(3), [c, 0, 0]), similarity=0.9, inlier_ratio=0.8, residual=0.01),
                 LoopEdge(1, c, 3, nf + 1, None, similarity=0.85, accepted=False, reason="low_inliers")]
    return ChunkRecord(
        chunk_id=c, frame_start=max(0, nf - OVERLAP), frame_index=rows * 2, frame_timestamp=rows * 0.1,
        chunk_from_cam=np.stack([pose(r, 0) for r in rows]), world_from_cam=np.stack([pose(r, epoch) for r in rows]),
        intrinsics=np.tile(np.diag([100.0, 100.0, 1.0]), (F, 1, 1)),
        depth=np.stack([np.full(hw, r + 1.0, np.float32) for r in rows]),
        conf=np.stack([np.full(hw, r + 2.0, np.float32) for r in rows]),
        rgb=np.stack([np.full(hw + (3,), r % 251 + 1, np.uint8) for r in rows]),
        descriptors=np.tile(rows[:, None].astype(np.float32), (1, 4)),
        world_from_chunk=wfc_row(c, epoch), chunk_from_prev=None if c == 0 else Sim3(1.0, np.eye(3), [1, 0, 0]),
        carry_rows=carry, carry_chunk_from_cam=np.stack([pose(r, 0, 0.5) for r in carry]) if len(carry) else None,
        inlier_ratio=0.9, residual=0.01, scale=1.0, pose_disagreement=0.0, status=2 if c == 0 else 0,
        flag_reason="" if c % 4 else f"flag{c}", segment=0,
        points_xyz=np.full((5, 3), c, np.float32), points_rgb=np.full((5, 3), c % 256, np.uint8),
        points_conf=np.full(5, 1.0, np.float32),
        source_index=np.arange(2 * nf, 2 * (nf + F)), source_timestamp=np.arange(2 * nf, 2 * (nf + F)) * 0.05,
        source_kept=np.arange(2 * nf, 2 * (nf + F)) % 2 == 0, source_skipped=np.zeros(2 * F, np.int8),
        loop_edges=edges, state={"carry": np.full((2, 3), float(c))}, state_meta={"chunk": c},
    )


def rewrite(store: RunStore) -> None:
    """One pose rewrite: every pose moves to the next epoch."""
    c = store.committed
    epoch = int(c["pose_epoch"]) + 1
    n, nc = int(c["n_frames"]), int(c["n_chunks"])
    store.rewrite_poses(np.stack([wfc_row(k, epoch) for k in range(nc)]), np.stack([pose(r, epoch) for r in range(n)]))


def new_store(path, **kw) -> RunStore:
    args = dict(config=CONFIG, model={"id": "synthetic", "weights_sha256": None, "weights_random": True},
                source=SOURCE, image_hw=(32, 48), depth_hw=HW, descriptor_dim=4, save_rgb=True, save_conf=True)
    args.update(kw)
    return RunStore.create(path, **args)


def check_consistent(store: RunStore) -> dict:
    """Assert that every committed row holds the values its writer wrote, for one commit snapshot."""
    store = store.snapshot()
    c = store.committed
    nc, nf = int(c["n_chunks"]), int(c["n_frames"])
    epoch = int(c["pose_epoch"])
    assert nf == frames_before(nc)
    t = store.frames_table(descriptors=True)
    rows = np.arange(nf)
    np.testing.assert_array_equal(t["index"], rows * 2)
    np.testing.assert_array_equal(t["timestamp"], rows * 0.1)
    np.testing.assert_array_equal(t["chunk_from_cam"][:, 0, 3], rows)
    if nf:
        # one pose epoch for all rows: a rewrite is never half visible (read within the same snapshot)
        assert len(set(t["world_from_cam"][:, 1, 3].tolist())) == 1
        np.testing.assert_array_equal(t["world_from_cam"][:, 0, 3], rows)
        d = store.depth(slice(0, nf)).astype(np.float32)
        assert not np.isnan(d).any(), "fill values below the committed count"
        np.testing.assert_array_equal(d, np.broadcast_to((rows + 1.0)[:, None, None], d.shape))
        np.testing.assert_array_equal(store.conf(slice(0, nf))[:, 0, 0], rows + 2.0)
        np.testing.assert_array_equal(store.rgb(slice(0, nf))[:, -1, -1, 2], rows % 251 + 1)
        np.testing.assert_array_equal(t["descriptor"][:, 3], rows)
    ch = store.chunks_table()
    np.testing.assert_array_equal(ch["n_new"], [n_new_of(k) for k in range(nc)])
    np.testing.assert_array_equal(ch["frame_stop"], [frames_before(k + 1) for k in range(nc)])
    if nc:
        assert len(set(ch["world_from_chunk"][:, 6].tolist())) == 1
        np.testing.assert_array_equal(ch["world_from_chunk"][:, 5], np.arange(nc))
    xyz, rgb = store.map_points(world=False)
    np.testing.assert_array_equal(xyz[:, 0], np.repeat(np.arange(nc), 5))
    assert store.source_table()["index"].shape[0] == 2 * nf == int(c["n_read"])
    assert int(c["n_loops"]) == len([k for k in range(nc) if k % 3 == 2]) == store.loops_table()["chunk_i"].shape[0]
    assert store.candidates_table()["reason"].tolist().count("low_inliers") == int(c["n_loops"])
    if nc:
        try:
            state, meta = store.read_state()
        except StoreError as exc:  # a live writer replaced the state since the snapshot: detected, not torn
            assert "snapshot is out of date" in str(exc)
        else:
            assert meta == {"chunk": nc - 1}
            np.testing.assert_array_equal(state["carry"], np.full((2, 3), nc - 1.0))
    return {"n_chunks": nc, "epoch": epoch}


# ----------------------------------------------------------------------------- basic behaviour


def test_round_trip(tmp_path):
    store = new_store(tmp_path / "r.zarr")
    for c in range(5):
        store.append_chunk(record(c))
    info = check_consistent(store)
    assert info == {"n_chunks": 5, "epoch": 0}
    reader = RunStore.open(tmp_path / "r.zarr")
    check_consistent(reader)
    assert reader.n_frames == store.n_frames == frames_before(5)
    assert reader.config == CONFIG and reader.source == SOURCE and reader.depth_hw == HW and reader.image_hw == (32, 48)
    assert reader.model["weights_random"] is True and reader.status == "running"
    # float32 -> float16 exactly as numpy casts, rgb and poses bit-exact
    rec = record(3)
    rows = np.arange(frames_before(3), frames_before(4))
    np.testing.assert_array_equal(reader.depth(rows), rec.depth.astype(np.float16))
    np.testing.assert_array_equal(reader.rgb(rows[::-1]), rec.rgb[::-1])
    np.testing.assert_array_equal(reader.depth(int(rows[0])), rec.depth[0].astype(np.float16))
    ch = reader.chunks_table()
    assert ch["flag_reason"].tolist() == ["flag0", "", "", "", "flag4"]
    assert np.isnan(ch["chunk_from_prev"][0]).all() and ch["chunk_from_prev"][1, 5] == 1.0
    np.testing.assert_array_equal(ch["point_stop"] - ch["point_start"], 5)
    loops = reader.loop_edges()
    assert len(loops) == 1 and loops[0].chunk_j == 2 and loops[0].i_from_j.s == pytest.approx(1.5)
    assert [e.accepted for e in reader.loop_edges(accepted_only=False)] == [True, False]
    rows_c, cam = reader.carry_poses(3)
    np.testing.assert_array_equal(rows_c, [frames_before(3) - 2, frames_before(3) - 1])
    assert reader.carry_poses(0) is None and cam[0, 2, 3] == 0.5
    xyz, _ = reader.map_points(world=True)
    np.testing.assert_array_equal(xyz[:, 0], np.repeat(np.arange(5), 5) * 2.0)  # x + chunk translation c
    assert [w.t[0] for w in reader.world_from_chunk()] == [0, 1, 2, 3, 4]
    with pytest.raises(StoreError, match="read-only"):
        reader.append_chunk(record(5))
    with pytest.raises(StoreError, match=r"row 999 out of range \[0, 19\)"):
        reader.depth(999)
    store.close()


def test_pose_rewrite_and_state_land_with_their_commit(tmp_path):
    store = new_store(tmp_path / "p.zarr")
    for c in range(3):
        store.append_chunk(record(c))
    reader = RunStore.open(tmp_path / "p.zarr")
    store.write_state({"x": np.arange(3.0)}, {"tag": "next"})
    assert reader.read_state()[1] == {"chunk": 2}  # staged state is invisible until the next commit
    rewrite(store)
    assert reader.read_state()[1] == {"tag": "next"}
    assert reader.committed["pose_slot"] == 1 and reader.committed["pose_epoch"] == 1
    t = reader.frames_table()
    assert set(t["world_from_cam"][:, 1, 3].tolist()) == {1.0}
    store.append_chunk(record(3, epoch=1))  # appends go to the live slot
    rewrite(store)
    rewrite(store)
    assert reader.committed["pose_epoch"] == 3
    assert check_consistent(reader)["epoch"] == 3
    with pytest.raises(ShapeError, match=r"rewrite_poses\(world_from_cam\): expected shape \(15, 4, 4\)"):
        store.rewrite_poses(np.zeros((4, 8)), np.zeros((3, 4, 4)))
    store.close()


def test_source_rows_after_the_last_window(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    store.append_chunk(record(0))
    store.append_source_rows([(6, 0.3, False, 0), (7, 0.35, False, 1)])  # (index, timestamp, kept, skipped_reason)
    t = RunStore.open(tmp_path / "s.zarr").source_table()
    np.testing.assert_array_equal(t["index"], [0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(t["skipped_reason"][-2:], [0, 1])
    assert store.committed["n_read"] == 8 and store.n_chunks == 1
    store.close()


def test_record_validation_names_the_field(tmp_path):
    store = new_store(tmp_path / "v.zarr")
    store.append_chunk(record(0))
    with pytest.raises(StoreError, match="chunk_id 0 is not the next chunk"):
        store.append_chunk(record(0))
    rec = record(1)
    bad = dict(rec.__dict__, depth=rec.depth[:, :, :5])
    with pytest.raises(ShapeError, match=r"ChunkRecord.depth: expected shape \(4, 16, 24\), got \(4, 16, 5\)"):
        store.append_chunk(ChunkRecord(**bad))
    bad = dict(rec.__dict__, rgb=rec.rgb.astype(np.float32))
    with pytest.raises(ShapeError, match="ChunkRecord.rgb: expected dtype uint8"):
        store.append_chunk(ChunkRecord(**bad))
    bad = dict(rec.__dict__, frame_stop=99)
    with pytest.raises(StoreError, match="frame_stop 99"):
        store.append_chunk(ChunkRecord(**bad))
    assert store.n_chunks == 1  # nothing was written by the rejected records
    store.append_chunk(rec)
    check_consistent(store)
    store.close()


def test_create_and_open_errors(tmp_path):
    p = tmp_path / "s.zarr"
    store = new_store(p)
    with pytest.raises(StoreError, match="another process is writing this store"):
        RunStore.open(p, mode="a")
    with pytest.raises(StoreError, match="already exists and is not empty"):
        new_store(p)
    with pytest.raises(StoreError, match="another process is writing"):
        new_store(p, overwrite=True)
    store.append_chunk(record(0))
    store.close()
    assert new_store(p, overwrite=True).n_frames == 0
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("keep me")
    with pytest.raises(StoreError, match="refusing to overwrite a non-empty directory that is not a Zarr store"):
        new_store(tmp_path / "docs", overwrite=True)
    assert (tmp_path / "docs" / "a.txt").exists()
    with pytest.raises(StoreError, match="store not found"):
        RunStore.open(tmp_path / "nope.zarr")
    with pytest.raises(StoreError, match="not a da3stream store"):
        RunStore.open(tmp_path / "docs")
    with pytest.raises(StoreError, match="mode must be"):
        RunStore.open(p, mode="w")


def test_newer_format_and_corrupt_metadata_are_refused(tmp_path):
    p = tmp_path / "f.zarr"
    new_store(p).close()
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["format_version"] = RunStore.FORMAT_VERSION + 1
    (p / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=rf"written by a newer da3stream \(format {RunStore.FORMAT_VERSION + 1} > {RunStore.FORMAT_VERSION}\)"):
        RunStore.open(p)
    (p / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreError, match="store metadata is corrupt"):
        RunStore.open(p, mode="a")


def test_damaged_arrays_give_a_store_error(tmp_path):
    p = tmp_path / "d.zarr"
    store = new_store(p)
    for c in range(3):
        store.append_chunk(record(c))
    store.close()
    chunk_file = p / "frames" / "depth" / "c" / "0" / "0" / "0"
    chunk_file.write_bytes(chunk_file.read_bytes()[:20])  # truncated chunk
    with pytest.raises(StoreError, match="frames/depth is corrupt"):
        RunStore.open(p).depth(0)
    (p / "frames" / "conf" / "zarr.json").unlink()
    with pytest.raises(StoreError, match="array frames/conf is missing or corrupt"):
        RunStore.open(p)


def test_resume_compatibility_names_the_first_differing_key(tmp_path):
    store = new_store(tmp_path / "c.zarr")
    store.check_resume_compatible(json.loads(json.dumps(CONFIG)), dict(SOURCE))
    store.check_resume_compatible(dict(CONFIG, source={"prefetch": 8}), dict(SOURCE))  # prefetch does not matter
    changed = json.loads(json.dumps(CONFIG))
    changed["align"]["kernel"] = "cauchy"
    with pytest.raises(StoreError, match=r"config key 'align.kernel' differs \(store has 'huber', given 'cauchy'\)"):
        store.check_resume_compatible(changed, SOURCE)
    with pytest.raises(StoreError, match=r"source key 'n_frames' differs"):
        store.check_resume_compatible(CONFIG, dict(SOURCE, n_frames=5))
    with pytest.raises(StoreError, match=r"config key 'seed' differs \(store has '<missing>', given 3\)"):
        store.check_resume_compatible(dict(CONFIG, seed=3), SOURCE)
    store.close()


def test_enospc_during_append_leaves_the_previous_commit(tmp_path, monkeypatch):
    import zarr.storage

    real_set = zarr.storage.LocalStore.set
    calls = {"n": 0, "fail_at": None}

    async def flaky_set(self, key, value):
        calls["n"] += 1
        if calls["fail_at"] is not None and calls["n"] == calls["fail_at"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", flaky_set)
    store = new_store(tmp_path / "e.zarr")
    store.append_chunk(record(0))
    calls["n"] = 0
    store.append_chunk(record(1))
    per_append = calls["n"]  # keys one append writes (metadata, chunks, commit)
    assert per_append > 20
    c = 2
    for fail_at in (1, per_append // 3, 2 * per_append // 3, per_append):  # state, resize, data ... the commit itself
        before = store.committed
        calls["n"], calls["fail_at"] = 0, fail_at
        with pytest.raises(StoreError) as info:
            store.append_chunk(record(c))
        msg = str(info.value)
        assert "No space left on device" in msg and "\n" not in msg
        calls["fail_at"] = None
        assert store.committed == before
        reader = RunStore.open(tmp_path / "e.zarr")
        assert reader.committed == before
        check_consistent(reader)
        store.append_chunk(record(c))  # the fault cleared: the same writer goes on
        check_consistent(store)
        c += 1
    calls["n"], calls["fail_at"] = 0, 3
    with pytest.raises(StoreError, match="No space left on device"):
        rewrite(store)
    calls["fail_at"] = None
    assert check_consistent(RunStore.open(tmp_path / "e.zarr"))["epoch"] == 0
    rewrite(store)
    assert check_consistent(store)["epoch"] == 1
    assert not list((tmp_path / "e.zarr").rglob("*.partial"))
    store.close()


# ----------------------------------------------------------------------------- other processes


def spawn_writer(path: Path, mode: str, seed: int, delay: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "writer", str(path), mode, str(seed), str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"writer did not start: {line!r} {proc.stderr.read()}")


def test_reader_follows_a_writer_in_another_process(tmp_path):
    p = tmp_path / "live.zarr"
    proc = spawn_writer(p, "live", seed=0, delay=0.02)
    wait_ready(proc)
    seen = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        reader = RunStore.open(p)
        info = check_consistent(reader)
        seen.add((info["n_chunks"], info["epoch"]))
        _ack(p, info["n_chunks"])
        if reader.status == "complete":
            break
        time.sleep(0.01)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert reader.status == "complete" and reader.n_chunks == 12
    assert len(seen) >= 4, seen  # we saw the store at several intermediate commits


@pytest.mark.parametrize("mode", ["append", "rewrite"])
def test_sigkill_at_random_moments_then_resume(tmp_path, mode):
    rng = np.random.default_rng({"append": 11, "rewrite": 22}[mode])
    p = tmp_path / f"kill_{mode}.zarr"
    history = []
    for trial in range(5):
        proc = spawn_writer(p, mode, seed=trial)
        wait_ready(proc)
        time.sleep(rng.uniform(0.02, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        store = RunStore.open(p, mode="a")  # truncates what the killed writer left uncommitted
        assert store.status == "interrupted"
        info = check_consistent(store)
        history.append((info["n_chunks"], info["epoch"]))
        for path, counter in (("frames/depth", "n_frames"), ("map/xyz", "n_points"), ("source/index", "n_read")):
            assert store._array(path).shape[0] == store.committed[counter]
        assert not list(p.rglob("*.partial"))
        store.close()
    assert history[-1][0] > 0
    # appending continues after the last kill, in this process
    store = RunStore.open(p, mode="a")
    epoch = int(store.committed["pose_epoch"])
    for _ in range(2):
        store.append_chunk(record(store.n_chunks, epoch))
    rewrite(store)
    check_consistent(store)
    store.close()


ACK_TIMEOUT_S = 120.0
"""How long the live writer waits for the reader to have seen a commit (a handshake, not a race with load)."""


def _ack(path: Path, n_chunks: int) -> None:
    """The reader has seen ``n_chunks`` committed chunks (written atomically beside the store)."""
    tmp = path.with_name(path.name + ".ack.tmp")
    tmp.write_text(str(n_chunks))
    os.replace(tmp, path.with_name(path.name + ".ack"))


def _wait_for_ack(path: Path, n_chunks: int) -> None:
    ack = path.with_name(path.name + ".ack")
    deadline = time.monotonic() + ACK_TIMEOUT_S
    while time.monotonic() < deadline:
        if ack.exists() and int(ack.read_text() or 0) >= n_chunks:
            return
        time.sleep(0.005)


def writer_main(path: str, mode: str, seed: int, delay: float) -> None:
    """The writer subprocess: create (or resume) the store, then append / rewrite until killed or done."""
    p = Path(path)
    store = RunStore.open(p, mode="a") if p.exists() else new_store(p)
    store.set_status("running")
    print("ready", flush=True)
    epoch = int(store.committed["pose_epoch"])
    limit = 12 if mode == "live" else 10_000
    while store.n_chunks < limit:
        c = store.n_chunks
        store.append_chunk(record(c, epoch))
        if mode == "rewrite" or (mode == "live" and c % 2):
            rewrite(store)
            epoch += 1
        if mode == "live":
            _wait_for_ack(p, store.n_chunks)
        time.sleep(delay)
    store.set_status("complete")
    store.close()


@pytest.mark.slow
def test_long_run_writer_memory_stays_flat(tmp_path):
    """400 windows: the writer's Python heap does not grow with the run (per-append time is printed)."""
    import tracemalloc

    store = new_store(tmp_path / "long.zarr")
    for c in range(50):
        store.append_chunk(record(c))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cpu = []
    for c in range(50, 400):
        t0 = time.process_time()
        store.append_chunk(record(c))
        cpu.append(time.process_time() - t0)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"\nappend CPU: first 50 median {np.median(cpu[:50]) * 1e3:.0f} ms, last 50 {np.median(cpu[-50:]) * 1e3:.0f} ms; "
          f"heap growth {grown / 1e6:.2f} MB over 350 windows")
    assert grown < 5e6
    check_consistent(store)
    store.close()


# ----------------------------------------------------------------------------- throughput


def test_write_throughput_100_frames_280x504(tmp_path, record_property):
    """Measurement, not an assertion on speed: frames/s for a 100-frame window at 280x504."""
    rng = np.random.default_rng(0)
    F, h, w = 100, 280, 504
    # a smooth scene panning sideways: each frame is a shifted crop of one wide image
    yy, xx = np.mgrid[0:h, 0 : w + 4 * F].astype(np.float32)
    field = np.sin(xx / 40.0) + np.cos(yy / 25.0) + 0.3 * np.sin((xx + 2 * yy) / 9.0)
    wide_depth = (2.0 + 3.0 * yy / h) * np.exp(0.3 * field)
    wide_rgb = np.clip(100 + 60 * field[..., None] + rng.normal(0, 8, field.shape + (3,)), 0, 255).astype(np.uint8)
    depth = np.stack([wide_depth[:, 4 * k : 4 * k + w] for k in range(F)])
    conf = 1.0 + 10.0 * np.abs(np.stack([field[:, 4 * k : 4 * k + w] for k in range(F)]))
    rgb = np.stack([wide_rgb[:, 4 * k : 4 * k + w] for k in range(F)])
    store = RunStore.create(tmp_path / "t.zarr", config={}, model={}, source={}, image_hw=(720, 1296), depth_hw=(h, w),
                            descriptor_dim=None, save_rgb=True, save_conf=True)
    results = []
    nf = 0
    for c in range(4):
        rec = ChunkRecord(
            chunk_id=c, frame_start=max(0, nf - 8), frame_index=np.arange(nf, nf + F), frame_timestamp=np.arange(nf, nf + F) / 30,
            chunk_from_cam=np.tile(np.eye(4), (F, 1, 1)), world_from_cam=np.tile(np.eye(4), (F, 1, 1)),
            intrinsics=np.tile(np.eye(3), (F, 1, 1)), depth=depth, conf=conf,
            rgb=rgb, world_from_chunk=Sim3.identity(),
        )
        t0, c0 = time.perf_counter(), time.process_time()
        store.append_chunk(rec)
        results.append((time.perf_counter() - t0, time.process_time() - c0))
        nf += F
    wall = np.array([r[0] for r in results[1:]])  # steady state: windows after the first
    cpu = np.array([r[1] for r in results[1:]])
    record_property("store_write_wall_s_per_100_frames", float(np.median(wall)))
    record_property("store_write_frames_per_s", float(F / np.median(wall)))
    print(f"\nstore write, 100 frames at 280x504 (depth f16 + conf f16 + rgb): "
          f"median {np.median(wall):.3f} s wall ({F / np.median(wall):.0f} frames/s), "
          f"{np.median(cpu):.3f} s CPU; min {wall.min():.3f} s")
    check = RunStore.open(tmp_path / "t.zarr")
    np.testing.assert_array_equal(check.depth(150), depth[50].astype(np.float16))
    np.testing.assert_array_equal(check.rgb(399), rgb[99])
    store.close()


if __name__ == "__main__" and len(sys.argv) >= 6 and sys.argv[1] == "writer":
    writer_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
