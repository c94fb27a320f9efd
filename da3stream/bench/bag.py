"""Reading robot logs: frames per second and peak memory while streaming a bag.

``python -m da3stream.bench bag [--frames 300] [--size 640x480] [--formats ros1 ros2-sqlite3 ros2-mcap] [--compression none]``

Writes a bag of ``--frames`` synthetic frames per format (raw rgb8 or
JPEG/PNG CompressedImage) into a temporary folder, then reads it back through
:func:`da3stream.io.sources.open_source` (prefetch thread on, optionally
undistorting with ``--undistort``), each read in a fresh process. Reports the
bag size, read rate and the reading process's peak resident memory during the
read (sampled every 5 ms) minus its resident memory just before it: a streaming reader's growth stays
near the prefetch queue's worth of frames, far below the bag size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from da3stream.io.sources.rosbag import write_image_bag
from da3stream.io.sources import open_source

_T0_NS = 1_700_000_000_000_000_000
_FRAME_NS = 33_333_333


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=300, help="frames per bag")
    parser.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT")
    parser.add_argument("--formats", nargs="+", default=["ros1", "ros2-sqlite3", "ros2-mcap"],
                        choices=["ros1", "ros2-sqlite3", "ros2-mcap"])
    parser.add_argument("--compression", default="none", choices=["none", "jpeg", "png"], help="none: raw rgb8 Image")
    parser.add_argument("--undistort", action="store_true", help="also undistort every frame (pinhole, 5 coefficients)")
    parser.add_argument("--prefetch", type=int, default=64, help="prefetch queue depth")
    parser.add_argument("--seed", type=int, default=0)


_SAMPLE_S = 0.005
"""Interval of the resident-memory sampler, seconds."""


def _current_rss_mb() -> float:
    """Resident memory now, MiB (Linux /proc; elsewhere the peak so far from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def _read(path: str, prefetch: int, calibration) -> dict:
    """Runs in a fresh process: read every frame; count, time and peak resident-memory growth (sampled)."""
    import importlib
    import threading

    importlib.import_module("cv2")  # loaded before the baseline so its libraries do not count as growth

    before = _current_rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(_SAMPLE_S):
            peak[0] = max(peak[0], _current_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    n = 0
    with open_source(path, prefetch=prefetch, calibration=calibration) as src:
        for _ in src:
            n += 1
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _current_rss_mb())
    return {"frames": n, "read_s": elapsed, "growth": peak[0] - before}


def _frames(n: int, w: int, h: int, seed: int):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w + n, 3), dtype=np.uint8)
    for i in range(n):
        yield base[:, i : i + w]


def run(args: argparse.Namespace) -> dict:
    w, h = (int(v) for v in args.size.lower().split("x"))
    compression = None if args.compression == "none" else args.compression
    calibration = None
    if args.undistort:
        f = 0.8 * w
        calibration = f"{f},{f},{w / 2},{h / 2},-0.25,0.08,0.001,-0.001,-0.01"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            path = Path(tmp) / (f"{fmt}.bag" if fmt == "ros1" else fmt)
            stamps = [_T0_NS + i * _FRAME_NS for i in range(args.frames)]
            t0 = time.perf_counter()
            write_image_bag(path, _frames(args.frames, w, h, args.seed), stamps, fmt=fmt, compression=compression)
            t_write = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                r = pool.apply(_read, (str(path), args.prefetch, calibration))
            n, t_read = r["frames"], r["read_s"]
            results.append({
                "format": fmt, "frames": n, "bag_mb": round(size / 2**20, 1), "write_s": round(t_write, 3),
                "read_s": round(t_read, 3), "read_fps": round(n / t_read, 1),
                "peak_rss_growth_mb": round(r["growth"], 1),
                "frame_mb": round(w * h * 3 / 2**20, 2),
            })
    return {"size": [w, h], "compression": args.compression, "undistort": bool(args.undistort),
            "prefetch": args.prefetch, "results": results}
