"""The Sim(3) pose graph of :mod:`da3stream.alignment.pose_graph` solved by gtsam (batch LM and iSAM2).

gtsam is an optional dependency (``pip install gtsam==4.3.0``, in the ``dev``
extras); it is imported when a function here runs, and a missing gtsam raises
:class:`~da3stream.errors.AlignmentError`.

Same inputs and :class:`~da3stream.alignment.pose_graph.GraphResult` as
:func:`~da3stream.alignment.pose_graph.optimize_pose_graph`; the reported
costs and edge weights are the project's own robust cost evaluated on the
result, so both back ends are compared on one number.

Conventions, checked numerically against :mod:`da3stream.alignment.lie`
(tests/test_pose_graph_gtsam.py pins them):

* ``gtsam.Similarity3(R, t_g, s)`` maps ``x -> s (R x + t_g)``; the project's
  ``Sim3(s, R, t)`` maps ``x -> s R x + t``, so ``t_g = t / s``. Composition,
  inverse and action then agree to 1e-16.
* gtsam's tangent is ``[phi(3), rho(3), sigma]`` where the project's is
  ``[rho(3), phi(3), sigma]``: gtsam's 4x4 group matrix is ``[[R, t_g], [0, 1/s]]``,
  ``1/s`` times the project's ``[[s R, t], [0, 1]]``, so the Lie algebras differ by
  ``sigma I`` and ``Similarity3.Expmap`` / ``Logmap`` equal the project's maps
  after the permutation, to 1e-15. ``retract`` is the right perturbation
  ``T exp(d)``, and ``BetweenFactor``'s error ``log(meas^-1 T_i^-1 T_j)`` is the
  project's residual permuted: the information maps as ``Omega[p][:, p]``.
* gtsam's factor error is ``0.5 chi2`` and its Huber / Cauchy losses are half
  the project's ``rho`` on the whitened norm, with the same IRLS weights, so the
  minimisers agree.
* gtsam 4.3's ``BetweenFactorSimilarity3`` Jacobians are first order: they
  differ from central differences by about the size of the residual (0.005 at
  residual 0.003, 0.6 at 0.3). Steps are accepted on the exact cost, so LM
  still descends; the optimum it stops at can differ slightly from the exact one.

Measured 2026-12-04, gtsam 4.3.0, Huber width 3.0 (``loop.huber_delta``), on 2
CPU cores shared with other jobs (load average 3 to 12), so wall times run up
to twice the CPU times; both are given. ``python -m da3stream.bench graph``:

Batch, from the chained (drifting) start; cost is the project's robust cost on
each result, relative difference to ``own`` in brackets; ATE in world units::

    --backend all                                   (1,000 nodes, 50 loops)
      own     0.27 s wall  0.17 s cpu   8 iters  361.93442            ATE 0.30430
      gtsam   0.40         0.18         9        361.93464 (+5.8e-7)      0.30435
      isam2   1.23         0.82      1000 upd    361.97262 (+1.1e-4)      0.30437
    --nodes 10000 --loops 500 --backend own / gtsam
      own     9.33         3.58        14        3505.6767                0.75808
      gtsam   5.44         2.03        13        3505.6801 (+9.5e-7)      0.75822
    --nodes 100000 --loops 5000 --backend own / gtsam   (peak RSS 2.05 / 1.15 GB)
      own     178          105         30        34709.281                2.05563
      gtsam   100           58         31        34709.314 (+9.6e-7)      2.05690

Per window, an online run: one node per window, every 10th window a loop to
the same place one lap (1,000 nodes) back; ``own`` / ``gtsam`` chain the new node
(5e-5 s) and re-solve the whole graph on loop windows, warm-started (what the
engine does), ``isam2`` runs one update per window::

    --per-window --backend all --nodes 100000 --laps 100 --loop-every 10
      --own-sizes 10000,30000,100000 --isam2-nodes 10000   (11 min 36 s wall, 2.2 GB peak RSS)
                   loop window s (wall / cpu)  iters   mean per window s   ATE
      own  10,000     4.44 / 2.26                8       0.44             0.4319
           30,000     8.43 / 6.28                6       0.84             0.2879
          100,000    37.0 / 22.1                 4       3.70             0.1415
    --per-window --backend gtsam (same problem) --own-sizes 10000,100000   (2 min 56 s, 1.3 GB)
      gtsam 10,000    5.09 / 1.29                7       0.51             0.4317
           100,000   30.6 / 14.1                 6       3.06             0.1415
      isam2, streamed to 10,000 nodes (450 s wall, 233 s cpu for all 9,999 windows):
        mean per window by 1,000-node bin from 1,000 on: 0.015 0.023 0.028 0.045 0.045
          0.063 0.065 0.077 0.090 s (linear in the graph size);
        windows 9,000-10,000: all 0.090 mean / 0.379 p95; loop windows 0.049 / 0.124;
          other windows 0.094 / 0.402 (relinearising the nodes a loop moved)
        at 10,000 nodes: cost 6334.56 (+8.3e-4 against own's 6329.31), ATE 0.4327
        extrapolated to 100,000 (line over windows 5,000-10,000): 1.12 s mean per window,
          loop windows 0.50 s, other windows 1.19 s

Reading: gtsam's LM reaches the same optimum to ~1e-6 in cost and 0.1 % in
ATE, never below the own LM's cost; iSAM2 ends 1e-4 to 1e-3 above it at
relinearisation threshold 0.01 (0.9 % on ``--per-window --backend all --nodes
2000``: 4 laps of 500). A gtsam LM solve takes about 0.6x the own LM's CPU
time (14 against 22 CPU s for the warm 100,000-node re-solve, 58 against 105
from the cold start). At 100,000 nodes with a loop every 10 windows, iSAM2
costs about 3x less per window on average than re-solving on loop windows
(extrapolated 1.1 s wall, ~0.6 CPU s, against a measured 3.7 s wall, 2.2 CPU s,
for the own LM and 3.1 s, 1.4 CPU s, for gtsam's LM), and spreads the work (p95
about 4x its mean instead of one 30-37 s stall per loop window). The engine's
graph has one node per window: an hour of 30 fps video is 1,350-2,700 windows
of 40 new frames, where a re-solve takes 0.3 CPU s (2,000 nodes: 0.32 CPU s,
0.84 s wall) and only on loop windows, so the engine keeps its own LM; iSAM2
is the candidate for a frame-level graph (100,000 nodes is an hour of frames).
"""

