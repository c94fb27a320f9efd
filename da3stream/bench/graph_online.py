"""Per-window pose-graph timing for an online run (``python -m da3stream.bench graph --per-window``).

Nodes arrive one per window, each with its sequential edge; on every
``--loop-every``-th window after the first lap a loop edge to the same place one
lap earlier arrives too. Three strategies are timed:

* ``own``: what the engine does (streaming/loops/graph.py): a non-loop window
  chains the new node onto the previous estimate; a loop window re-solves the
  whole graph with :func:`~da3stream.alignment.pose_graph.optimize_pose_graph`,
  warm-started from the previous loop window's solution plus the chained new
  nodes. Re-solving every loop window of a 100k-node run costs hours, so the
  re-solve is timed at a few sizes (``--own-sizes``): the graph one loop window
  earlier is solved untimed, the new nodes are chained onto it, and the re-solve
  is timed. Chaining is timed over a run of compositions.
* ``gtsam``: the same strategy with gtsam's batch LM as the re-solver
  (:func:`~da3stream.alignment.pose_graph_gtsam.optimize_pose_graph_gtsam`).
* ``isam2``: :class:`~da3stream.alignment.pose_graph_gtsam.IncrementalPoseGraph`,
  one iSAM2 update per window, every window timed, up to ``--isam2-nodes``
  (default all). When it stops short of ``--nodes``, its per-window times at
  ``--nodes`` are extrapolated linearly in the graph size from the last half of
  the streamed windows (never below their mean), and the JSON says so.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from da3stream.alignment.pose_graph import optimize_pose_graph
from da3stream.alignment.pose_graph_gtsam import IncrementalPoseGraph, optimize_pose_graph_gtsam
from da3stream.bench.graph import BACKENDS, chain, edge_maker, make_truth, max_position_diff, position_ate

_CHAIN_REPS = 2000
"""Compositions timed for the own strategy's non-loop window."""

_BINS = 10
"""Graph-size bins of the iSAM2 per-window times (``by_size``)."""

_TAIL = 0.1
"""Fraction of the streamed windows (the largest graphs) whose times are reported as ``at_end``."""


def make_online_problem(args: argparse.Namespace):
    """``(truth, seq_edges, loops_at)``: ``seq_edges[k - 1]`` is edge (k - 1, k), ``loops_at[k]`` window k's loops."""
    rng = np.random.default_rng(args.seed)
    truth = make_truth(args.nodes, laps=args.laps, radius=args.radius, rng=rng)
    edge = edge_maker(truth, noise_rot=args.noise_rot, noise_trans=args.noise_trans, noise_scale=args.noise_scale,
                      rng=rng)
    seq = [edge(k - 1, k) for k in range(1, args.nodes)]
    per_lap = args.nodes // args.laps
    loops_at = {k: [edge(k - per_lap, k, True)] for k in range(per_lap, args.nodes) if (k + 1) % args.loop_every == 0}
    return truth, seq, loops_at


def _stats(times: np.ndarray) -> dict:
    if times.size == 0:
        return {"count": 0}
    return {"count": int(times.size), "mean_s": float(times.mean()), "p95_s": float(np.percentile(times, 95)),
            "max_s": float(times.max())}


def _edges_upto(seq, loops_at, n: int) -> list:
    return list(seq[: n - 1]) + [e for k in sorted(loops_at) if k < n for e in loops_at[k]]


def _resolve_at_size(solve, truth, seq, loops_at, size: int, loop_every: int, kernel, kernel_scale: float):
    """Time ``solve``'s re-solve of loop window ``size - 1``, warm-started from loop window ``size - 1 - loop_every``."""
    prev = size - loop_every
    warm = solve(chain(truth[0], seq[: prev - 1]), _edges_upto(seq, loops_at, prev), fixed=(0,),
                 kernel=kernel, kernel_scale=kernel_scale)
    initial = chain(warm.world_from_node[-1], seq[prev - 1 : size - 1])
    initial = list(warm.world_from_node) + initial[1:]
    edges = _edges_upto(seq, loops_at, size)
    t0, c0 = time.perf_counter(), time.process_time()
    result = solve(initial, edges, fixed=(0,), kernel=kernel, kernel_scale=kernel_scale)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"nodes": size, "edges": len(edges), "loop_window_s": seconds, "loop_window_cpu_s": cpu,
            "iterations": result.iterations, "final_cost": result.final_cost,
            "ate": position_ate(result.world_from_node, truth[:size])}, result


def _chain_seconds(seq) -> float:
    node = seq[0].i_from_j
    reps = min(_CHAIN_REPS, len(seq))
    t0 = time.perf_counter()
    for e in seq[:reps]:
        node = node @ e.i_from_j
    return (time.perf_counter() - t0) / reps


