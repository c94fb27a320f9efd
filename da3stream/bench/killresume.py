"""``python -m da3stream.bench killresume --kills 10``: SIGKILL a run at random moments, resume, compare.

One synthetic video (a ground robot driving two laps of a room, so loop
closure runs and rewrites poses) is reconstructed once without interruption:
the reference. Then the same run is started in a worker process and killed
with SIGKILL at a random moment, ``--kills`` times in a chain: each worker
resumes (``resume=True``) whatever the previous one left. After every kill the
store is opened read-only and every table is read (it must be readable and
consistent with its commit record). A final resume runs to completion in this
process, and its trajectory is compared with the reference.

Kill moments are tied to progress, not to wall time (a resuming worker pays a
start-up cost that a fixed clock would let eat every kill): each kill draws a
target window count, uniformly over the reference run's windows, waits until
the store has committed that many (0: right after the worker is ready), then
waits a further uniform ``[0, 1.5] x`` the reference time per window and kills.
So kills land at random moments of every stage: start-up, store creation,
prediction, alignment, loop closure, pose rewrites and commits.

Prints JSON: ``kills``, ``all_equal`` (same frames, every pose within 1e-9,
same loops, every store readable), ``max_abs_diff`` and per-kill details.
CI runs the same trials with 3 kills (tests/test_faults.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

TOLERANCE = 1e-9
"""Largest |pose difference| (float64 entries of world_from_cam) that counts as equal."""
DELAY_WINDOWS = 1.5
"""After the target commit, the kill comes within this many reference window times."""
POLL_S = 0.01
"""How often the parent reads the store's commit record while it waits for the target."""
READY = "ready"
"""Line a worker prints when its imports are done and it starts reconstructing."""
WORKER_START_TIMEOUT_S = 120.0
"""How long a worker may take to become ready."""


@dataclass(frozen=True)
class Scenario:
    """The run every trial repeats (written to ``scenario.json`` for the workers)."""

    video: str
    """Source video path."""
    store: str
    """Store path of the killed-and-resumed run."""
    preset: str = "robot_loop"
    """Synthetic preset (a path that revisits places, for loop closure)."""
    n_frames: int = 120
    """Frames rendered."""
    width: int = 64
    """Frame width in pixels."""
    height: int = 48
    """Frame height in pixels."""
    depth_hw: tuple = (24, 32)
    """Depth grid of the simulated predictor."""
    seed: int = 0
    """Seed of the sequence noise and of the simulated predictor."""
    config: dict = field(default_factory=dict)
    """Engine config overrides."""


def default_config(loop: bool = True) -> dict:
    """Small windows, loop closure on with a short exclusion (the sequence lasts a few seconds)."""
    return {"chunk_size": 16, "overlap": 4, "loop.enabled": loop, "loop.exclude_seconds": 1.5,
            "keyframes.enabled": True, "fusion.pixel_stride": 8}


def add_arguments(p) -> None:
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs in the chain")
    p.add_argument("--frames", type=int, default=120, help="frames of the synthetic video")
    p.add_argument("--preset", default="robot_loop", help="synthetic preset (default robot_loop: two laps, loops close)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments, the sequence and the simulator")
    p.add_argument("--no-loop", action="store_true", help="disable loop closure")
    p.add_argument("--workdir", default=None, help="where the video and stores go (default: a temporary folder, removed)")


def run(args) -> dict:
    keep = args.workdir is not None
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="da3stream-killresume-"))
    try:
        return kill_resume_trials(
            workdir, kills=args.kills, n_frames=args.frames, preset=args.preset, width=args.width,
            height=args.height, seed=args.seed, loop=not args.no_loop,
        )
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- the trials


