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
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from da3stream.alignment.lie import exp_sim3, so3_exp
from da3stream.alignment.pose_graph import Edge, optimize_pose_graph
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.config import LoopConfig


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
    angle = np.linspace(0.0, 2.0 * np.pi * laps, n_nodes, endpoint=False)
    height = 0.05 * radius * np.sin(3.0 * angle / laps)
    world_from_node_true = []
    for k in range(n_nodes):
        heading = so3_exp(np.array([0.0, -angle[k], 0.0]))
        tilt = so3_exp(rng.normal(scale=0.05, size=3))
        centre = np.array([radius * np.cos(angle[k]), height[k], radius * np.sin(angle[k])])
        world_from_node_true.append(Sim3(np.exp(rng.normal(scale=0.3)), heading @ tilt, centre))
    sigmas = np.array([noise_trans] * 3 + [noise_rot] * 3 + [noise_scale])
    information = np.diag(1.0 / sigmas**2)

    def measure(i: int, j: int) -> Sim3:
        i_from_j = world_from_node_true[i].inverse() @ world_from_node_true[j]
        return i_from_j @ exp_sim3(rng.normal(size=7) * sigmas)

    edges = [Edge(k, k + 1, measure(k, k + 1), information) for k in range(n_nodes - 1)]
    per_lap = n_nodes // laps
    candidates = [(k, k + m * per_lap) for m in range(1, laps) for k in range(n_nodes - m * per_lap)]
    pick = rng.choice(len(candidates), size=min(n_loops, len(candidates)), replace=False)
    for c in np.sort(pick):
        i, j = candidates[c]
        edges.append(Edge(i, j, measure(i, j), information, is_loop=True))
    initial = [world_from_node_true[0]]
    for e in edges[: n_nodes - 1]:
        initial.append(initial[-1] @ e.i_from_j)
    return world_from_node_true, initial, edges


def position_ate(estimate: list[Sim3], truth: list[Sim3]) -> float:
    """RMSE of node positions after Sim(3) alignment of the estimate to the truth."""
    est = np.stack([T.t for T in estimate])
    gt = np.stack([T.t for T in truth])
    gt_from_est = umeyama(est, gt)
    return float(np.sqrt(np.mean(np.sum((gt_from_est.apply(est) - gt) ** 2, axis=1))))


def run(args: argparse.Namespace) -> dict:
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
    t0, c0 = time.perf_counter(), time.process_time()
    result = optimize_pose_graph(initial, edges, fixed=(0,), kernel=kernel, kernel_scale=args.kernel_scale)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    diameter = 2.0 * args.radius
    ate_before = position_ate(initial, truth)
    ate_after = position_ate(result.world_from_node, truth)
    return {
        "nodes": args.nodes,
        "edges": len(edges),
        "loop_edges": sum(e.is_loop for e in edges),
        "kernel": args.kernel,
        "kernel_scale": args.kernel_scale,
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu_seconds, 4),
        "iterations": result.iterations,
        "converged": result.converged,
        "initial_cost": result.initial_cost,
        "final_cost": result.final_cost,
        "ate_before": ate_before,
        "ate_after": ate_after,
        "ate_before_rel": ate_before / diameter,
        "ate_after_rel": ate_after / diameter,
        "min_edge_weight": float(result.edge_weights.min()),
    }
