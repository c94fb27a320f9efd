"""Pose-graph benchmark: a drifting Sim(3) trajectory with loop edges, optimised.

``python -m da3stream.bench graph [--nodes 1000 --loops 50 --seed 0]``

The ground truth is a multi-lap circular path (so loop edges connect nodes on
different laps at the same place) whose nodes carry random per-chunk scales
(the arbitrary gauge of each window). Sequential edges are the true relative
Sim(3)s perturbed by tangent-space noise; the initial estimate chains them from
node 0 (which is fixed at the truth), so it drifts in position, rotation and
scale. Reported: optimisation seconds, LM iterations, costs and the ATE (RMSE
of node positions after a Sim(3) Umeyama alignment to the truth) before and
after, absolute and as a fraction of the trajectory diameter. ``seconds`` is
wall time of the optimisation alone, ``cpu_seconds`` its process CPU time (less
sensitive to other load on the machine).

``--backend`` picks the solver: ``own`` (default, the flat keys above),
``gtsam`` (gtsam's batch LM, :mod:`da3stream.alignment.pose_graph_gtsam`),
``isam2`` (gtsam's iSAM2 fed one node per update, loops with their later node)
or ``all``; the non-default choices report per back end under ``backends``,
with ``final_cost`` always the project's robust cost on the result, and, beside
``own``, the largest node-position difference and relative cost difference to
it. ``--per-window`` times an online run instead (:mod:`da3stream.bench.graph_online`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from da3stream.alignment.lie import exp_sim3, so3_exp
from da3stream.alignment.pose_graph import Edge, optimize_pose_graph
from da3stream.alignment.pose_graph_gtsam import IncrementalPoseGraph, optimize_pose_graph_gtsam
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.config import LoopConfig

BACKENDS = ("own", "gtsam", "isam2")
"""Pose-graph back ends: the project's sparse LM, gtsam's batch LM, gtsam's iSAM2 fed node by node."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1000, help="number of Sim(3) nodes (chunks)")
    parser.add_argument("--loops", type=int, default=50, help="number of loop-closure edges")
    parser.add_argument("--laps", type=int, default=4, help="laps of the circular path")
    parser.add_argument("--radius", type=float, default=50.0, help="path radius (world units)")
    parser.add_argument("--noise-rot", type=float, default=0.005, help="edge rotation noise (rad)")
    parser.add_argument("--noise-trans", type=float, default=0.01, help="edge translation noise (node-frame units)")
    parser.add_argument("--noise-scale", type=float, default=0.005, help="edge log-scale noise")
    parser.add_argument("--kernel", default="huber", choices=["huber", "cauchy", "none"], help="robust kernel")
    parser.add_argument(
        "--kernel-scale",
        type=float,
        default=LoopConfig().huber_delta,
        help="kernel width in whitened units (default: the config's loop.huber_delta)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--backend", default="own", choices=["own", *BACKENDS[1:], "all"],
                        help="own sparse LM (flat JSON keys), gtsam batch LM, gtsam iSAM2, or all (per-backend keys)")
    parser.add_argument("--isam2-relinearize", type=float, default=0.01,
                        help="iSAM2 relinearisation threshold (tangent units)")
    parser.add_argument("--per-window", action="store_true",
                        help="online timing: nodes arrive one per window, loops every --loop-every windows")
    parser.add_argument("--loop-every", type=int, default=10, help="per-window mode: windows between loop windows")
    parser.add_argument("--own-sizes", default="",
                        help="per-window mode: comma-separated graph sizes where the re-solve (own, gtsam) is timed "
                             "(default: nodes/10, nodes/3, nodes)")
    parser.add_argument("--isam2-nodes", type=int, default=0,
                        help="per-window mode: stream iSAM2 only this far (0: all nodes); per-window time "
                             "at --nodes is then extrapolated")


def make_truth(n_nodes: int, *, laps: int, radius: float, rng: np.random.Generator) -> list[Sim3]:
    """``world_from_node`` of a multi-lap circular path with random tilts and per-node scales."""
    angle = np.linspace(0.0, 2.0 * np.pi * laps, n_nodes, endpoint=False)
    height = 0.05 * radius * np.sin(3.0 * angle / laps)
    world_from_node_true = []
    for k in range(n_nodes):
        heading = so3_exp(np.array([0.0, -angle[k], 0.0]))
        tilt = so3_exp(rng.normal(scale=0.05, size=3))
        centre = np.array([radius * np.cos(angle[k]), height[k], radius * np.sin(angle[k])])
        world_from_node_true.append(Sim3(np.exp(rng.normal(scale=0.3)), heading @ tilt, centre))
    return world_from_node_true


def edge_maker(truth: list[Sim3], *, noise_rot: float, noise_trans: float, noise_scale: float,
               rng: np.random.Generator):
    """A function ``(i, j, is_loop) -> Edge``: the true ``i_from_j`` perturbed by tangent noise, and its information."""
    sigmas = np.array([noise_trans] * 3 + [noise_rot] * 3 + [noise_scale])
    information = np.diag(1.0 / sigmas**2)

    def edge(i: int, j: int, is_loop: bool = False) -> Edge:
        i_from_j = truth[i].inverse() @ truth[j]
        return Edge(i, j, i_from_j @ exp_sim3(rng.normal(size=7) * sigmas), information, is_loop=is_loop)

    return edge


def chain(world_from_first: Sim3, seq_edges: list[Edge]) -> list[Sim3]:
    """Node poses chained from the first through the sequential edges (the drifting initial estimate)."""
    out = [world_from_first]
    for e in seq_edges:
        out.append(out[-1] @ e.i_from_j)
    return out