from __future__ import annotations

import logging

import numpy as np

from da3stream.alignment.pose_graph import (
    Edge,
    GraphResult,
    _check_options,
    _information_stack,
    _robust_cost,
    edge_residuals,
    robust_weights,
)
from da3stream.alignment.lie import sim3_inverse, sim3_to_parts
from da3stream.alignment.sim3 import Sim3
from da3stream.errors import AlignmentError

log = logging.getLogger(__name__)

__all__ = ["IncrementalPoseGraph", "graph_cost", "information_to_gtsam", "optimize_pose_graph_gtsam",
           "sim3_from_gtsam", "sim3_to_gtsam"]

GTSAM_FROM_OWN = np.array([3, 4, 5, 0, 1, 2, 6])
"""Index k of gtsam's Similarity3 tangent holds index ``GTSAM_FROM_OWN[k]`` of the project's tangent."""


def _gtsam():
    try:
        import gtsam
    except ImportError as exc:
        raise AlignmentError(
            "pose graph backend gtsam: the gtsam package is not installed (pip install gtsam==4.3.0)") from exc
    return gtsam


def sim3_to_gtsam(T: Sim3):
    """The ``gtsam.Similarity3`` of a :class:`Sim3` (translation divided by the scale, see the module doc)."""
    gtsam = _gtsam()
    return gtsam.Similarity3(gtsam.Rot3(T.R), np.asarray(T.t / T.s, dtype=np.float64), T.s)


def sim3_from_gtsam(g) -> Sim3:
    """The :class:`Sim3` of a ``gtsam.Similarity3``."""
    s = float(g.scale())
    return Sim3(s, g.rotation().matrix(), np.asarray(g.translation(), dtype=np.float64) * s)


def information_to_gtsam(information: np.ndarray) -> np.ndarray:
    """(7, 7) information in the project's ``[rho, phi, sigma]`` order -> gtsam's ``[phi, rho, sigma]``."""
    p = GTSAM_FROM_OWN
    return np.asarray(information, dtype=np.float64)[np.ix_(p, p)]


def graph_cost(world_from_node: list[Sim3], edges: list[Edge], info: np.ndarray, kernel: str | None,
               kernel_scale: float) -> tuple[float, np.ndarray]:
    """The project's robust cost of a graph and its IRLS weights per edge, ``(cost, (E,) weights)``."""
    if not edges:
        return 0.0, np.zeros(0)
    s, R, t = sim3_to_parts(world_from_node)
    ii = np.array([e.i for e in edges], dtype=np.int64)
    jj = np.array([e.j for e in edges], dtype=np.int64)
    meas_inv = sim3_inverse(*sim3_to_parts([e.i_from_j for e in edges]))
    r = edge_residuals(s, R, t, ii, jj, meas_inv)
    chi2 = np.einsum("ei,eij,ej->e", r, info, r)
    return _robust_cost(chi2, kernel, kernel_scale), robust_weights(chi2, kernel, kernel_scale)


