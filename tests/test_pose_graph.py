"""Sim(3) pose-graph optimisation, and the overlap pose cross-fade used after it."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.lie import exp_sim3, sim3_compose, sim3_exp, sim3_to_parts
from da3stream.alignment.pose_graph import Edge, edge_jacobians, edge_residuals, optimize_pose_graph
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.smoothing import blend_frame_poses, overlap_ramp
from da3stream.alignment.umeyama import umeyama
from da3stream.errors import AlignmentError, ShapeError

SIGMAS = np.array([0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.01])  # [rho, phi, sigma]
INFO = np.diag(1.0 / SIGMAS**2)


def ring(rng, n=60, radius=10.0, loops=((59, 0), (45, 5), (30, 0), (20, 40), (10, 50))):
    """Ground truth on a circle with per-node scale drift, noisy sequential edges, a few loop edges."""
    truth = []
    for k in range(n):
        a = 2 * np.pi * k / n
        R = Rotation.from_rotvec([0.0, -a, 0.0]).as_matrix() @ Rotation.from_rotvec(rng.normal(scale=0.05, size=3)).as_matrix()
        truth.append(Sim3(np.exp(rng.normal(scale=0.3)), R, [radius * np.cos(a), 0.3 * np.sin(3 * a), radius * np.sin(a)]))

    def measure(i, j):
        return truth[i].inverse() @ truth[j] @ exp_sim3(rng.normal(size=7) * SIGMAS)

    edges = [Edge(k, k + 1, measure(k, k + 1), INFO) for k in range(n - 1)]
    edges += [Edge(i, j, measure(i, j), INFO, is_loop=True) for i, j in loops]
    chained = [truth[0]]
    for e in edges[: n - 1]:
        chained.append(chained[-1] @ e.i_from_j)
    return truth, chained, edges


def ate(estimate, truth) -> float:
    est = np.stack([T.t for T in estimate])
    gt = np.stack([T.t for T in truth])
    return float(np.sqrt(np.mean(np.sum((umeyama(est, gt).apply(est) - gt) ** 2, axis=1))))


def log_scale_err(estimate, truth) -> float:
    """Mean absolute log-scale error, up to the global gauge scale."""
    d = np.log([e.s for e in estimate]) - np.log([t.s for t in truth])
    return float(np.mean(np.abs(d - d[0])))


@pytest.mark.parametrize("kernel", [None, "huber", "cauchy"])
def test_ring_recovers_truth_better_than_chaining(rng, kernel):
    truth, chained, edges = ring(rng)
    res = optimize_pose_graph(chained, edges, kernel=kernel, kernel_scale=3.0)
    assert res.converged and res.final_cost < res.initial_cost
    if kernel != "cauchy":  # convex costs: the drifted start reaches the same minimum as a start at the truth
        oracle = optimize_pose_graph(truth, edges, kernel=kernel, kernel_scale=3.0)
        pos = np.stack([T.t for T in res.world_from_node])
        pos_oracle = np.stack([T.t for T in same_gauge(oracle.world_from_node, res.world_from_node)])
        np.testing.assert_allclose(pos, pos_oracle, atol=1e-5)
    ate_chain, ate_opt = ate(chained, truth), ate(res.world_from_node, truth)
    assert ate_opt < 0.5 * ate_chain
    assert ate_opt < 0.15  # ~5 x the per-edge translation noise over a 60-edge ring
    assert log_scale_err(res.world_from_node, truth) < log_scale_err(chained, truth)
    if kernel is None:
        # Residual cost is chi-square with 7 x (edges - free nodes) = 35 dof: fitted to the noise, not beyond.
        assert 35 - 5 * np.sqrt(70) < res.final_cost < 35 + 5 * np.sqrt(70)
    np.testing.assert_array_equal(res.world_from_node[0].matrix(), chained[0].matrix())  # gauge node fixed
    assert res.edge_weights.shape == (len(edges),)


def same_gauge(nodes, reference):
    """Nodes re-expressed in the gauge of ``reference`` (both fix node 0, which may differ)."""
    g = reference[0] @ nodes[0].inverse()
    return [g @ T for T in nodes]


def _with_wrong_loop(rng):
    truth, chained, edges = ring(rng)
    wrong = truth[15].inverse() @ truth[35] @ Sim3(2.0, Rotation.from_rotvec([0, 1.5, 0]).as_matrix(), [5.0, 0, 0])
    return truth, chained, edges + [Edge(15, 35, wrong, INFO, is_loop=True)]


def test_robust_kernel_survives_a_grossly_wrong_loop(rng):
    truth, chained, edges = _with_wrong_loop(rng)
    clean = optimize_pose_graph(chained, edges[:-1], kernel=None)
    plain = optimize_pose_graph(chained, edges, kernel=None)
    ate_clean = ate(clean.world_from_node, truth)
    ate_plain = ate(plain.world_from_node, truth)
    assert ate_plain > 10 * ate_clean  # visibly corrupted without a kernel
    # Cauchy redescends: the wrong edge loses (almost) all influence.
    cauchy = optimize_pose_graph(chained, edges, kernel="cauchy", kernel_scale=3.0)
    assert ate(cauchy.world_from_node, truth) < 1.2 * ate_clean
    assert cauchy.edge_weights[-1] < 1e-3
    # Huber bounds the influence (a constant pull of kernel_scale sigmas): far better than none, not unbiased.
    huber = optimize_pose_graph(chained, edges, kernel="huber", kernel_scale=3.0)
    assert ate(huber.world_from_node, truth) < 0.35 * ate_plain
    assert huber.edge_weights[-1] < 0.05
    for robust in (cauchy, huber):
        assert int(np.argmin(robust.edge_weights)) == len(edges) - 1  # the wrong edge is the most down-weighted


def test_two_node_exact_graph_converges_in_one_step(rng):
    meas = Sim3(2.5, Rotation.from_rotvec([0.3, -1.0, 0.4]).as_matrix(), [1.0, -2.0, 0.5])
    start = [Sim3.identity(), Sim3(0.7, Rotation.from_rotvec([0.0, 0.2, 0.0]).as_matrix(), [0.0, 0.0, 3.0])]
    one = optimize_pose_graph(start, [Edge(0, 1, meas)], kernel=None, max_iters=1)
    assert one.initial_cost > 1.0 and one.final_cost < 1e-6 * one.initial_cost  # one LM step solves it
    np.testing.assert_allclose(one.world_from_node[1].matrix(), meas.matrix(), atol=1e-3)
    res = optimize_pose_graph(start, [Edge(0, 1, meas)], kernel=None)
    assert res.converged and res.iterations <= 3  # the rest only removes the damping's 1e-4 shortfall
    assert res.final_cost < 1e-18
    np.testing.assert_allclose(res.world_from_node[1].matrix(), meas.matrix(), atol=1e-10)


def test_edge_jacobians_match_finite_differences(rng):
    n = 4
    xi = rng.normal(size=(n, 7))
    s, R, t = sim3_exp(xi)
    ii, jj = np.array([0, 2, 3]), np.array([1, 0, 1])
    meas = sim3_exp(rng.normal(size=(3, 7)))
    meas_inv = sim3_to_parts([Sim3(float(a), b, c).inverse() for a, b, c in zip(*meas)])
    r = edge_residuals(s, R, t, ii, jj, meas_inv)
    J_i, J_j = edge_jacobians(s, R, t, ii, jj, r)
    eps = 1e-6
    for node_sel, J in ((ii, J_i), (jj, J_j)):
        for k in range(7):
            d = np.zeros((n, 7))
            num = np.zeros((3, 7))
            for e in range(3):
                for sign in (1.0, -1.0):
                    d[:] = 0.0
                    d[node_sel[e], k] = sign * eps
                    ps, pR, pt = sim3_compose(s, R, t, *sim3_exp(d))
                    num[e] += sign * edge_residuals(ps, pR, pt, ii, jj, meas_inv)[e] / (2 * eps)
            np.testing.assert_allclose(J[:, :, k], num, atol=1e-6)


def test_optimize_pose_graph_rejects_bad_input():
    nodes = [Sim3.identity()] * 3
    e = Edge(0, 1, Sim3.identity())
    with pytest.raises(AlignmentError, match="fixed"):
        optimize_pose_graph(nodes, [e], fixed=())
    with pytest.raises(AlignmentError, match="range"):
        optimize_pose_graph(nodes, [Edge(0, 5, Sim3.identity())])
    with pytest.raises(AlignmentError, match="itself"):
        optimize_pose_graph(nodes, [Edge(1, 1, Sim3.identity())])
    with pytest.raises(AlignmentError, match="information"):
        optimize_pose_graph(nodes, [Edge(0, 1, Sim3.identity(), np.eye(6))])
    with pytest.raises(AlignmentError, match="positive"):
        optimize_pose_graph(nodes, [Edge(0, 1, Sim3.identity(), -np.eye(7))])
    with pytest.raises(AlignmentError, match="kernel"):
        optimize_pose_graph(nodes, [e], kernel="tukey")
    res = optimize_pose_graph(nodes, [])
    assert res.converged and res.iterations == 0


def test_bench_graph_small_run():
    from da3stream.bench import graph

    parser = argparse.ArgumentParser()
    graph.add_arguments(parser)
    out = graph.run(parser.parse_args(["--nodes", "120", "--loops", "8", "--laps", "2"]))
    assert out["nodes"] == 120 and out["loop_edges"] == 8
    assert out["ate_after"] < 0.5 * out["ate_before"]
    assert out["final_cost"] < out["initial_cost"] and out["converged"]


# ---------------------------------------------------------------- overlap cross-fade


def _rigid(rng, k):
    P = np.tile(np.eye(4), (k, 1, 1))
    P[:, :3, :3] = Rotation.random(k, random_state=int(rng.integers(1 << 31))).as_matrix()
    P[:, :3, 3] = rng.normal(size=(k, 3))
    return P


def test_blend_endpoints_and_validity(rng):
    A, B = _rigid(rng, 6), _rigid(rng, 6)
    np.testing.assert_array_equal(blend_frame_poses(A, B, np.zeros(6)), A)
    np.testing.assert_array_equal(blend_frame_poses(A, B, np.ones(6)), B)
    w = overlap_ramp(6)
    out = blend_frame_poses(A, B, w)
    Rm = out[:, :3, :3]
    np.testing.assert_allclose(Rm @ np.swapaxes(Rm, 1, 2), np.broadcast_to(np.eye(3), Rm.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(Rm), 1.0, atol=1e-12)
    np.testing.assert_array_equal(out[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (6, 4)))
    np.testing.assert_allclose(out[:, :3, 3], (1 - w)[:, None] * A[:, :3, 3] + w[:, None] * B[:, :3, 3], atol=1e-12)
    # SLERP: the rotation moves the weighted fraction of the geodesic angle from A towards B.
    ang_ab = Rotation.from_matrix(np.swapaxes(A[:, :3, :3], 1, 2) @ B[:, :3, :3]).magnitude()
    ang_a = Rotation.from_matrix(np.swapaxes(A[:, :3, :3], 1, 2) @ Rm).magnitude()
    ang_b = Rotation.from_matrix(np.swapaxes(Rm, 1, 2) @ B[:, :3, :3]).magnitude()
    np.testing.assert_allclose(ang_a, w * ang_ab, atol=1e-9)
    np.testing.assert_allclose(ang_b, (1 - w) * ang_ab, atol=1e-9)


def test_blend_rejects_bad_input(rng):
    A, B = _rigid(rng, 3), _rigid(rng, 3)
    with pytest.raises(AlignmentError):
        blend_frame_poses(A, B, np.array([0.0, 0.5, 1.5]))
    with pytest.raises(ShapeError):
        blend_frame_poses(A, B[:2], np.zeros(3))
    np.testing.assert_allclose(overlap_ramp(3), [0.25, 0.5, 0.75])
