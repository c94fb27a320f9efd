"""``python -m da3stream.bench engine``: engine overhead without the network.

Runs the whole pipeline (keyframes, windows, alignment, fusion, loop retrieval,
store writes) on a cached-prediction predictor at 504x280, once per requested
length, each in a fresh subprocess so peak RSS is that run's own. Reports
engine frames/s with the predictor's own time subtracted, per-stage seconds,
peak RSS, and store bytes per frame; and the ratio of peak RSS between the
longest and the shortest run (flat memory means a ratio near 1).
"""

from __future__ import annotations

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
    p.add_argument("--height", type=int, default=280)
    p.add_argument("--width", type=int, default=504)
    p.add_argument("--bank", type=int, default=120, help="distinct cached predictions replayed")
    p.add_argument("--chunk-size", type=int, default=60)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--no-loop", action="store_true", help="disable loop retrieval")
    p.add_argument("--out-dir", default=None, help="where the stores go (default: a temporary folder)")
    p.add_argument("--worker", type=int, default=None, help=__import__("argparse").SUPPRESS)
    p.add_argument("--store", default=None, help=__import__("argparse").SUPPRESS)


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
    from da3stream.bench.cached import CachedPredictor, build_bank, frame_stream
    from da3stream.streaming.pipeline import reconstruct

    t0 = time.perf_counter()
    bank = build_bank(args.bank, (args.height, args.width))
    t_bank = time.perf_counter() - t0
    predictor = CachedPredictor(bank)
    cfg = {"chunk_size": args.chunk_size, "overlap": args.overlap, "keyframes.enabled": False,
           "loop.enabled": not args.no_loop}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    summary = reconstruct(frame_stream(bank, args.worker), args.store, predictor=predictor, config=cfg, overwrite=True)
    wall = time.perf_counter() - t0
    t = summary.timings
    engine_s = wall - t.get("predict", 0.0)
    store_bytes = _dir_bytes(Path(args.store))
    return {
        "frames": args.worker,
        "depth_hw": [args.height, args.width],
        "chunk_size": args.chunk_size,
        "overlap": args.overlap,
        "loop_retrieval": not args.no_loop,
        "wall_seconds": round(wall, 3),
        "predictor_seconds": round(t.get("predict", 0.0), 3),
        "engine_seconds": round(engine_s, 3),
        "engine_fps": round(args.worker / engine_s, 2),
        "end_to_end_fps_with_cached_predictor": round(args.worker / wall, 2),
        "stage_seconds": t,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "rss_after_bank_mib": round(rss_before, 1),
        "bank_build_seconds": round(t_bank, 2),
        "store_bytes": store_bytes,
        "store_bytes_per_frame": round(store_bytes / max(1, summary.n_frames), 1),
        "n_chunks": summary.n_chunks,
        "n_gated": summary.n_gated,
        "n_loops": summary.n_loops,
    }


def run(args) -> dict:
    if args.worker is not None:
        return _worker(args)
    results = []
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        for n in args.frames:
            store = Path(tmp) / f"engine_{n}.zarr"
            cmd = [sys.executable, "-m", "da3stream.bench", "engine", "--worker", str(n), "--store", str(store),
                   "--height", str(args.height), "--width", str(args.width), "--bank", str(args.bank),
                   "--chunk-size", str(args.chunk_size), "--overlap", str(args.overlap)]
            if args.no_loop:
                cmd.append("--no-loop")
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"engine worker failed ({n} frames): {proc.stderr.strip().splitlines()[-1:]}")
            results.append(json.loads(proc.stdout))
    out = {"predictor": "cached simulated predictions (no network)", "runs": results}
    if len(results) >= 2:
        out["peak_rss_ratio_longest_over_shortest"] = round(results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"], 4)
        out["engine_fps_ratio_longest_over_shortest"] = round(results[-1]["engine_fps"] / results[0]["engine_fps"], 4)
    out["target_engine_fps"] = 150
    return out