def kill_resume_trials(workdir: Path, *, kills: int, n_frames: int = 120, preset: str = "robot_loop",
                       width: int = 64, height: int = 48, seed: int = 0, loop: bool = True,
                       config: Optional[dict] = None) -> dict:
    """Reference run, ``kills`` SIGKILLs in a chain of resuming workers, a final resume; the comparison as a dict."""
    from da3stream.streaming.pipeline import reconstruct

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = Scenario(video=str(workdir / "video.mp4"), store=str(workdir / "killed.zarr"), preset=preset,
                        n_frames=n_frames, width=width, height=height, seed=seed,
                        config=dict(config or default_config(loop)))
    seq, predictor = _build(scenario)
    seq.write_video(scenario.video)
    (workdir / "scenario.json").write_text(json.dumps(asdict(scenario)), encoding="utf-8")
    shutil.rmtree(scenario.store, ignore_errors=True)

    ref_path = workdir / "reference.zarr"
    shutil.rmtree(ref_path, ignore_errors=True)
    t0 = time.perf_counter()
    ref_summary = reconstruct(scenario.video, ref_path, predictor=predictor, config=scenario.config)
    t_ref = time.perf_counter() - t0

    rng = np.random.default_rng([seed, kills])
    per_window = t_ref / max(ref_summary.n_chunks, 1)
    targets = np.sort(rng.integers(0, max(ref_summary.n_chunks, 1), size=kills))
    trials = []
    for target in targets:
        delay = float(rng.uniform(0.0, DELAY_WINDOWS)) * per_window
        trial = _kill_once(workdir, Path(scenario.store), int(target), delay)
        trial["store"] = check_store(scenario.store)
        trials.append(trial)

    t0 = time.perf_counter()
    final = reconstruct(scenario.video, scenario.store, predictor=predictor, config=scenario.config, resume=True)
    t_final = time.perf_counter() - t0
    comparison = compare_stores(ref_path, scenario.store)
    readable = all(t["store"]["readable"] for t in trials)
    return {
        "kills": kills,
        "all_equal": bool(comparison["equal"] and readable and final.status == "complete"),
        "max_abs_diff": comparison["max_abs_diff"],
        "stores_readable": readable,
        "comparison": comparison,
        "reference": {"seconds": round(t_ref, 3), "chunks": ref_summary.n_chunks, "frames": ref_summary.n_frames,
                      "loops": ref_summary.n_loops},
        "final_resume_seconds": round(t_final, 3),
        "kills_after_first_loop": sum(1 for t in trials if t["store"].get("loops", 0) > 0),
        "kills_before_store": sum(1 for t in trials if not t["store"]["exists"]),
        "trials": trials,
        "scenario": {k: v for k, v in asdict(scenario).items() if k not in ("video", "store")},
    }


def _build(scenario: Scenario):
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
    from da3stream.synthetic import make_sequence

    seq = make_sequence(scenario.preset, n_frames=scenario.n_frames, width=scenario.width, height=scenario.height,
                        seed=scenario.seed)
    predictor = SimulatedPredictor(seq, depth_hw=tuple(scenario.depth_hw), params=SimParams(), seed=scenario.seed)
    return seq, predictor


def _committed_chunks(store: Path) -> int:
    from da3stream.errors import StoreError
    from da3stream.io.store.layout import read_root_attrs

    try:
        return int(read_root_attrs(store)["commit"]["n_chunks"])
    except (StoreError, OSError):
        return 0


def _kill_once(workdir: Path, store: Path, target: int, delay: float) -> dict:
    """Start a resuming worker; once ``target`` windows are committed, SIGKILL it ``delay`` s later; what happened."""
    import da3stream

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = str(Path(da3stream.__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = workdir / "worker.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "da3stream.bench.killresume", "--worker", str(workdir)],
                                stdout=subprocess.PIPE, stderr=log_file, env=env)
        try:
            line = _read_ready(proc)
            if line != READY:
                raise RuntimeError(f"killresume worker did not start ({line!r}); see {log_path}")
            t_ready = time.perf_counter()
            while proc.poll() is None and _committed_chunks(store) < target:
                time.sleep(POLL_S)
            try:
                proc.wait(timeout=delay)
                finished = True
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                finished = False
            if finished and proc.returncode != 0:
                raise RuntimeError(f"killresume worker failed with exit code {proc.returncode}; see {log_path}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    return {"target_windows": target, "delay_s": round(delay, 3), "ran_s": round(time.perf_counter() - t_ready, 3),
            "finished_before_kill": finished}


def _warm_up(predictor, scenario: Scenario) -> None:
    """One throw-away prediction, so lazy imports and the ray-casting scene are built before the clock starts."""
    from da3stream.core.types import FrameBatch

    images = np.zeros((1, scenario.height, scenario.width, 3), np.uint8)
    predictor.predict(FrameBatch(images=images, indices=np.zeros(1, np.int64), timestamps=np.zeros(1)))


def _read_ready(proc: subprocess.Popen) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=WORKER_START_TIMEOUT_S):
        return "<timeout>"
    return proc.stdout.readline().decode(errors="replace").strip()


