"""Place-recognition search cost as the descriptor index grows.

``python -m da3stream.bench retrieval [--sizes 1000 10000 100000] [--dim 256]``

Builds a synthetic trajectory of descriptors (places along a path that is
revisited, each frame a noisy view of its place, like the simulated
predictor's descriptors), then times one window's search (``--queries``
frames, exclusion + per-query NMS + top-k, exactly what the loop closer runs)
at each index size, for each backend. For the IVF backend it also reports
recall: the fraction of queries whose best IVF result is the exact search's
best result, and for every backend the place recall: the fraction of queries
whose best result is a frame of the queried place. Also reports the time to insert all entries (IVF training
included) and a log-log slope of the fastest query time against index size
(1 = linear; the minimum is the least disturbed by other load on the machine).

Each backend row also gives ``bytes_per_entry`` (what the index holds per
entry written: descriptor, time, distance, frame, row id, IVF list slot; the
blocks' unwritten rows are not resident). When
faiss-cpu is installed, ``faiss`` gives the same figures for faiss indexes
searched the same way (per-query exclusion as an ``IDSelectorBitmap`` before
the top-k, the same candidate pool, then the same NMS): ``flat_f32``
(``IndexFlatIP``), ``flat_bf16`` (``IndexScalarQuantizer`` with ``QT_bf16``,
the storage our index uses), ``ivf_f32`` (``IndexIVFFlat``) and ``ivf_bf16``
(``IndexIVFScalarQuantizer`` ``QT_bf16``), IVF with our IVF's list count
(``round(sqrt(T))`` for the training size ``T`` our IVF reached) and
``n_probe``, trained once on the first ``T`` entries. Their
``bytes_per_entry`` is the serialised faiss index per entry plus the 32 bytes
of per-entry columns (time, distance, frame, row) that the loop closer needs
beside any faiss index. ``recall_at_1_vs_exact`` compares the best result
with our exact search's.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from da3stream.streaming.loops.index import DescriptorIndex
from da3stream.streaming.loops.index.selection import exclusion_mask, greedy_nms_1d

_META_BYTES = 32
"""Per-entry columns the loop closer keeps beside the descriptors: time, distance, frame, row (8 bytes each)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="index sizes to measure")
    parser.add_argument("--dim", type=int, default=256, help="descriptor dimension")
    parser.add_argument("--queries", type=int, default=4, help="query frames per search (one window)")
    parser.add_argument("--repeats", type=int, default=20, help="timed searches per size and backend")
    parser.add_argument("--top-k", type=int, default=5, help="results per query")
    parser.add_argument("--nms", type=int, default=10, help="NMS radius in frames")
    parser.add_argument("--backends", nargs="+", default=["exact", "ivf"], choices=["exact", "ivf"])
    parser.add_argument("--device", default="cpu", help="torch device of the exact search (cpu, cuda, auto)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-faiss", action="store_true", help="skip the faiss-cpu comparison")


