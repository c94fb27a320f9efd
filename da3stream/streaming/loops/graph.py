"""The pose graph of windows: nodes are windows, edges the sequential alignments and the accepted loops.

Sequential edges carry information derived from their quality record
(depth-relative residual and inlier ratio; gated/fallback alignments weigh
``loop.gated_weight`` as much); loops carry the same from their verification,
times ``loop.loop_weight``. Translational information is whitened with each
window's depth unit (:func:`window_units`, the median depth of its first new
frame), so the graph is invariant to the arbitrary per-window scale
(:func:`~da3stream.alignment.graph_terms.edge_information`). Robust kernel
(``loop.graph_kernel``, width ``loop.huber_delta``) and sparse
Levenberg-Marquardt: :func:`~da3stream.alignment.pose_graph.optimize_pose_graph`.
Each connected component (segments after a hard cut that no loop joins yet)
keeps its first node fixed. After the optimisation a new loop whose robust
weight falls below ``loop.min_graph_weight`` is a graph outlier: the worst one
is dropped and the graph re-optimised without it (:func:`optimise_dropping_outliers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from da3stream.alignment.graph_terms import component_roots, edge_information
from da3stream.alignment.pose_graph import Edge, optimize_pose_graph
from da3stream.config import LoopConfig
from da3stream.io.store.records import LoopEdge
from da3stream.streaming.loops.records import FrameData, SeqEdge

__all__ = ["GraphOutcome", "as_stored", "graph_report", "median_depth", "optimise_dropping_outliers",
           "sequential_edges", "window_units"]

_FETCH_BATCH = 32
"""Stored first frames read per fetch when depth units are missing (after a resume)."""


def as_stored(depth: np.ndarray) -> np.ndarray:
    """Depth as the store keeps it (float16), so units computed live and after a resume agree."""
    return np.asarray(depth, dtype=np.float16).astype(np.float32)


def median_depth(depth: np.ndarray) -> float:
    """Median of the finite positive depths (NaN when there is none)."""
    d = np.asarray(depth, dtype=np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if d.size else float("nan")


def window_units(units: dict, first_row: dict, seq: dict, n_nodes: int,
                 fetch: Callable[[np.ndarray], FrameData]) -> np.ndarray:
    """(C,) median depth of each window's first new frame, in its own chunk units.

    ``units`` (window -> unit) is a cache: units of windows that have a first row
    (``first_row``) but no unit yet are read from the store and written into it.
    A window without a frame of its own carries the previous window's unit through
    the sequential scale (``seq``: window -> :class:`SeqEdge`).
    """
    missing = [c for c in range(n_nodes) if c not in units and c in first_row]
    for a in range(0, len(missing), _FETCH_BATCH):
        part = missing[a : a + _FETCH_BATCH]
        data = fetch(np.array([first_row[c] for c in part], dtype=np.int64))
        for k, c in enumerate(part):
            units[c] = median_depth(as_stored(np.asarray(data.depth[k])))
    out = np.empty(n_nodes)
    for c in range(n_nodes):
        u = units.get(c, float("nan"))
        if not (np.isfinite(u) and u > 0):
            prev = out[c - 1] if c > 0 else 1.0
            s = seq[c].i_from_j.s if c in seq else 1.0
            u = prev / s
        out[c] = u
    return out


def sequential_edges(seq: dict, units: np.ndarray, cfg: LoopConfig) -> list[Edge]:
    """Pose-graph edges ``(j - 1, j)`` of the windows ``0..len(units)-1`` that have a sequential alignment."""
    edges = []
    for j in range(1, units.shape[0]):
        e: SeqEdge = seq.get(j)
        if e is None:
            continue
        w = cfg.gated_weight if e.gated else 1.0
        info = edge_information(e.inlier_ratio, e.residual, units[j], w, sigma_floor=cfg.sigma_floor)
        edges.append(Edge(j - 1, j, e.i_from_j, info))
    return edges


def _loop_edge(L: LoopEdge, units: np.ndarray, cfg: LoopConfig) -> Edge:
    info = edge_information(L.inlier_ratio, L.residual, units[L.chunk_j], cfg.loop_weight, sigma_floor=cfg.sigma_floor)
    return Edge(L.chunk_i, L.chunk_j, L.i_from_j, info, is_loop=True)


@dataclass
class GraphOutcome:
    """Result of :func:`optimise_dropping_outliers`."""

    result: object
    """The last :func:`optimize_pose_graph` result."""
    kept: list
    """Positions (in the new loops) of the loops that stay; empty when every new loop was an outlier."""
    removed: list
    """Positions of the new loops dropped as graph outliers, in the order they were dropped."""
    n_edges: int
    """Edges of the last optimisation."""


def optimise_dropping_outliers(world_from_chunk: list, seq_edges: list[Edge], old_loops: list[LoopEdge],
                               new_loops: list[LoopEdge], units: np.ndarray, cfg: LoopConfig) -> GraphOutcome:
    """Optimise with the accepted loops plus ``new_loops``, dropping the worst new loop while its weight is low."""
    n_nodes = len(world_from_chunk)
    removed: list[int] = []
    kept = list(range(len(new_loops)))
    while True:  # each pass drops one new loop, so this ends
        loops = old_loops + [new_loops[k] for k in kept]
        edges = seq_edges + [_loop_edge(L, units, cfg) for L in loops]
        fixed = component_roots(n_nodes, [(e.i, e.j) for e in edges])
        result = optimize_pose_graph(
            list(world_from_chunk), edges, fixed=fixed, kernel=cfg.graph_kernel, kernel_scale=cfg.huber_delta,
        )
        w_new = result.edge_weights[len(seq_edges) + len(old_loops):]
        worst = int(np.argmin(w_new))
        if not w_new[worst] < cfg.min_graph_weight:
            return GraphOutcome(result, kept, removed, len(edges))
        # Drop only the worst: a gross outlier can drag a good loop's weight down with it.
        removed.append(kept[worst])
        kept = [k for k in kept if k != kept[worst]]
        if not kept:
            return GraphOutcome(result, [], removed, len(edges))


def graph_report(result, n_seq: int, n_loops: int, removed: list[LoopEdge], *, applied: bool) -> dict:
    """The optimisation summary of :attr:`LoopUpdate.graph_report`."""
    return {
        "applied": applied,
        "nodes": len(result.world_from_node),
        "sequential_edges": n_seq,
        "loop_edges": n_loops,
        "iterations": int(result.iterations),
        "initial_cost": float(result.initial_cost),
        "final_cost": float(result.final_cost),
        "converged": bool(result.converged),
        "removed_outliers": [(e.chunk_i, e.chunk_j, e.frame_i, e.frame_j) for e in removed],
    }