class _Factors:
    """Builds gtsam factors of project edges, sharing one noise model per distinct information."""

    def __init__(self, gtsam, kernel: str | None, kernel_scale: float):
        self.gtsam, self.kernel, self.kernel_scale = gtsam, kernel, kernel_scale
        self._models: dict = {}

    def noise_model(self, info_own: np.ndarray):
        key = info_own.tobytes()
        if key not in self._models:
            nm = self.gtsam.noiseModel
            info = information_to_gtsam(info_own)
            d = np.diag(info).copy()
            if np.all(d > 0) and not np.any(info - np.diag(d)):
                base = nm.Diagonal.Precisions(d)
            else:  # full or semi-definite: a symmetric square root, Omega = S^T S
                w, V = np.linalg.eigh(info)
                base = nm.Gaussian.SqrtInformation(np.sqrt(np.clip(w, 0.0, None))[:, None] * V.T, False)
            if self.kernel == "huber":
                base = nm.Robust.Create(nm.mEstimator.Huber.Create(self.kernel_scale), base)
            elif self.kernel == "cauchy":
                base = nm.Robust.Create(nm.mEstimator.Cauchy.Create(self.kernel_scale), base)
            self._models[key] = base
        return self._models[key]

    def between(self, edge: Edge, info_own: np.ndarray):
        return self.gtsam.BetweenFactorSimilarity3(edge.i, edge.j, sim3_to_gtsam(edge.i_from_j),
                                                   self.noise_model(info_own))

    def fixed(self, k: int, value):
        return self.gtsam.NonlinearEqualitySimilarity3(k, value)


def _check_edges(n: int, edges: list[Edge], name: str) -> None:
    for e in edges:
        if not (0 <= e.i < n and 0 <= e.j < n):
            raise AlignmentError(f"{name}: edge node index out of range [0, {n})")
        if e.i == e.j:
            raise AlignmentError(f"{name}: an edge connects a node to itself")


def optimize_pose_graph_gtsam(
    world_from_node: list[Sim3],
    edges: list[Edge],
    *,
    fixed=(0,),
    kernel: str | None = "huber",
    kernel_scale: float = 1.0,
    max_iters: int = 100,
    tol: float = 1e-10,
    lambda_init: float = 1e-4,
) -> GraphResult:
    """:func:`~da3stream.alignment.pose_graph.optimize_pose_graph` solved by gtsam's Levenberg-Marquardt.

    Fixed nodes are ``NonlinearEquality`` constraints; nodes that no edge touches
    keep their value. LM uses Marquardt (diagonal) damping from ``lambda_init``
    and stops at ``max_iters`` iterations or a relative cost decrease below ``tol``.
    ``iterations`` counts gtsam's outer iterations; costs and weights are the
    project's (:func:`graph_cost`).

    Raises:
        AlignmentError: gtsam missing, bad indices, no fixed node, invalid information or kernel.
    """
    n = len(world_from_node)
    fixed_idx = _check_options(n, fixed, kernel, kernel_scale)
    if not edges:
        return GraphResult(list(world_from_node), 0, 0.0, 0.0, True, np.zeros(0))
    _check_edges(n, edges, "optimize_pose_graph_gtsam")
    info = _information_stack(edges)
    gtsam = _gtsam()
    initial_cost, _ = graph_cost(world_from_node, edges, info, kernel, kernel_scale)
    factors = _Factors(gtsam, kernel, kernel_scale)
    graph = gtsam.NonlinearFactorGraph()
    values = gtsam.Values()
    used = sorted({e.i for e in edges} | {e.j for e in edges})
    for k in used:
        values.insert(k, sim3_to_gtsam(world_from_node[k]))
    for k in sorted(set(fixed_idx) & set(used)):
        graph.add(factors.fixed(k, values.atSimilarity3(k)))
    for e, edge in enumerate(edges):
        graph.add(factors.between(edge, info[e]))
    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(max_iters)
    params.setRelativeErrorTol(tol)
    params.setAbsoluteErrorTol(0.0)
    params.setlambdaInitial(lambda_init)
    params.setDiagonalDamping(True)
    optimizer = gtsam.LevenbergMarquardtOptimizer(graph, values, params)
    estimate = optimizer.optimize()
    out = list(world_from_node)
    for k in used:
        out[k] = sim3_from_gtsam(estimate.atSimilarity3(k))
    final_cost, weights = graph_cost(out, edges, info, kernel, kernel_scale)
    iterations = int(optimizer.iterations())
    log.debug("gtsam pose graph: %d nodes, %d edges, cost %.4g -> %.4g in %d iterations",
              n, len(edges), initial_cost, final_cost, iterations)
    return GraphResult(out, iterations, initial_cost, final_cost, iterations < max_iters, weights)


