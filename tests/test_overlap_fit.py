"""Frame consensus in the registration (failed sub-blocks) and loop candidates from the trajectory (issue 11)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from da3stream.alignment.lie import so3_exp
from da3stream.alignment.rotation_consensus import agreeing, angles_deg, robust_rotation_mean
from da3stream.alignment.sim3 import Sim3
from da3stream.bench.accuracy import run_one
from da3stream.config import load_config
from da3stream.core.types import Prediction
from da3stream.streaming.loops.nearby import TrajectoryQuery, nearby_candidates
from da3stream.streaming.overlap_fit import register_pair


def test_robust_rotation_mean_ignores_a_failed_block():
    rng = np.random.default_rng(0)
    R0 = so3_exp(np.array([0.3, -0.2, 1.0]))
    Q = np.stack([R0 @ so3_exp(rng.normal(scale=np.radians(0.05), size=3)) for _ in range(20)])
    Q[5:12] = Q[5:12] @ so3_exp(np.radians(np.array([4.0, -4.0, 4.0])))  # 7 frames off by ~7 degrees together
    R, a = robust_rotation_mean(Q)
    assert angles_deg(R0, R[None])[0] < 0.05
    keep = agreeing(a)
    assert not keep[5:12].any() and keep[:5].all() and keep[12:].all()
    plain = np.linalg.svd(Q.sum(0))  # the chordal mean of all is pulled by the block
    U, _, Vt = plain
    assert angles_deg(R0, (U @ Vt)[None])[0] > 1.0


def _pair(n=12, hw=(16, 20), block=slice(3, 7), seed=0):
    """Two predictions of the same frames: B = A moved by a known Sim(3), B's frames ``block`` rotated (failed)."""
    rng = np.random.default_rng(seed)
    K = np.array([[18.0, 0, 9.5], [0, 18.0, 7.5], [0, 0, 1]])
    P = np.tile(np.eye(4), (n, 1, 1))
    P[:, 0, 3] = np.linspace(0, 1.0, n)
    depth = (4.0 + rng.uniform(0, 2, size=(n,) + hw)).astype(np.float32)
    a = Prediction(depth=depth, conf=np.full((n,) + hw, 2.0, np.float32), world_from_cam=P.copy(),
                   intrinsics=np.repeat(K[None], n, 0))
    a_from_b = Sim3(1.7, so3_exp(np.array([0.1, 0.4, -0.2])), np.array([0.5, -1.0, 2.0]))
    b_from_a = a_from_b.inverse()
    Pb = b_from_a.apply_pose(P)
    err = np.eye(4)
    err[:3, :3] = so3_exp(np.radians(np.array([4.0, 4.0, -4.0])))
    Pb[block] = Pb[block] @ err  # the failed block: its cameras AND its points are rotated
    b = Prediction(depth=depth / 1.7, conf=a.conf.copy(), world_from_cam=Pb, intrinsics=a.intrinsics.copy())
    return a, b, a_from_b


@pytest.mark.parametrize("from_cameras", [True, False])
def test_register_pair_leaves_the_failed_block_out(from_cameras):
    a, b, a_from_b = _pair()
    cfg = load_config(None, None).align
    fit = register_pair(a, b, cfg, np.random.default_rng(0), rotation_from_cameras=from_cameras)
    assert not fit.kept_frames[3:7].any() and fit.kept_frames[:3].all() and fit.kept_frames[7:].all()
    T = fit.result.dst_from_src
    assert abs(T.s / a_from_b.s - 1) < 1e-6
    assert angles_deg(a_from_b.R, T.R[None])[0] < 1e-4
    np.testing.assert_allclose(T.t, a_from_b.t, atol=1e-5)


def test_trajectory_candidates_need_time_distance_direction_and_proximity():
    cfg = load_config(None, {"loop": {"exclude_seconds": 10.0}}).loop
    n = 100
    centres = np.zeros((n, 3))
    centres[:, 0] = np.linspace(0, 50, n)
    dirs = np.tile([1.0, 0, 0], (n, 1))
    dirs[60:] = [-1.0, 0, 0]  # the way back looks the other way
    times = np.arange(n) * 0.5
    dists = np.linspace(0, 50, n)
    frames = np.arange(n)
    q = TrajectoryQuery(centres=[[10.2, 0.3, 0], [10.2, 0.3, 0], [49.0, 0, 0]], dirs=[[1, 0, 0], [0, 1, 0], [1, 0, 0]],
                        times=[100.0, 100.0, 50.5], dists=[120.0, 120.0, 50.5], frames=[200, 230, 101], depths=[2.0] * 3,
                        positions=[0, 1, 2])
    cands = nearby_candidates(centres, dirs, times, dists, frames, q, cfg)
    # query 0: same place, same heading, long ago -> the frame at x = 10.2; query 1 looks sideways; query 2 is recent
    assert [(c.query, c.entry) for c in cands] == [(0, int(np.argmin(np.abs(centres[:, 0] - 10.2))))]
    assert np.isnan(cands[0].similarity)


def _args(**kw):
    base = dict(frames=None, max_side=160, chunk_size=60, overlap=20, sim="honest", only_required_fields=False,
                sim_set=[])
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("preset, limit", [("pure_rotation", 0.75), ("aliasing", 0.5)])
def test_engine_beats_da3_streaming_style_on_short_presets(tmp_path, preset, limit):
    """Pinned ratios (engine / the better DA3-Streaming-style variant, same cached predictions, honest simulator,
    seed 0): 0.63 on the pure rotation and 0.33 on the look-alike corridor when measured; the limits leave room for
    BLAS and platform differences, not for a regression to DA3-Streaming's level."""
    out = run_one(preset, 0, _args(), tmp_path)
    r = out["ratios"]["engine_over_best_da3_streaming"]
    assert r <= limit, out["ratios"]
    assert out["methods"]["engine_loops_on"]["false_loops"] == 0