def _worker_main(workdir: str) -> int:
    from da3stream.streaming.pipeline import reconstruct

    data = json.loads((Path(workdir) / "scenario.json").read_text(encoding="utf-8"))
    data["depth_hw"] = tuple(data["depth_hw"])
    scenario = Scenario(**data)
    _, predictor = _build(scenario)
    _warm_up(predictor, scenario)
    print(READY, flush=True)
    reconstruct(scenario.video, scenario.store, predictor=predictor, config=scenario.config, resume=True)
    return 0


# ----------------------------------------------------------------------------- checks


def check_store(path) -> dict:
    """Open a store read-only and read every table; ``readable`` is False (with the error) if anything fails.

    A store that does not exist yet, or whose creation was killed, is reported with ``exists: False``.
    """
    from da3stream.io.store import RunStore
    from da3stream.streaming.resume import creation_incomplete as _creation_incomplete

    p = Path(path)
    if _creation_incomplete(p):
        return {"exists": False, "readable": True}
    try:
        st = RunStore.open(p, "r")
        c = st.committed
        frames = st.frames_table(descriptors=True)
        chunks = st.chunks_table()
        source = st.source_table()
        loops = st.loops_table()
        st.candidates_table()
        st.read_state()
        n_points = sum(int(b.xyz.shape[0]) for b in st.iter_map_points())
        problems = []
        for name, n, counter in (("frames", frames["index"].shape[0], "n_frames"),
                                 ("chunks", chunks["frame_start"].shape[0], "n_chunks"),
                                 ("source", source["index"].shape[0], "n_read"),
                                 ("loops", loops["chunk_i"].shape[0], "n_loops"),
                                 ("map", n_points, "n_points")):
            if n != int(c[counter]):
                problems.append(f"{name} has {n} rows, commit says {c[counter]}")
        if frames["index"].shape[0]:
            st.depth(frames["index"].shape[0] - 1)
            if not np.all(np.isfinite(frames["world_from_cam"])):
                problems.append("non-finite world_from_cam")
        if chunks["frame_stop"].shape[0] and int(chunks["frame_stop"][-1]) != int(c["n_frames"]):
            problems.append("last chunk does not end at the last frame")
        return {"exists": True, "readable": not problems, "problems": problems, "status": st.status,
                "commit": int(c["id"]), "chunks": int(c["n_chunks"]), "frames": int(c["n_frames"]),
                "loops": int(c["n_loops"])}
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return {"exists": True, "readable": False, "problems": [f"{type(exc).__name__}: {exc}"]}


def compare_stores(reference, other) -> dict:
    """Frames, poses, chunk table, loops, map size and source log of two stores of the same run."""
    from da3stream.io.store import RunStore

    a, b = RunStore.open(reference, "r"), RunStore.open(other, "r")
    fa, fb = a.frames_table(), b.frames_table()
    same_frames = np.array_equal(fa["index"], fb["index"])
    diff = float(np.abs(fa["world_from_cam"] - fb["world_from_cam"]).max()) if same_frames and fa["index"].size else float("inf")
    ca, cb = a.chunks_table(), b.chunks_table()
    same_chunks = ca["world_from_chunk"].shape == cb["world_from_chunk"].shape
    chunk_diff = float(np.abs(ca["world_from_chunk"] - cb["world_from_chunk"]).max()) if same_chunks else float("inf")
    la, lb = a.loops_table(), b.loops_table()
    same_loops = all(np.array_equal(la[k], lb[k]) for k in ("chunk_i", "chunk_j", "frame_i", "frame_j"))
    sa, sb = a.source_table(), b.source_table()
    same_source = all(np.array_equal(sa[k], sb[k]) for k in ("index", "kept", "skipped_reason"))
    equal = (same_frames and diff <= TOLERANCE and chunk_diff <= TOLERANCE and same_loops and same_source
             and a.n_points == b.n_points and b.status == "complete")
    return {"equal": bool(equal), "max_abs_diff": diff, "world_from_chunk_max_abs_diff": chunk_diff,
            "same_frames": bool(same_frames), "same_loops": bool(same_loops), "same_source_log": bool(same_source),
            "loops": int(la["chunk_i"].shape[0]), "points": [a.n_points, b.n_points], "status": b.status}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: python -m da3stream.bench killresume [--kills N]", file=sys.stderr)
    sys.exit(2)
