"""Sim(3) Lie ops: ``da3stream.alignment.lie`` against pypose, on batched inputs (CPU, float64).

``python -m da3stream.bench lie [--sizes 1000 100000] [--repeat 5]``

pypose is not a dependency (``alignment/lie.py`` says why); this benchmark
compares with it when it is installed (``pip install pypose``) and reports
ours alone otherwise. Per batch size: median milliseconds of Exp, Log and the
action on points, the largest difference of pypose's Exp from ours, and both
Log round-trip errors. Both use the tangent order ``[tau(3), phi(3), sigma]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100000], help="batch sizes")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per op (median)")
    parser.add_argument("--seed", type=int, default=0, help="input seed")


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _ours(xi: np.ndarray, pts: np.ndarray, repeat: int) -> tuple[dict, np.ndarray]:
    from da3stream.alignment import lie

    s, R, t = lie.sim3_exp(xi)
    matrices = np.zeros((len(xi), 4, 4))
    matrices[:, :3, :3] = s[:, None, None] * R
    matrices[:, :3, 3] = t
    matrices[:, 3, 3] = 1.0
    timing = {
        "exp_ms": _median_ms(lambda: lie.sim3_exp(xi), repeat),
        "log_ms": _median_ms(lambda: lie.sim3_log(s, R, t), repeat),
        "act_ms": _median_ms(lambda: s[:, None] * np.einsum("nij,nj->ni", R, pts) + t, repeat),
        "log_roundtrip_max_abs": float(np.abs(lie.sim3_log(s, R, t) - xi).max()),
    }
    return timing, matrices


def _pypose(xi: np.ndarray, pts: np.ndarray, repeat: int, ours_matrices: np.ndarray):
    try:
        import pypose as pp
        import torch
    except ImportError:
        return None
    x, points = torch.from_numpy(xi), torch.from_numpy(pts)
    P = pp.sim3(x).Exp()
    return {
        "exp_ms": _median_ms(lambda: pp.sim3(x).Exp(), repeat),
        "log_ms": _median_ms(lambda: P.Log(), repeat),
        "act_ms": _median_ms(lambda: P.Act(points), repeat),
        "log_roundtrip_max_abs": float((P.Log().tensor() - x).abs().max()),
        "exp_max_abs_difference_from_ours": float(np.abs(P.matrix().numpy() - ours_matrices).max()),
        "version": getattr(pp, "__version__", None),
    }


def run(args: argparse.Namespace) -> dict:
    out = {"pypose_installed": True, "sizes": {}}
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        xi = np.c_[rng.normal(size=(n, 3)), rng.normal(size=(n, 3)) * 0.5, rng.normal(size=(n, 1)) * 0.3]
        pts = rng.normal(size=(n, 3))
        ours, matrices = _ours(xi, pts, args.repeat)
        theirs = _pypose(xi, pts, args.repeat, matrices)
        out["pypose_installed"] = theirs is not None
        row = {"ours": ours, "pypose": theirs}
        if theirs is not None:
            row["pypose_over_ours"] = {k: theirs[k] / ours[k] for k in ("exp_ms", "log_ms", "act_ms") if ours[k] > 0}
        out["sizes"][str(n)] = row
    return out