def make_problem(
    n_nodes: int,
    n_loops: int,
    *,
    laps: int,
    radius: float,
    noise_rot: float,
    noise_trans: float,
    noise_scale: float,
    rng: np.random.Generator,
):
    """Truth, drifting initial estimate and edges of a multi-lap Sim(3) trajectory."""
    world_from_node_true = make_truth(n_nodes, laps=laps, radius=radius, rng=rng)
    edge = edge_maker(world_from_node_true, noise_rot=noise_rot, noise_trans=noise_trans, noise_scale=noise_scale,
                      rng=rng)
    edges = [edge(k, k + 1) for k in range(n_nodes - 1)]
    per_lap = n_nodes // laps
    candidates = [(k, k + m * per_lap) for m in range(1, laps) for k in range(n_nodes - m * per_lap)]
    pick = rng.choice(len(candidates), size=min(n_loops, len(candidates)), replace=False)
    for c in np.sort(pick):
        i, j = candidates[c]
        edges.append(edge(i, j, True))
    return world_from_node_true, chain(world_from_node_true[0], edges[: n_nodes - 1]), edges


def position_ate(estimate: list[Sim3], truth: list[Sim3]) -> float:
    """RMSE of node positions after Sim(3) alignment of the estimate to the truth."""
    est = np.stack([T.t for T in estimate])
    gt = np.stack([T.t for T in truth])
    gt_from_est = umeyama(est, gt)
    return float(np.sqrt(np.mean(np.sum((gt_from_est.apply(est) - gt) ** 2, axis=1))))


def solve(backend: str, initial: list[Sim3], edges: list[Edge], kernel, kernel_scale: float,
          isam2_relinearize: float = 0.01):
    """``(GraphResult, seconds, cpu_seconds)`` of one back end on a batch problem with node 0 fixed.

    ``isam2`` feeds the nodes in order, each with its sequential edge (the first
    ``len(initial) - 1`` edges) and the loops whose later node it is, one update per node.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    if backend == "own":
        result = optimize_pose_graph(initial, edges, fixed=(0,), kernel=kernel, kernel_scale=kernel_scale)
    elif backend == "gtsam":
        result = optimize_pose_graph_gtsam(initial, edges, fixed=(0,), kernel=kernel, kernel_scale=kernel_scale)
    else:
        n = len(initial)
        loops_at: dict = {}
        for e in edges[n - 1 :]:
            loops_at.setdefault(max(e.i, e.j), []).append(e)
        graph = IncrementalPoseGraph(initial[0], kernel=kernel, kernel_scale=kernel_scale,
                                     relinearize_threshold=isam2_relinearize)
        for e in edges[: n - 1]:
            graph.add_window(e, tuple(loops_at.get(e.j, ())))
        result = graph.result()
    return result, time.perf_counter() - t0, time.process_time() - c0


def _backend_report(result, seconds: float, cpu_seconds: float, truth: list[Sim3], diameter: float) -> dict:
    ate_after = position_ate(result.world_from_node, truth)
    return {
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu_seconds, 4),
        "iterations": result.iterations,
        "converged": result.converged,
        "final_cost": result.final_cost,
        "ate_after": ate_after,
        "ate_after_rel": ate_after / diameter,
        "min_edge_weight": float(result.edge_weights.min()),
    }


def run(args: argparse.Namespace) -> dict:
    if args.per_window:
        from da3stream.bench.graph_online import run_per_window

        return run_per_window(args)
    rng = np.random.default_rng(args.seed)
    truth, initial, edges = make_problem(
        args.nodes,
        args.loops,
        laps=args.laps,
        radius=args.radius,
        noise_rot=args.noise_rot,
        noise_trans=args.noise_trans,
        noise_scale=args.noise_scale,
        rng=rng,
    )
    kernel = None if args.kernel == "none" else args.kernel
    diameter = 2.0 * args.radius
    ate_before = position_ate(initial, truth)
    out = {
        "nodes": args.nodes,
        "edges": len(edges),
        "loop_edges": sum(e.is_loop for e in edges),
        "kernel": args.kernel,
        "kernel_scale": args.kernel_scale,
    }
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    reports, results = {}, {}
    for name in backends:
        results[name], seconds, cpu_seconds = solve(name, initial, edges, kernel, args.kernel_scale,
                                                    args.isam2_relinearize)
        reports[name] = _backend_report(results[name], seconds, cpu_seconds, truth, diameter)
    if args.backend == "own":  # the original flat keys
        rep = reports["own"]
        out.update({k: rep[k] for k in ("seconds", "cpu_seconds", "iterations", "converged")})
        out.update({"initial_cost": results["own"].initial_cost, "final_cost": rep["final_cost"],
                    "ate_before": ate_before, "ate_after": rep["ate_after"], "ate_before_rel": ate_before / diameter,
                    "ate_after_rel": rep["ate_after_rel"], "min_edge_weight": rep["min_edge_weight"]})
        return out
    first = results[backends[0]]
    out.update({"initial_cost": first.initial_cost, "ate_before": ate_before, "ate_before_rel": ate_before / diameter,
                "cost": "the project's robust cost (alignment.pose_graph) evaluated on each result",
                "backends": reports})
    if "own" in results:
        for name in backends:
            rep = reports[name]
            rep["max_position_diff_vs_own"] = max_position_diff(results[name].world_from_node,
                                                                results["own"].world_from_node)
            rep["final_cost_rel_vs_own"] = rep["final_cost"] / reports["own"]["final_cost"] - 1.0
    return out


def max_position_diff(a: list[Sim3], b: list[Sim3]) -> float:
    """Largest distance between corresponding node positions."""
    return float(np.max(np.linalg.norm(np.stack([T.t for T in a]) - np.stack([T.t for T in b]), axis=1)))