def _trajectory(n: int, dim: int, rng: np.random.Generator):
    """Descriptors of a path over ~n/20 places that is traversed repeatedly, plus frame times."""
    n_places = max(8, n // 20)
    places = rng.standard_normal((n_places, dim)).astype(np.float32)
    places /= np.linalg.norm(places, axis=1, keepdims=True)
    # Walk along the places in order, restarting at a random place now and then (a revisit).
    place_of = np.empty(n, dtype=np.int64)
    p = 0
    for i in range(n):
        if rng.random() < 0.002:
            p = int(rng.integers(n_places))
        place_of[i] = p
        if rng.random() < 0.05:
            p = (p + 1) % n_places
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
    desc = places[place_of] + noise
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return desc, places, place_of


@dataclass(frozen=True)
class _Data:
    """One index size's entries and timed query batches."""

    desc: np.ndarray  # (N, D) entries
    times: np.ndarray
    dists: np.ndarray
    frames: np.ndarray
    place_of: np.ndarray  # (N,) place of each entry
    q_desc: np.ndarray  # (repeats, queries, D)
    q_place: np.ndarray  # (repeats, queries)
    q_time: np.ndarray
    q_dist: np.ndarray


def _data(size: int, args: argparse.Namespace, rng: np.random.Generator, fps: float = 30.0) -> _Data:
    desc, places, place_of = _trajectory(size, args.dim, rng)
    qrng = np.random.default_rng(args.seed + size)
    # Query places that the index holds outside the exclusion window.
    visited = np.unique(place_of[: max(1, size - int(30 * fps))])
    q_place = visited[qrng.integers(visited.size, size=(args.repeats, args.queries))]
    q_desc = places[q_place] + qrng.standard_normal((args.repeats, args.queries, args.dim)).astype(np.float32) * (
        0.6 / np.sqrt(args.dim)
    )
    q_desc /= np.linalg.norm(q_desc, axis=2, keepdims=True)
    return _Data(desc, np.arange(size) / fps, np.arange(size) * 0.05, np.arange(size, dtype=np.int64), place_of,
                 q_desc, q_place, np.full(args.queries, size / fps + 1.0), np.full(args.queries, size * 0.05 + 1.0))


def _timed(search, data: _Data, repeats: int) -> tuple[dict, np.ndarray]:
    """Timing figures and the (repeats, queries) best entry (-1: none) of ``search(r)`` over the query batches."""
    search(0)  # warm-up
    elapsed, tops = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        tops.append(search(r))
        elapsed.append(time.perf_counter() - t0)
    top = np.stack(tops)
    return {
        "query_ms_min": 1e3 * float(np.min(elapsed)),
        "query_ms_median": 1e3 * float(np.median(elapsed)),
        "query_ms_p90": 1e3 * float(np.percentile(elapsed, 90)),
    }, top


def _ours(backend: str, data: _Data, args: argparse.Namespace) -> tuple[dict, np.ndarray, DescriptorIndex]:
    size = data.desc.shape[0]
    index = DescriptorIndex(args.dim, backend=backend, device=args.device, ivf_min_size=min(size, 20000),
                            seed=args.seed)
    t0 = time.perf_counter()
    step = 64
    for a in range(0, size, step):
        sl = slice(a, a + step)
        index.add(data.desc[sl], data.times[sl], data.dists[sl], data.frames[sl], data.frames[sl])
    build = time.perf_counter() - t0
    kwargs = dict(top_k=args.top_k, min_similarity=0.0, exclude_seconds=20.0, exclude_distance=0.0,
                  nms_radius=args.nms)

    def search(r: int) -> np.ndarray:
        cand = index.search(data.q_desc[r], data.q_time, data.q_dist, **kwargs)
        top = np.full(args.queries, -1, dtype=np.int64)
        for qi in range(args.queries):
            hit = np.flatnonzero(cand.query == qi)
            if hit.size:
                top[qi] = cand.entry[hit[0]]
        return top

    row, top = _timed(search, data, args.repeats)
    row.update({
        "insert_s_total": build,
        "uses_ivf": bool(index.uses_ivf),
        "place_recall_at_1": _place_recall(top, data),
        "bytes_per_entry": _written_bytes_per_entry(index),
    })
    return row, top, index


def _place_recall(top: np.ndarray, data: _Data) -> float:
    return float(np.mean((top >= 0) & (data.place_of[top] == data.q_place)))


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(max(1, int(args.threads)))  # the CUDA path; numpy's BLAS follows OMP_NUM_THREADS
    rng = np.random.default_rng(args.seed)
    results = []
    faiss = None if args.no_faiss else _import_faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(max(1, int(args.threads)))
    for size in args.sizes:
        data = _data(size, args, rng)
        row = {"index_size": int(size)}
        best = {}
        trained_at = min(size, 20000)
        for backend in args.backends:
            row[backend], best[backend], index = _ours(backend, data, args)
            if backend == "ivf" and index._trained_at:
                trained_at = index._trained_at
        if "exact" in best and "ivf" in best:
            row["ivf"]["recall_at_1_vs_exact"] = float(np.mean(best["exact"] == best["ivf"]))
        if faiss is not None:
            row["faiss"] = _faiss_rows(faiss, args, data, best.get("exact"), trained_at)
        results.append(row)
    slopes = {}
    if len(args.sizes) >= 2:
        for backend in args.backends:
            x = np.log([r["index_size"] for r in results])
            y = np.log([r[backend]["query_ms_min"] for r in results])
            slopes[backend] = float(np.polyfit(x, y, 1)[0])
    return {
        "dim": args.dim,
        "queries_per_search": args.queries,
        "top_k": args.top_k,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "faiss_version": None if faiss is None else faiss.__version__,
        "results": results,
        "loglog_slope_query_time_vs_size": slopes,
    }


def _written_bytes_per_entry(index: DescriptorIndex) -> float:
    """Bytes per entry of the rows written (blocks are ``np.empty``: unwritten rows are not resident)."""
    desc = np.dtype(index._desc.dtype).itemsize * index.dim
    lists = sum(m.n for m in index._lists) * np.dtype(np.int64).itemsize
    return desc + _META_BYTES + lists / max(len(index), 1)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_index(faiss, kind: str, dim: int, n_lists: int):
    ip = faiss.METRIC_INNER_PRODUCT
    bf16 = faiss.ScalarQuantizer.QT_bf16
    if kind == "flat_f32":
        return faiss.IndexFlatIP(dim), None
    if kind == "flat_bf16":
        return faiss.IndexScalarQuantizer(dim, bf16, ip), None
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf_f32":
        return faiss.IndexIVFFlat(quantizer, dim, n_lists, ip), quantizer
    return faiss.IndexIVFScalarQuantizer(quantizer, dim, n_lists, bf16, ip), quantizer


def _faiss_search(faiss, index, q, data: _Data, args, *, ivf: bool) -> np.ndarray:
    """Best entry per query, the loop closer's way: exclusion before top-k, pool, threshold, NMS."""
    n = index.ntotal
    pool = args.top_k * (2 * max(args.nms, 0) + 1)
    excl = exclusion_mask(data.q_time, data.q_dist, data.times, data.dists, exclude_seconds=20.0,
                          exclude_distance=0.0)
    top = np.full(q.shape[0], -1, dtype=np.int64)
    for qi in range(q.shape[0]):
        bits = np.packbits(~excl[qi], bitorder="little")
        sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
        params = faiss.SearchParametersIVF(sel=sel, nprobe=16) if ivf else faiss.SearchParameters(sel=sel)
        sc, ent = index.search(q[qi:qi + 1], pool, params=params)
        ok = (ent[0] >= 0) & (sc[0] >= 0.0)
        ent, sc = ent[0][ok], sc[0][ok]
        if ent.size == 0:
            continue
        keep = greedy_nms_1d(data.frames[ent], np.lexsort((ent, -sc)), max(args.nms, 0), args.top_k)
        top[qi] = ent[keep[0]]
    return top


def _faiss_rows(faiss, args, data: _Data, exact_best, ivf_train: int) -> dict:
    """The faiss indexes' figures on the same data and queries (see the module docstring)."""
    desc = data.desc
    size = desc.shape[0]
    n_lists = max(1, min(ivf_train, int(round(np.sqrt(ivf_train)))))
    out = {}
    for kind in ("flat_f32", "flat_bf16", "ivf_f32", "ivf_bf16"):
        ivf = kind.startswith("ivf")
        t0 = time.perf_counter()
        index, _quantizer = _faiss_index(faiss, kind, args.dim, n_lists)
        if not index.is_trained:
            index.train(desc[:ivf_train])
        for a in range(0, size, 64):
            index.add(desc[a:a + 64])
        build = time.perf_counter() - t0
        row, top = _timed(lambda r: _faiss_search(faiss, index, data.q_desc[r], data, args, ivf=ivf), data,
                          args.repeats)
        row.update({
            "insert_s_total": build,
            "bytes_per_entry": faiss.serialize_index(index).nbytes / size + _META_BYTES,
            "place_recall_at_1": _place_recall(top, data),
        })
        if exact_best is not None:
            row["recall_at_1_vs_exact"] = float(np.mean(top == exact_best))
        out[kind] = row
    return out