def _own_sizes(args, per_lap: int) -> list[int]:
    wanted = [int(x) for x in args.own_sizes.split(",") if x] or [args.nodes // 10, args.nodes // 3, args.nodes]
    out = []
    for w in wanted:
        size = min(w, args.nodes) // args.loop_every * args.loop_every  # last window (size - 1) is a loop window
        if size - args.loop_every - 1 >= per_lap and size not in out:
            out.append(size)
    return sorted(out)


def _run_isam2(truth, seq, loops_at, m: int, kernel, kernel_scale: float, relinearize: float):
    graph = IncrementalPoseGraph(truth[0], kernel=kernel, kernel_scale=kernel_scale,
                                 relinearize_threshold=relinearize)
    times = np.empty(m - 1)
    cpu0 = time.process_time()
    for k in range(1, m):
        t0 = time.perf_counter()
        graph.add_window(seq[k - 1], tuple(loops_at.get(k, ())))
        times[k - 1] = time.perf_counter() - t0
    return graph, times, time.process_time() - cpu0


def _isam2_report(times: np.ndarray, loops_at: dict, m: int, n: int, loop_every: int) -> dict:
    window = np.arange(1, m)
    is_loop = np.array([k in loops_at for k in window], dtype=bool)
    tail = window >= (1.0 - _TAIL) * m
    rep = {"streamed_nodes": m, "all_windows": _stats(times), "loop_windows": _stats(times[is_loop]),
           "other_windows": _stats(times[~is_loop]),
           "at_end": {"windows_from": int(window[tail][0]), "all_windows": _stats(times[tail]),
                      "loop_windows": _stats(times[tail & is_loop]), "other_windows": _stats(times[tail & ~is_loop])}}
    edges_at = np.linspace(1, m, _BINS + 1).astype(int)
    rep["by_size"] = [{"windows": [int(a), int(b)], "mean_s": float(times[a - 1 : b - 1].mean()),
                       "p95_s": float(np.percentile(times[a - 1 : b - 1], 95))}
                      for a, b in zip(edges_at[:-1], edges_at[1:]) if b > a]
    if m < n:
        rep["extrapolated_to_nodes"] = n
        for name, mask in (("loop_windows", is_loop), ("other_windows", ~is_loop)):
            half = mask & (window >= window[mask][len(window[mask]) // 2]) if mask.any() else mask
            if half.sum() >= 2:
                b, a = np.polyfit(window[half], times[half], 1)
                rep[f"extrapolated_{name}_mean_s"] = float(max(a + b * n, times[half].mean()))
        rep["extrapolated_all_windows_mean_s"] = float(
            (rep.get("extrapolated_loop_windows_mean_s", 0.0) + rep.get("extrapolated_other_windows_mean_s", 0.0)
             * (loop_every - 1)) / loop_every)
        rep["extrapolation"] = ("least-squares line of time against graph size over the last half of the "
                                "streamed windows, at least their mean")
    return rep


def run_per_window(args: argparse.Namespace) -> dict:
    kernel = None if args.kernel == "none" else args.kernel
    truth, seq, loops_at = make_online_problem(args)
    n, L = args.nodes, args.loop_every
    per_lap = n // args.laps
    out = {"mode": "per_window", "nodes": n, "loop_every": L, "loop_windows": len(loops_at), "laps": args.laps,
           "kernel": args.kernel, "kernel_scale": args.kernel_scale, "backends": {}}
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    own_last = None
    for name, solve in (("own", optimize_pose_graph), ("gtsam", optimize_pose_graph_gtsam)):
        if name not in backends:
            continue
        chain_s = _chain_seconds(seq)
        sizes, last = [], None
        for size in _own_sizes(args, per_lap):
            rep, last = _resolve_at_size(solve, truth, seq, loops_at, size, L, kernel, args.kernel_scale)
            rep["mean_per_window_s"] = (rep["loop_window_s"] + (L - 1) * chain_s) / L
            sizes.append(rep)
        own_last = last if name == "own" else own_last
        out["backends"][name] = {"other_window_s": chain_s, "sizes": sizes,
                                 "note": "one loop-window re-solve timed per size, warm-started like the engine"}
    if "isam2" in backends:
        m = min(args.isam2_nodes or n, n)
        graph, times, cpu = _run_isam2(truth, seq, loops_at, m, kernel, args.kernel_scale, args.isam2_relinearize)
        rep = _isam2_report(times, loops_at, m, n, L)
        result = graph.result()
        rep.update({"total_s": float(times.sum()), "total_cpu_s": cpu, "final_cost": result.final_cost,
                    "ate": position_ate(result.world_from_node, truth[:m]),
                    "relinearize_threshold": args.isam2_relinearize})
        if own_last is not None and len(own_last.world_from_node) == m:
            rep["max_position_diff_vs_own"] = max_position_diff(result.world_from_node, own_last.world_from_node)
            rep["final_cost_rel_vs_own"] = result.final_cost / own_last.final_cost - 1.0
        out["backends"]["isam2"] = rep
    return out
