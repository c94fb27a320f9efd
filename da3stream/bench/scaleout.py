"""``python -m da3stream.bench scaleout``: many sources and one split source on a local Ray instance.

CPU only, the simulated predictor. Speed-up is measured with a forward that
also sleeps a fixed time per call (``--sleep``), standing in for GPU time, so
that the 2-core machine does not hide the parallelism; wall times are taken
after the workers are up (their start-up is reported apart).

- ``many``: ``--sources`` copies of a short synthetic video, 1, 2 and 4 workers.
- ``split``: one source in K = 1 (the single-process run, no Ray), 2 and 4
  segments, on a loop sequence (``robot_loop``: two laps) and a sequence
  without loops (``aliasing``: a corridor of identical segments walked once,
  so every loop candidate is false), the latter also with loop closure off
  (the joins alone). ATE of the merged store against the single-process ATE
  on the same predictions, frame coverage (the same source frames kept), and
  wall time (loop sequence, with the sleep).
- ``ray_overhead_ms_per_window``: one source through one Ray worker minus the
  same run in this process, per window; and one empty actor call.

Prints JSON.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

BASE_CONFIG = {"chunk_size": 16, "overlap": 4, "loop.exclude_seconds": 1.5, "fusion.pixel_stride": 8,
               "predict_ahead": 0}
"""Small windows; loop closure on (robot_loop closes loops within a few seconds)."""
SAME_PREDICTIONS = {"keyframes.enabled": False}
"""The split comparisons keep every frame: then the parts' windows fall on the single run's window grid, so both
runs see the same windows and the same predictions. With the keyframe filter on, a part's windows start where its
segment starts, a different phase of the grid: other windows, other predictions (reported apart)."""
HOLD_S = 300.0
"""How long a held forward waits to be killed (tests)."""


class SleepPredictor:
    """The simulated predictor whose forward also sleeps ``sleep_s`` (GPU time), optionally held once.

    With ``hold_at_call`` the forward of that call writes the process id to ``marker`` and waits (a test
    kills the process then), or with ``fail`` raises a PredictionError; only the first process to create
    ``marker`` does so, once.
    """

    simulated = True
    weights_random = False
    weights_sha256 = None

    def __init__(self, inner, sleep_s: float, hold_at_call: Optional[int] = None, marker: Optional[str] = None,
                 fail: bool = False):
        self.inner, self.sleep_s, self.fail = inner, float(sleep_s), bool(fail)
        self.model_id = getattr(inner, "model_id", "simulated")
        self.hold_at_call, self.marker, self.calls = hold_at_call, marker, 0

    def predict(self, batch):
        self.calls += 1
        if self.hold_at_call is not None and self.calls == self.hold_at_call and _first(self.marker):
            if self.fail:
                from da3stream.errors import PredictionError

                raise PredictionError("simulated predictor failure (once)")
            time.sleep(HOLD_S)
        out = self.inner.predict(batch)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return out


def _first(marker: str) -> bool:
    """Create ``marker`` holding this process id; False when it exists (another process got there first)."""
    import os

    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


@dataclass(frozen=True)
class SyntheticFactory:
    """A zero-argument predictor factory (what a Ray worker calls): a synthetic sequence's simulated predictor."""

    preset: str
    n_frames: int
    width: int = 64
    height: int = 48
    seed: int = 0
    sleep_s: float = 0.0
    hold_at_call: Optional[int] = None
    marker: Optional[str] = None
    fail: bool = False

    def sequence(self):
        from da3stream.synthetic import make_sequence

        return make_sequence(self.preset, n_frames=self.n_frames, width=self.width, height=self.height, seed=self.seed)

    def __call__(self):
        from da3stream.synthetic import SimParams, SimulatedPredictor

        sim = SimulatedPredictor(self.sequence(), depth_hw=(self.height // 2, self.width // 2), params=SimParams(),
                                 seed=self.seed)
        if not self.sleep_s and self.hold_at_call is None:
            return sim
        return SleepPredictor(sim, self.sleep_s, self.hold_at_call, self.marker, self.fail)


def add_arguments(p) -> None:
    p.add_argument("--sources", type=int, default=8, help="sources of the many-sources run")
    p.add_argument("--source-frames", type=int, default=52, help="frames of each of those sources")
    p.add_argument("--frames", type=int, default=480, help="frames of each split sequence")
    p.add_argument("--sleep", type=float, default=0.5, help="seconds each forward sleeps (stands in for GPU time)")
    p.add_argument("--workers", default="1,2,4", help="worker counts")
    p.add_argument("--workdir", default=None, help="where videos and stores go (default: a temporary folder)")


def run(args) -> dict:
    keep = args.workdir is not None
    work = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="da3stream-scaleout-"))
    counts = [int(k) for k in str(args.workers).split(",")]
    from da3stream.scaleout.workers import ray_connection

    try:
        with ray_connection(None, num_cpus=2):
            out = {"config": dict(BASE_CONFIG), "sleep_s": args.sleep, "workers": counts}
            out["many"] = many_sources(work / "many", args.sources, args.source_frames, args.sleep, counts)
            same = SAME_PREDICTIONS
            out["split"] = {
                "robot_loop": split_source(work / "loop", "robot_loop", args.frames, args.sleep, counts, same),
                "aliasing": split_source(work / "noloop", "aliasing", args.frames, 0.0, counts, same),
                "aliasing_loop_closure_off": split_source(work / "noloop_off", "aliasing", args.frames, args.sleep,
                                                          counts, dict(same, **{"loop.enabled": False})),
                "robot_loop_keyframes_on": split_source(work / "loop_kf", "robot_loop", args.frames, 0.0, counts),
            }
            out["ray_overhead_ms_per_window"] = ray_overhead(work / "overhead", args.source_frames)
            return out
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _video(work: Path, factory: SyntheticFactory) -> tuple[str, str]:
    work.mkdir(parents=True, exist_ok=True)
    seq = factory.sequence()
    video, gt = work / f"{factory.preset}.mp4", work / f"{factory.preset}_gt.tum"
    seq.write_video(str(video))
    seq.write_tum(str(gt))
    return str(video), str(gt)


