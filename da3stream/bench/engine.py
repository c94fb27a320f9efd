"""``python -m da3stream.bench engine``: engine overhead without the network.

Runs the whole pipeline (keyframes, windows, alignment, fusion, loop retrieval,
store writes) on a cached-prediction predictor at 504x280, once per requested
length, each in a fresh subprocess so peak RSS is that run's own. Reports
engine frames/s with the predictor's own time subtracted, per-stage seconds,
peak RSS, and store bytes per frame; and the ratio of peak RSS between the
longest and the shortest run (flat memory means a ratio near 1).

A sampler thread (:mod:`da3stream.bench.sampler`) records RSS, CPU time and
committed frames during each run: ``rss`` compares the RSS between 10% and 100%
of the run (``rss_growth``, 1.0 = flat), ``cost_per_frame`` the CPU (and wall)
seconds per frame of the last 20% of the run with the first 20% after a 10%
warm-up (1.0 = constant per-frame cost, loop retrieval included). CPU figures
are reported beside wall time because wall time on a shared machine measures the
load: ``engine_cpu_ms_per_frame`` (process CPU minus the cached predictor's),
``main_thread_cpu_ms_per_frame`` and ``fps_bound_two_idle_cores`` (frames per
second two idle cores could run: the busier of the main thread and half of
all engine CPU). ``--hour`` runs 108,000 frames (an hour of 30 fps video).

One run alone: ``--worker N --store PATH`` runs N frames in this process and
prints that run's JSON; :func:`single_run_command` builds that command line (the
default mode and tests/test_long_run.py use it).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--frames", type=int, nargs="+", default=[2000, 20000], help="run lengths (frames)")
    p.add_argument("--hour", action="store_true", help="one run of 108,000 frames (an hour at 30 fps)")
    p.add_argument("--predict-ahead", type=int, default=0, choices=(0, 1),
                   help="predict in a worker thread (0 keeps the predictor serial so its time subtracts cleanly)")
    p.add_argument("--sample-interval", type=float, default=0.5, help="seconds between RSS/CPU samples")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OPENBLAS_NUM_THREADS of the workers (the engine's matrices are small: pool threads only spin)")
    p.add_argument("--height", type=int, default=280)
    p.add_argument("--width", type=int, default=504)
    p.add_argument("--bank", type=int, default=120, help="distinct cached predictions replayed")
    p.add_argument("--chunk-size", type=int, default=60)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--no-loop", action="store_true", help="disable loop retrieval")
    p.add_argument("--revisit", action="store_true",
                   help="descriptors that recognise every lap as a revisit: loops are found, verified and closed")
    p.add_argument("--loop-walk", type=int, default=1200, metavar="N",
                   help="default mode: also one --revisit run of N frames, reported as loop_walk (0: none)")
    p.add_argument("--no-rgb", action="store_true", help="store no RGB (store.save_rgb: false)")
    p.add_argument("--no-conf", action="store_true", help="store no confidence (store.save_conf: false)")
    p.add_argument("--store-samples", type=int, default=20, help="store-size samples taken during each run")
    p.add_argument("--out-dir", default=None, help="where the stores go (default: a temporary folder)")
    p.add_argument("--worker", type=int, default=None, metavar="N",
                   help="run ONE length of N frames in this process and print its JSON (one entry of 'runs'); "
                        "the default mode runs each length so in a fresh subprocess (see single_run_command)")
    p.add_argument("--store", default=None, help="with --worker: the store to write")


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _worker(args) -> dict:
    """One run of ``args.worker`` frames in THIS process (see :func:`single_run_command`)."""
    from da3stream.bench.cached import CachedPredictor, build_bank

    t0 = time.perf_counter()
    bank = build_bank(args.bank, (args.height, args.width))
    t_bank = time.perf_counter() - t0
    predictor = _CpuTimed(CachedPredictor(bank, revisit=args.revisit))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    summary, wall, main_cpu, sampler, store_sizes = _timed_run(args, bank, predictor)
    return _report(args, summary, wall, main_cpu, sampler, store_sizes, predictor,
                   {"rss_after_bank_mib": round(rss_before, 1), "bank_build_seconds": round(t_bank, 2)})


def _report(args, summary, wall: float, main_cpu: float, sampler, store_sizes, predictor, setup: dict) -> dict:
    """The JSON of one run (``setup``: the bank's figures, placed after ``peak_rss_mib``).

    The predictor's time is subtracted: the predict stage's, and with a serial
    predictor (``--predict-ahead 0``) also that of loop verification's predictions.
    """
    t = dict(summary.timings)
    gc_seconds = t.pop("gc_seconds", {})
    predictor_cpu = predictor.cpu_seconds
    verify_wall = max(0.0, predictor.wall_seconds - t.get("predict", 0.0)) if not args.predict_ahead else 0.0
    engine_s = wall - t.get("predict", 0.0) - verify_wall
    store_bytes = _dir_bytes(Path(args.store))
    used = sampler.summary()
    engine_cpu = used["cpu_s"] - predictor_cpu
    main_engine_cpu = main_cpu - (predictor_cpu if not args.predict_ahead else 0.0)
    n = max(1, args.worker)
    return {
        "frames": args.worker,
        "depth_hw": [args.height, args.width],
        "chunk_size": args.chunk_size,
        "overlap": args.overlap,
        "loop_retrieval": not args.no_loop,
        "wall_seconds": round(wall, 3),
        "predictor_seconds": round(t.get("predict", 0.0), 3),
        "loop_verification_predictor_seconds": round(verify_wall, 3),
        "engine_seconds": round(engine_s, 3),
        "engine_fps": round(args.worker / engine_s, 2),
        "end_to_end_fps_with_cached_predictor": round(args.worker / wall, 2),
        "stage_seconds": t,
        "gc_seconds": gc_seconds,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        **setup,
        "store_bytes": store_bytes,
        "store_bytes_per_frame": round(store_bytes / max(1, summary.n_frames), 1),
        "predictor_cpu_seconds": round(predictor_cpu, 3),
        "engine_cpu_seconds": round(engine_cpu, 3),
        "engine_cpu_ms_per_frame": round(1000 * engine_cpu / n, 3),
        "main_thread_cpu_ms_per_frame": round(1000 * main_engine_cpu / n, 3),
        "fps_bound_two_idle_cores": round(n / max(main_engine_cpu, engine_cpu / 2), 1),
        "thread_cpu_seconds": used["thread_cpu_s"],
        "rss": sampler.rss_flatness(0.1),
        "store_growth": store_sizes.growth(),
        "cost_per_frame": {"cpu": _rounded(sampler.cost_ratio(0.1, 0.2, "cpu")),
                           "wall": _rounded(sampler.cost_ratio(0.1, 0.2, "wall"))},
        "samples": _thin(sampler, 60),
        "n_chunks": summary.n_chunks,
        "n_gated": summary.n_gated,
        "n_loops": summary.n_loops,
        "n_loop_candidates": summary.n_loop_candidates,
        "revisit_descriptors": bool(args.revisit),
    }


def _timed_run(args, bank, predictor):
    """``(summary, wall seconds, main-thread CPU seconds, sampler, store sizes)`` of the engine over the bank."""
    from da3stream.bench.cached import frame_stream
    from da3stream.bench.sampler import ResourceSampler
    from da3stream.streaming.pipeline import reconstruct

    cfg = {"chunk_size": args.chunk_size, "overlap": args.overlap, "keyframes.enabled": False,
           "loop.enabled": not args.no_loop, "predict_ahead": args.predict_ahead,
           "store.save_rgb": not args.no_rgb, "store.save_conf": not args.no_conf}
    sampler = ResourceSampler(args.sample_interval)
    main_cpu0 = time.thread_time()
    with sampler, _GcTimer() as gc_timer:
        t0 = time.perf_counter()
        store_sizes = _StoreSizes(Path(args.store), args.worker, args.store_samples)

        def progress(d: dict) -> None:
            sampler.advance(d["frames"])
            store_sizes.maybe_sample(sampler.progress)

        summary = reconstruct(frame_stream(bank, args.worker), args.store, predictor=predictor, config=cfg,
                              overwrite=True, progress=progress)
        wall = time.perf_counter() - t0
    summary.timings["gc_seconds"] = gc_timer.seconds()
    return summary, wall, time.thread_time() - main_cpu0, sampler, store_sizes


class _GcTimer:
    """Seconds the garbage collector ran, per generation, while the block runs (``gc.callbacks``)."""

    def __init__(self) -> None:
        self._by_gen: dict[int, float] = {}
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = int(info["generation"])
            self._by_gen[gen] = self._by_gen.get(gen, 0.0) + time.perf_counter() - self._t0

    def __enter__(self) -> "_GcTimer":
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)

    def seconds(self) -> dict:
        return {f"gen{g}": round(v, 4) for g, v in sorted(self._by_gen.items())}
class _StoreSizes:
    """Store size on disk at ``k`` points of a run (committed frames, bytes)."""

    def __init__(self, path: Path, n_frames: int, k: int) -> None:
        self.path, self.step, self.points, self._next = path, max(1, n_frames // max(1, k)), [], 0

    def maybe_sample(self, frames: int) -> None:
        if frames >= self._next:
            self.points.append((frames, _dir_bytes(self.path)))
            self._next = frames + self.step

    def growth(self) -> dict:
        """Bytes per frame over the first and the second half of the samples, and their ratio (1.0 = linear)."""
        p = self.points
        if len(p) < 3:
            return {"samples": len(p)}
        a, m, b = p[0], p[len(p) // 2], p[-1]
        first = (m[1] - a[1]) / max(1, m[0] - a[0])
        second = (b[1] - m[1]) / max(1, b[0] - m[0])
        return {"samples": len(p), "bytes_per_frame_first_half": round(first, 1),
                "bytes_per_frame_second_half": round(second, 1), "ratio": round(second / first, 4) if first else None}


class _CpuTimed:
    """Counts the CPU seconds its predictor uses (in whichever thread calls it)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0

    def predict(self, batch, *args, **kwargs):
        t0, w0 = time.thread_time(), time.perf_counter()
        try:
            return self.inner.predict(batch, *args, **kwargs)
        finally:
            self.cpu_seconds += time.thread_time() - t0
            self.wall_seconds += time.perf_counter() - w0

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def _rounded(d: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def _thin(sampler, k: int) -> list:
    """About ``k`` (frames, rss MiB, cpu s, wall s) samples spread over the run."""
    step = max(1, len(sampler.samples) // k)
    return [[s.progress, round(s.rss_bytes / 2**20, 1), round(s.cpu_s, 2), round(s.wall_s, 2)]
            for s in sampler.samples[::step] + sampler.samples[-1:]]


SINGLE_RUN_OPTIONS = ("height", "width", "bank", "chunk_size", "overlap", "predict_ahead", "sample_interval",
                      "no_loop", "revisit", "no_rgb", "no_conf", "store_samples")
"""Options (argparse dests) of this subcommand that :func:`single_run_command` passes on."""


def single_run_command(n_frames: int, store, **options) -> list[str]:
    """The command line of ONE engine run of ``n_frames`` frames into ``store``, in a fresh interpreter.

    It runs ``python -m da3stream.bench engine --worker N --store PATH [options]``,
    which prints that run's JSON (the keys of one entry of ``runs``) on stdout; a
    fresh process keeps the peak RSS the run's own. ``options`` are this
    subcommand's options by argparse dest (see :data:`SINGLE_RUN_OPTIONS`);
    booleans are switches, unset options keep their defaults. The default mode
    runs each ``--frames`` length this way, and so does the CI's long-run test.
    """
    cmd = [sys.executable, "-m", "da3stream.bench", "engine", "--worker", str(n_frames), "--store", str(store)]
    for dest, value in options.items():
        if dest not in SINGLE_RUN_OPTIONS:
            raise ValueError(f"single_run_command: unknown option {dest!r} (known: {', '.join(SINGLE_RUN_OPTIONS)})")
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, str(value)]
    return cmd


def _run_worker(n: int, store: Path, args, **overrides) -> dict:
    """One engine run of ``n`` frames in a fresh interpreter (see :func:`single_run_command`)."""
    options = {dest: getattr(args, dest) for dest in SINGLE_RUN_OPTIONS}
    options.update(overrides)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.blas_threads)}
    proc = subprocess.run(single_run_command(n, store, **options), capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"engine worker failed ({n} frames): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def run(args) -> dict:
    if args.worker is not None:
        return _worker(args)
    if args.hour:
        args.frames = [108000]
    results = []
    loop_walk = None
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        for n in args.frames:
            results.append(_run_worker(n, Path(tmp) / f"engine_{n}.zarr", args))
        if args.loop_walk and not args.no_loop and not args.revisit and not args.hour:
            loop_walk = _run_worker(args.loop_walk, Path(tmp) / "engine_loop_walk.zarr", args, revisit=True)
    out = {"predictor": "cached simulated predictions (no network)", "runs": results}
    if len(results) >= 2:
        out["peak_rss_ratio_longest_over_shortest"] = round(results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"], 4)
        out["engine_fps_ratio_longest_over_shortest"] = round(results[-1]["engine_fps"] / results[0]["engine_fps"], 4)
    if loop_walk is not None:  # loops found, verified and closed on every lap: the loops-on rate
        out["loop_walk"] = loop_walk
        out["loop_walk_engine_fps"] = loop_walk["engine_fps"]
    out["target_engine_fps"] = TARGET_ENGINE_FPS
    out["target_peak_rss_ratio"] = TARGET_RSS_RATIO
    return out


TARGET_ENGINE_FPS = 300
"""Engine frames/s at 504x280 on 2 cores, loops on: 3x DA3-Large's frames/s on an H100."""
TARGET_RSS_RATIO = 1.10
"""Peak RSS of the longest run over the shortest's (20,000 vs 2,000 frames)."""