class IncrementalPoseGraph:
    """An online Sim(3) pose graph on gtsam's iSAM2: one node and its sequential edge per window.

    Node 0 (``world_from_first``) is fixed. :meth:`add_window` adds node ``n``
    with the edge ``(n - 1, n)``, initialised by chaining it onto the current
    estimate of node ``n - 1``, plus the loop edges that arrived with it, and
    runs one iSAM2 update. Nodes are keyed by their index.
    """

    def __init__(self, world_from_first: Sim3, *, kernel: str | None = "huber", kernel_scale: float = 1.0,
                 relinearize_threshold: float = 0.01, relinearize_skip: int = 1):
        """``relinearize_threshold``: tangent change that triggers relinearising a node; ``relinearize_skip``:
        updates between relinearisation checks (gtsam's ``ISAM2Params``)."""
        _check_options(1, (0,), kernel, kernel_scale)
        gtsam = _gtsam()
        self._gtsam = gtsam
        self._factors = _Factors(gtsam, kernel, kernel_scale)
        self.kernel, self.kernel_scale = kernel, kernel_scale
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(relinearize_threshold)
        params.relinearizeSkip = relinearize_skip
        self._isam = gtsam.ISAM2(params)
        first = sim3_to_gtsam(world_from_first)
        graph = gtsam.NonlinearFactorGraph()
        graph.add(self._factors.fixed(0, first))
        values = gtsam.Values()
        values.insert(0, first)
        self._isam.update(graph, values)
        self._last = first
        self._initial = [world_from_first]
        self._edges: list[Edge] = []
        self._info: list[np.ndarray] = []
        self.updates = 1
        """iSAM2 updates run so far."""

    @property
    def n_nodes(self) -> int:
        return len(self._initial)

    def add_window(self, seq_edge: Edge, loop_edges: tuple = ()) -> None:
        """Add node ``n_nodes`` by ``seq_edge`` (``i = n_nodes - 1``, ``j = n_nodes``) and its loops, then update."""
        n = self.n_nodes
        if (seq_edge.i, seq_edge.j) != (n - 1, n):
            raise AlignmentError(f"IncrementalPoseGraph: the sequential edge must be ({n - 1}, {n}), "
                                 f"got ({seq_edge.i}, {seq_edge.j})")
        new_edges = [seq_edge, *loop_edges]
        _check_edges(n + 1, new_edges, "IncrementalPoseGraph")
        info = _information_stack(new_edges)
        world_from_new = self._last * sim3_to_gtsam(seq_edge.i_from_j)
        graph = self._gtsam.NonlinearFactorGraph()
        for e, edge in enumerate(new_edges):
            graph.add(self._factors.between(edge, info[e]))
        values = self._gtsam.Values()
        values.insert(n, world_from_new)
        self._isam.update(graph, values)
        self.updates += 1
        self._last = self._isam.calculateEstimateSimilarity3(n)
        self._initial.append(sim3_from_gtsam(world_from_new))
        self._edges.extend(new_edges)
        self._info.extend(info)

    def refine(self, updates: int) -> None:
        """Run ``updates`` more iSAM2 updates without new factors (relinearisation and back-substitution)."""
        for _ in range(updates):
            self._isam.update()
            self.updates += 1
        self._last = self._isam.calculateEstimateSimilarity3(self.n_nodes - 1)

    def estimate(self) -> list[Sim3]:
        """Current ``world_from_node`` of every node."""
        values = self._isam.calculateEstimate()
        return [sim3_from_gtsam(values.atSimilarity3(k)) for k in range(self.n_nodes)]

    def result(self) -> GraphResult:
        """The current estimate as a :class:`GraphResult` (project costs; ``iterations`` = iSAM2 updates)."""
        nodes = self.estimate()
        info = np.stack(self._info) if self._info else np.zeros((0, 7, 7))
        initial_cost, _ = graph_cost(self._initial, self._edges, info, self.kernel, self.kernel_scale)
        final_cost, weights = graph_cost(nodes, self._edges, info, self.kernel, self.kernel_scale)
        return GraphResult(nodes, self.updates, initial_cost, final_cost, True, weights)
