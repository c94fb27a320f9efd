"""The gtsam back end of the Sim(3) pose graph agrees with the project's sparse LM."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest

from da3stream.alignment.lie import exp_sim3
from da3stream.alignment.pose_graph import Edge, optimize_pose_graph
from da3stream.alignment.pose_graph_gtsam import (
    IncrementalPoseGraph,
    graph_cost,
    information_to_gtsam,
    optimize_pose_graph_gtsam,
    sim3_from_gtsam,
    sim3_to_gtsam,
)
from da3stream.alignment.sim3 import Sim3
from da3stream.errors import AlignmentError
from tests.test_pose_graph import INFO, ate, ring


@pytest.fixture
def gtsam():
    return pytest.importorskip("gtsam")


def _positions(nodes) -> np.ndarray:
    return np.stack([T.t for T in nodes])


def _max_node_diff(a, b) -> float:
    return max(float(np.abs(x.matrix() - y.matrix()).max()) for x, y in zip(a, b))


def test_conventions_match_lie(gtsam, rng):
    for _ in range(5):
        T, U = exp_sim3(rng.normal(size=7)), exp_sim3(rng.normal(size=7))
        g = sim3_to_gtsam(T)
        np.testing.assert_allclose(sim3_from_gtsam(g).matrix(), T.matrix(), atol=1e-12)
        p = rng.normal(size=3)
        np.testing.assert_allclose(np.asarray(g.transformFrom(p)), T.apply(p[None])[0], atol=1e-12)
        np.testing.assert_allclose(sim3_from_gtsam(g * sim3_to_gtsam(U)).matrix(), (T @ U).matrix(), atol=1e-12)
        # Tangent [rho, phi, sigma] here is [phi, rho, sigma] in gtsam; retract is the right perturbation.
        xi = rng.normal(size=7)
        xi_g = xi[[3, 4, 5, 0, 1, 2, 6]]
        np.testing.assert_allclose(sim3_from_gtsam(gtsam.Similarity3.Expmap(xi_g)).matrix(), exp_sim3(xi).matrix(),
                                   atol=1e-12)
        d = 0.1 * rng.normal(size=7)
        np.testing.assert_allclose(sim3_from_gtsam(g.retract(d[[3, 4, 5, 0, 1, 2, 6]])).matrix(),
                                   (T @ exp_sim3(d)).matrix(), atol=1e-12)


@pytest.mark.parametrize("kernel", [None, "huber", "cauchy"])
def test_factor_error_is_half_the_own_cost(gtsam, rng, kernel):
    """A full (non-diagonal) information and each kernel give gtsam error = own cost / 2 on the same values."""
    truth, chained, edges = ring(rng, n=12, loops=((11, 0), (3, 8)))
    A = rng.normal(size=(7, 7))
    info = A @ A.T + 7.0 * np.eye(7)
    edges = [Edge(e.i, e.j, e.i_from_j, info * (1 + k), e.is_loop) for k, e in enumerate(edges)]
    # Drifted values so residuals span both Huber branches.
    nodes = [T @ exp_sim3(0.3 * rng.normal(size=7)) for T in chained]
    from da3stream.alignment.pose_graph_gtsam import _Factors

    factors = _Factors(gtsam, kernel, 2.0)
    graph = gtsam.NonlinearFactorGraph()
    values = gtsam.Values()
    for k, T in enumerate(nodes):
        values.insert(k, sim3_to_gtsam(T))
    for e in edges:
        graph.add(factors.between(e, e.information))
    stack = np.stack([e.information for e in edges])
    own, _ = graph_cost(nodes, edges, stack, kernel, 2.0)
    assert 2.0 * graph.error(values) == pytest.approx(own, rel=1e-10)
    np.testing.assert_array_equal(information_to_gtsam(info)[3:6, 3:6], info[:3, :3])


def test_noise_free_graph_reaches_truth_in_both(gtsam, rng):
    truth, _, _ = ring(rng, n=40, loops=((39, 0), (10, 30)))
    edges = [Edge(k, k + 1, truth[k].inverse() @ truth[k + 1], INFO) for k in range(39)]
    edges += [Edge(i, j, truth[i].inverse() @ truth[j], INFO, is_loop=True) for i, j in ((39, 0), (10, 30))]
    start = [truth[0]] + [T @ exp_sim3(0.05 * rng.normal(size=7)) for T in truth[1:]]
    for solve in (optimize_pose_graph, optimize_pose_graph_gtsam):
        res = solve(start, edges, kernel="huber", kernel_scale=3.0)
        assert res.converged and res.final_cost < 1e-12
        assert _max_node_diff(res.world_from_node, truth) < 1e-7


@pytest.mark.parametrize("kernel", [None, "huber"])
def test_noisy_graph_same_optimum(gtsam, rng, kernel):
    truth, chained, edges = ring(rng)
    own = optimize_pose_graph(chained, edges, kernel=kernel, kernel_scale=3.0)
    gt = optimize_pose_graph_gtsam(chained, edges, kernel=kernel, kernel_scale=3.0)
    assert own.converged and gt.converged
    assert gt.initial_cost == pytest.approx(own.initial_cost, rel=1e-12)
    # gtsam's Similarity3 Jacobians are first order, so it stops a hair above the exact minimum.
    assert own.final_cost <= gt.final_cost * (1 + 1e-9)
    assert gt.final_cost == pytest.approx(own.final_cost, rel=1e-5)
    np.testing.assert_allclose(_positions(gt.world_from_node), _positions(own.world_from_node), atol=2e-3)
    assert ate(gt.world_from_node, truth) == pytest.approx(ate(own.world_from_node, truth), rel=1e-3)
    assert ate(own.world_from_node, truth) < 0.5 * ate(chained, truth)
    # Started at the own optimum, gtsam finds nothing lower.
    again = optimize_pose_graph_gtsam(own.world_from_node, edges, kernel=kernel, kernel_scale=3.0)
    assert again.final_cost >= own.final_cost * (1 - 1e-9)


def test_outlier_loop_is_downweighted_in_both(gtsam, rng):
    truth, chained, edges = ring(rng)
    bad = Edge(15, 45, truth[15].inverse() @ truth[45] @ exp_sim3(np.r_[3.0, -2.0, 1.0, 0.4, 0.0, 0.2, 0.3]),
               INFO, is_loop=True)
    clean = optimize_pose_graph(chained, edges, kernel="huber", kernel_scale=3.0)
    weights = []
    for solve in (optimize_pose_graph, optimize_pose_graph_gtsam):
        plain = solve(chained, edges + [bad], kernel=None)
        robust = solve(chained, edges + [bad], kernel="huber", kernel_scale=3.0)
        weights.append(robust.edge_weights[-1])
        assert robust.edge_weights[-1] < 0.1
        assert robust.edge_weights[:-1].min() > 0.3
        assert ate(robust.world_from_node, truth) < 1.5 * ate(clean.world_from_node, truth)
        assert ate(plain.world_from_node, truth) > 2.0 * ate(robust.world_from_node, truth)
    assert weights[1] == pytest.approx(weights[0], rel=1e-3)


def test_isam2_stream_matches_batch(gtsam, rng):
    truth, chained, edges = ring(rng)
    n = len(truth)
    loops_at: dict = {}
    for e in edges[n - 1 :]:
        loops_at.setdefault(max(e.i, e.j), []).append(e)
    inc = IncrementalPoseGraph(chained[0], kernel="huber", kernel_scale=3.0, relinearize_threshold=1e-4)
    for e in edges[: n - 1]:
        inc.add_window(e, tuple(loops_at.get(e.j, ())))
    inc.refine(3)
    res = inc.result()
    batch = optimize_pose_graph(chained, edges, kernel="huber", kernel_scale=3.0)
    assert res.iterations == n + 3 and inc.n_nodes == n
    assert res.final_cost < 0.1 * res.initial_cost
    assert res.final_cost == pytest.approx(batch.final_cost, rel=1e-4)
    np.testing.assert_allclose(_positions(res.world_from_node), _positions(batch.world_from_node), atol=5e-3)
    with pytest.raises(AlignmentError, match="sequential edge"):
        inc.add_window(Edge(3, 4, Sim3.identity()))


def test_bad_input_is_rejected(gtsam):
    nodes = [Sim3.identity(), Sim3.identity()]
    with pytest.raises(AlignmentError, match="out of range"):
        optimize_pose_graph_gtsam(nodes, [Edge(0, 2, Sim3.identity())])
    with pytest.raises(AlignmentError, match="fixed"):
        optimize_pose_graph_gtsam(nodes, [Edge(0, 1, Sim3.identity())], fixed=())
    with pytest.raises(AlignmentError, match="kernel"):
        optimize_pose_graph_gtsam(nodes, [Edge(0, 1, Sim3.identity())], kernel="tukey")
    assert optimize_pose_graph_gtsam(nodes, []).iterations == 0


def test_missing_gtsam_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gtsam", None)  # makes `import gtsam` raise ImportError
    nodes = [Sim3.identity(), Sim3.identity()]
    with pytest.raises(AlignmentError, match="gtsam package is not installed") as info:
        optimize_pose_graph_gtsam(nodes, [Edge(0, 1, Sim3.identity())])
    assert "\n" not in str(info.value)
    with pytest.raises(AlignmentError, match="not installed"):
        IncrementalPoseGraph(Sim3.identity())


def _bench_args(argv):
    from da3stream.bench import graph

    parser = argparse.ArgumentParser()
    graph.add_arguments(parser)
    return graph, parser.parse_args(argv)


def test_bench_graph_all_backends(gtsam):
    graph, args = _bench_args(["--nodes", "120", "--loops", "8", "--laps", "2", "--backend", "all"])
    out = graph.run(args)
    assert set(out["backends"]) == {"own", "gtsam", "isam2"}
    for name, rep in out["backends"].items():
        assert rep["ate_after"] < 0.5 * out["ate_before"], name
        assert rep["final_cost"] < out["initial_cost"], name
    assert abs(out["backends"]["gtsam"]["final_cost_rel_vs_own"]) < 1e-4


def test_bench_graph_per_window(gtsam):
    graph, args = _bench_args(["--per-window", "--backend", "all", "--nodes", "200", "--laps", "2",
                               "--loop-every", "10", "--own-sizes", "150,200"])
    out = graph.run(args)
    own, isam2 = out["backends"]["own"], out["backends"]["isam2"]
    assert [s["nodes"] for s in own["sizes"]] == [150, 200]
    for a, b in zip(own["sizes"], out["backends"]["gtsam"]["sizes"]):
        assert b["final_cost"] == pytest.approx(a["final_cost"], rel=1e-4)
    assert isam2["all_windows"]["count"] == 199 and isam2["loop_windows"]["count"] == out["loop_windows"] == 10
    # iSAM2 relinearises only nodes that moved by more than its threshold: it ends near, not at, the optimum.
    assert 0.0 < isam2["final_cost_rel_vs_own"] < 0.2
    assert isam2["ate"] < 1.5 * own["sizes"][-1]["ate"]


def test_bench_graph_per_window_extrapolates_a_short_stream(gtsam):
    graph, args = _bench_args(["--per-window", "--backend", "isam2", "--nodes", "300", "--laps", "3",
                               "--loop-every", "5", "--isam2-nodes", "250"])
    rep = graph.run(args)["backends"]["isam2"]
    assert rep["streamed_nodes"] == 250 and rep["extrapolated_to_nodes"] == 300
    assert rep["extrapolated_all_windows_mean_s"] > 0 and len(rep["by_size"]) == 10
    assert sum(b["windows"][1] - b["windows"][0] for b in rep["by_size"]) == 249
