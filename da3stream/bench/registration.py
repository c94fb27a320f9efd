"""Registration cost at the pipeline's correspondence counts.

``python -m da3stream.bench registration [--points 500 4000 20000 --repeats 5]``

The pipeline registers each window on at most ``align.max_points`` (4,000 by
default) same-pixel pairs with 64 minimal-sample starts and 10 IRLS
iterations. This times :func:`da3stream.alignment.registration.register` on
synthetic pairs of that kind (30 % gross outliers, depth-relative noise) for
each ``--points`` count.

This benchmark chose numpy over the torch twin that registration once had;
its figures then (torch on the CPU, and the count of torch operator calls per
registration that bounds a GPU run from below) are kept in the docstring of
:mod:`da3stream.alignment.registration`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.alignment.registration import register
from da3stream.alignment.sim3 import Sim3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, nargs="+", default=[500, 4000, 20000], help="correspondence counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per size (the median is reported)")
    parser.add_argument("--outliers", type=float, default=0.3, help="fraction of gross outliers")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def make_pairs(rng: np.random.Generator, m: int, outlier_frac: float):
    """``(dst, src, weight, depth_dst)`` of ``m`` pairs related by a random Sim(3), with outliers."""
    dst_from_src = Sim3(float(np.exp(rng.uniform(-1, 1))), Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix(),
                        rng.normal(size=3))
    dst_true = np.c_[rng.uniform(-5, 5, (m, 2)), rng.uniform(2, 30, m)]
    depth = dst_true[:, 2].copy()
    src = dst_from_src.inverse().apply(dst_true)
    dst = dst_true + rng.normal(size=(m, 3)) * 0.003 * depth[:, None]
    out = rng.random(m) < outlier_frac
    dst[out] += rng.normal(size=(int(out.sum()), 3)) * depth[out, None] * 0.5
    return dst, src, rng.uniform(1.0, 3.0, m), depth


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (imports, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(args: argparse.Namespace) -> dict:
    rows = []
    for m in args.points:
        pairs = make_pairs(np.random.default_rng([args.seed, m]), m, args.outliers)
        rows.append({"points": m, "numpy_ms": round(1e3 * _median_seconds(lambda: register(*pairs), args.repeats), 3)})
    return {"repeats": args.repeats, "outliers": args.outliers, "sizes": rows}