def many_sources(work: Path, n_sources: int, n_frames: int, sleep_s: float, counts: list) -> dict:
    """Wall time of ``n_sources`` sources with each worker count (after the workers are up)."""
    from da3stream.scaleout.batch import reconstruct_many

    factory = SyntheticFactory("robot_loop", n_frames, sleep_s=sleep_s)
    video, _gt = _video(work, factory)
    sources = []
    for k in range(n_sources):
        p = work / f"source{k}.mp4"
        shutil.copy(video, p)
        sources.append(str(p))
    runs = {}
    for k in counts:
        out_dir = work / f"out{k}"
        shutil.rmtree(out_dir, ignore_errors=True)
        t0 = time.perf_counter()
        last: dict = {}
        rows = reconstruct_many(sources, out_dir, predictor=factory, config=BASE_CONFIG, workers=k,
                                progress=last.update)
        runs[k] = {"wall_s": round(last["elapsed_s"], 3), "with_startup_s": round(time.perf_counter() - t0, 3),
                   "complete": sum(r["status"] == "complete" for r in rows)}
    base = runs[counts[0]]["wall_s"] * counts[0]
    for k in counts:
        runs[k]["speedup"] = round(base / runs[k]["wall_s"], 3)
        runs[k]["speedup_over_workers"] = round(runs[k]["speedup"] / k, 3)
    return {"sources": n_sources, "frames_each": n_frames, "runs": runs}


def split_source(work: Path, preset: str, n_frames: int, sleep_s: float, counts: list,
                 config: Optional[dict] = None) -> dict:
    """Single-process run vs K-way split on the same predictions: wall time, ATE, frame coverage."""
    from da3stream.io.evaluation.metrics import evaluate
    from da3stream.io.store import RunStore
    from da3stream.streaming import reconstruct

    factory = SyntheticFactory(preset, n_frames, sleep_s=sleep_s)
    video, gt = _video(work, factory)
    runs, ref = {}, None
    for k in counts:
        out = work / f"k{k}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        cfg = dict(BASE_CONFIG, **(config or {}), **{"scaleout.workers": k})
        summary = reconstruct(video, out, predictor=factory() if k == 1 else factory, config=cfg)
        total = time.perf_counter() - t0
        st = RunStore.open(out, "r")
        frames = st.frames_table()["index"]
        wall = total if k == 1 else summary.timings["segments"] + summary.timings["merge"]
        runs[k] = {"wall_s": round(wall, 3), "with_startup_s": round(total, 3), "windows": st.n_chunks,
                   "frames": int(st.n_frames), "store_bytes": _bytes(out),
                   "loops": int(st.committed["n_loops"]), "ate_rmse": float(evaluate(out, gt)["ate_rmse"])}
        if k != 1:
            runs[k]["merge_s"] = summary.timings["merge"]
            runs[k]["merge_steps_s"] = summary.timings["merge_steps"]
            runs[k]["part_s"] = [p["seconds"] for p in summary.timings["parts"]]
            runs[k]["part_windows"] = [p["chunks"] for p in summary.timings["parts"]]
        if ref is None:
            ref = (frames, st.source_table()["kept"], runs[k])
        else:
            runs[k]["coverage_identical"] = bool(np.array_equal(frames, ref[0])
                                                  and np.array_equal(st.source_table()["kept"], ref[1]))
            runs[k]["ate_over_single"] = round(runs[k]["ate_rmse"] / ref[2]["ate_rmse"], 4)
            runs[k]["speedup"] = round(ref[2]["wall_s"] / wall, 3)
            runs[k]["speedup_over_workers"] = round(runs[k]["speedup"] / k, 3)
    return {"preset": preset, "frames": n_frames, "sleep_s": sleep_s, "config": dict(config or {}), "runs": runs}


def _bytes(path: Path) -> int:
    return int(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()))


def ray_overhead(work: Path, n_frames: int) -> dict:
    """Ray's cost per window: two sources on one worker, driver wall time minus the workers' own run times."""
    import ray

    from da3stream.scaleout.batch import reconstruct_many
    from da3stream.streaming import reconstruct

    factory = SyntheticFactory("robot_loop", n_frames)
    video, _gt = _video(work, factory)
    t0 = time.perf_counter()
    summary = reconstruct(video, work / "local.zarr", predictor=factory(), config=BASE_CONFIG)
    local = time.perf_counter() - t0
    copy = work / "again.mp4"
    shutil.copy(video, copy)
    last: dict = {}
    rows = reconstruct_many([video, str(copy)], work / "ray", predictor=factory, config=BASE_CONFIG, workers=1,
                            progress=last.update)
    inside = sum(r["seconds"] for r in rows)

    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self):
            return 0

    echo = Echo.remote()
    ray.get(echo.ping.remote())
    t0 = time.perf_counter()
    for _ in range(50):
        ray.get(echo.ping.remote())
    call_ms = (time.perf_counter() - t0) / 50 * 1000
    return {"per_window_ms": round((last["elapsed_s"] - inside) / (2 * max(summary.n_chunks, 1)) * 1000, 3),
            "windows_per_source": summary.n_chunks, "local_run_s": round(local, 3),
            "worker_first_run_s": rows[0]["seconds"], "worker_second_run_s": rows[1]["seconds"],
            "empty_actor_call_ms": round(call_ms, 3)}
