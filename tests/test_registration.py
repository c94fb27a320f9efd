"""Robust registration, pose-based estimates, quality gates and overlap correspondences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.alignment.points import sample_correspondences, unproject_depth
from da3stream.alignment.registration import (
    RegistrationResult,
    pose_based_estimate,
    quality_gate,
    register,
    transform_disagreement,
)
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.config import AlignConfig
from da3stream.errors import AlignmentError, ShapeError

CFG = AlignConfig()
REG_KW = dict(
    kernel_scale=CFG.kernel_scale,
    inlier_threshold=CFG.inlier_threshold,
    irls_iters=CFG.irls_iters,
    min_points=CFG.min_points,
)
GATE_KW = dict(
    min_inlier_ratio=CFG.min_inlier_ratio,
    max_residual=CFG.max_residual,
    scale_range=CFG.scale_range,
    max_pose_disagreement=CFG.max_pose_disagreement,
)


def random_sim3(rng, scale_range=(0.1, 10.0)) -> Sim3:
    s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    return Sim3(s, Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix(), rng.normal(size=3) * 3)


def rot_err_deg(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.degrees(Rotation.from_matrix(A @ B.T).magnitude()))


def make_pairs(rng, dst_from_src: Sim3, m=3000, noise=0.003, outlier_frac=0.3):
    """Points in front of a destination camera at the origin; src = T^-1(dst); noise relative to depth."""
    dst_true = np.c_[rng.uniform(-5, 5, (m, 2)), rng.uniform(2, 30, m)]
    depth = dst_true[:, 2].copy()
    src = dst_from_src.inverse().apply(dst_true)
    dst = dst_true + rng.normal(size=(m, 3)) * noise * depth[:, None]
    out = rng.random(m) < outlier_frac
    dst[out] += rng.normal(size=(int(out.sum()), 3)) * depth[out, None] * 0.5
    weight = rng.uniform(1.0, 3.0, m)
    return dst, src, weight, depth, out


# ---------------------------------------------------------------- register


@pytest.mark.parametrize("kernel", ["huber", "cauchy", "tukey"])
@pytest.mark.parametrize("seed", range(4))
def test_register_recovers_sim3_with_30pct_outliers(seed, kernel):
    rng = np.random.default_rng(seed)
    T = random_sim3(rng)
    dst, src, w, depth, out = make_pairs(rng, T)
    res = register(dst, src, w, depth, mode="sim3", kernel=kernel, **REG_KW)
    E = res.dst_from_src
    assert abs(np.log(E.s / T.s)) < 5e-4
    assert rot_err_deg(E.R, T.R) < 0.05
    # Compare where it matters: on the points, relative to depth.
    dst_true = T.apply(src)
    assert np.max(np.linalg.norm(E.apply(src) - dst_true, axis=1) / depth) < 2e-3
    assert res.inlier_ratio == pytest.approx(1.0 - out.mean(), abs=0.03)
    assert res.residual_median < 0.02
    assert res.n_points == len(src) and res.converged
    wide = {**GATE_KW, "scale_range": (0.05, 20.0)}  # the truth's scale spans 0.1..10
    assert quality_gate(res, None, **wide) == (True, "")


def test_register_plain_least_squares_fails_on_the_same_data(rng):
    """Guard against a vacuous outlier test: without robustness the same data gives a visibly wrong estimate."""
    T = random_sim3(rng)
    dst, src, w, depth, _ = make_pairs(rng, T)
    E = umeyama(src, dst, w / depth**2)
    assert np.max(np.linalg.norm(E.apply(src) - T.apply(src), axis=1) / depth) > 1e-2


def test_register_se3_mode_recovers_rigid(rng):
    T = random_sim3(rng)
    rigid = Sim3(1.0, T.R, T.t)
    dst, src, w, depth, _ = make_pairs(rng, rigid, outlier_frac=0.2)
    res = register(dst, src, w, depth, mode="se3", kernel="huber", **REG_KW)
    assert res.dst_from_src.s == 1.0
    assert rot_err_deg(res.dst_from_src.R, rigid.R) < 0.05
    np.testing.assert_allclose(res.dst_from_src.t, rigid.t, atol=0.02)
    # On scaled data se3 keeps s = 1 and the gate sees the misfit.
    scaled = Sim3(2.0, T.R, T.t)
    dst2, src2, w2, depth2, _ = make_pairs(rng, scaled, outlier_frac=0.0)
    res2 = register(dst2, src2, w2, depth2, mode="se3", kernel="huber", **REG_KW)
    assert res2.dst_from_src.s == 1.0
    assert not quality_gate(res2, None, **GATE_KW)[0]


def test_register_scale_mode_keeps_init_rotation(rng):
    T = random_sim3(rng)
    dst, src, w, depth, _ = make_pairs(rng, T, outlier_frac=0.2)
    init = Sim3(T.s * 1.7, T.R, T.t + 3.0)  # right rotation, wrong scale and translation
    res = register(dst, src, w, depth, mode="scale", kernel="huber", init=init, **REG_KW)
    np.testing.assert_array_equal(res.dst_from_src.R, T.R)
    assert res.dst_from_src.s == pytest.approx(T.s, rel=1e-3)
    assert np.max(np.linalg.norm(res.dst_from_src.apply(src) - T.apply(src), axis=1) / depth) < 2e-3
    with pytest.raises(AlignmentError, match="init"):
        register(dst, src, w, depth, mode="scale", **REG_KW)


def test_register_uses_init_when_given(rng):
    T = random_sim3(rng)
    dst, src, w, depth, _ = make_pairs(rng, T, outlier_frac=0.3)
    res = register(dst, src, w, depth, init=T, n_hypotheses=0, **REG_KW)
    assert abs(np.log(res.dst_from_src.s / T.s)) < 5e-4


def test_depth_relative_weighting_far_points_do_not_dominate(rng):
    """Near points are accurate in absolute terms, far ones noisy: the depth-relative fit is much better near."""
    ratios = []
    for _ in range(5):
        T = random_sim3(rng, scale_range=(0.5, 2.0))
        m = 2000
        depth = np.r_[rng.uniform(1.0, 2.0, m // 2), rng.uniform(50.0, 100.0, m // 2)]
        dst_true = np.c_[rng.uniform(-0.5, 0.5, (m, 2)) * depth[:, None], depth]
        src = T.inverse().apply(dst_true)
        dst = dst_true + rng.normal(size=(m, 3)) * 0.01 * depth[:, None]
        near = depth < 10
        res = register(dst, src, np.ones(m), depth, kernel="huber", **REG_KW)
        plain = umeyama(src, dst)  # absolute residuals: far points dominate
        err_rel = np.linalg.norm(res.dst_from_src.apply(src[near]) - dst_true[near], axis=1) / depth[near]
        err_plain = np.linalg.norm(plain.apply(src[near]) - dst_true[near], axis=1) / depth[near]
        assert np.median(err_rel) < 0.002
        ratios.append(np.median(err_plain) / np.median(err_rel))
    assert min(ratios) > 1.0 and np.median(ratios) > 5.0


DEGENERATE_CASES = ("collinear", "identical", "too_few", "zero_weights", "all_nan")


def degenerate_inputs(rng, case: str, m: int = 500):
    """``(dst, src, w, depth)`` of a registration that must raise AlignmentError (one case of DEGENERATE_CASES)."""
    src = rng.normal(size=(m, 3))
    dst = src + [0.0, 0.0, 5.0]
    w = np.ones(m)
    depth = np.full(m, 5.0)
    if case == "collinear":
        src = np.outer(rng.uniform(-1, 1, m), [1.0, 2.0, 0.5])
        dst = src * 2.0 + [0.0, 0.0, 5.0]
    elif case == "identical":
        src = np.tile([1.0, 2.0, 3.0], (m, 1))
        dst = src + 1.0
    elif case == "too_few":
        src, dst, w, depth = src[:10], dst[:10], w[:10], depth[:10]
    elif case == "zero_weights":
        w = np.zeros(m)
    elif case == "all_nan":
        dst = np.full((m, 3), np.nan)
    return dst, src, w, depth


@pytest.mark.parametrize("case", DEGENERATE_CASES)
def test_register_degenerate_inputs_raise(rng, case):
    dst, src, w, depth = degenerate_inputs(rng, case)
    with pytest.raises(AlignmentError) as info:
        register(dst, src, w, depth, **REG_KW)
    assert "\n" not in str(info.value)


def test_register_drops_invalid_rows_and_never_returns_nan(rng):
    T = random_sim3(rng)
    dst, src, w, depth, _ = make_pairs(rng, T, outlier_frac=0.1)
    dst[:50] = np.nan
    depth[50:80] = -1.0
    w[80:100] = 0.0
    res = register(dst, src, w, depth, **REG_KW)
    assert res.n_points == len(src) - 100
    assert np.all(np.isfinite(res.dst_from_src.matrix()))
    assert np.isfinite(res.inlier_ratio) and np.isfinite(res.residual_median)


def test_register_is_deterministic_and_checks_arguments(rng):
    T = random_sim3(rng)
    dst, src, w, depth, _ = make_pairs(rng, T)
    a = register(dst, src, w, depth, **REG_KW)
    b = register(dst, src, w, depth, **REG_KW)
    np.testing.assert_array_equal(a.dst_from_src.matrix(), b.dst_from_src.matrix())
    with pytest.raises(ShapeError):
        register(dst[:, :2], src, w, depth, **REG_KW)
    with pytest.raises(AlignmentError, match="mode"):
        register(dst, src, w, depth, mode="affine", **REG_KW)
    with pytest.raises(AlignmentError, match="kernel"):
        register(dst, src, w, depth, kernel="l1", **REG_KW)


# ---------------------------------------------------------------- pose-based estimate, disagreement, gate


def random_poses(rng, k, spread=1.0):
    P = np.tile(np.eye(4), (k, 1, 1))
    P[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.2, size=(k, 3))).as_matrix()
    P[:, :3, 3] = rng.normal(size=(k, 3)) * spread
    return P


def test_pose_based_estimate_recovers_transform_from_exact_poses(rng):
    T = random_sim3(rng)
    b_from_cam = random_poses(rng, 8)
    a_from_cam = T.apply_pose(b_from_cam)
    est = pose_based_estimate(a_from_cam, b_from_cam)
    np.testing.assert_allclose(est.matrix(), T.matrix(), atol=1e-9)
    depth_b = rng.uniform(1, 5, size=(8, 6, 7))
    est2 = pose_based_estimate(a_from_cam, b_from_cam, depth_b * T.s, depth_b)
    np.testing.assert_allclose(est2.matrix(), T.matrix(), atol=1e-9)


def test_pose_based_estimate_small_baseline_uses_depth_ratio(rng):
    T = random_sim3(rng)
    b_from_cam = random_poses(rng, 6, spread=1e-4)
    a_from_cam = T.apply_pose(b_from_cam)
    a_from_cam[:, :3, 3] += rng.normal(size=(6, 3)) * 1e-3  # centre noise swamps the tiny baseline
    depth_b = rng.uniform(2, 6, size=(6, 5, 5))
    est = pose_based_estimate(a_from_cam, b_from_cam, depth_b * T.s, depth_b)
    assert est.s == pytest.approx(T.s, rel=1e-9)
    assert rot_err_deg(est.R, T.R) < 1e-6
    # One camera centre and no depth: the scale is undetermined.
    single = np.repeat(b_from_cam[:1], 3, axis=0)
    with pytest.raises(AlignmentError, match="scale"):
        pose_based_estimate(T.apply_pose(single), single)


def test_transform_disagreement_is_relative():
    a = Sim3.identity()
    b = Sim3(1.1, np.eye(3), np.zeros(3))
    pts = np.c_[np.zeros((10, 2)), np.linspace(1, 10, 10)]
    assert transform_disagreement(a, a, pts) == 0.0
    assert transform_disagreement(a, b, pts, depth=pts[:, 2]) == pytest.approx(0.1)
    # Invariant to a common change of units.
    big = Sim3(5.0, np.eye(3), np.zeros(3))
    assert transform_disagreement(big @ a, big @ b, pts, depth=5 * pts[:, 2]) == pytest.approx(0.1)
    assert transform_disagreement(a, b, pts) > 0


def _result(inliers=0.9, residual=0.01, scale=1.0) -> RegistrationResult:
    return RegistrationResult(Sim3(scale, np.eye(3), np.zeros(3)), inliers, residual, 1000, 3, True)


def test_quality_gate_reasons():
    gate = dict(min_inlier_ratio=0.5, max_residual=0.08, scale_range=(0.2, 5.0), max_pose_disagreement=0.2)
    assert quality_gate(_result(), 0.01, **gate) == (True, "")
    assert quality_gate(_result(inliers=0.2), 0.01, **gate) == (False, "low_inliers")
    assert quality_gate(_result(residual=0.5), 0.01, **gate) == (False, "high_residual")
    assert quality_gate(_result(scale=20.0), 0.01, **gate) == (False, "scale_out_of_range")
    assert quality_gate(_result(scale=0.01), 0.01, **gate) == (False, "scale_out_of_range")
    assert quality_gate(_result(), 0.9, **gate) == (False, "pose_disagreement")
    assert quality_gate(_result(), float("nan"), **gate) == (True, "")
    assert quality_gate(_result(), None, **gate) == (True, "")


# ---------------------------------------------------------------- correspondences


def test_sample_correspondences_spreads_points_and_respects_max_points(rng):
    k, h, w = 3, 60, 80
    pts = rng.normal(size=(k, h, w, 3)).astype(np.float32)
    depth = rng.uniform(1, 5, size=(k, h, w)).astype(np.float32)
    # Confidence piles up in the top-left corner: a top-k pick would cluster there.
    yy, xx = np.mgrid[0:h, 0:w]
    conf = np.broadcast_to(1.0 + 100.0 * np.exp(-(yy**2 + xx**2) / 200.0), (k, h, w)).astype(np.float32)
    corr = sample_correspondences(pts, conf, depth, pts, conf, max_points=300, conf_quantile=0.0, rng=rng)
    assert len(corr) == 300
    counts = np.bincount(corr.frame, minlength=k)
    assert counts.min() >= 95 and counts.max() <= 105  # balanced across frames
    # Every 4x4 block of every frame gets about its share (300 / 48 = 6.25) of the points,
    # although the confidence of the top-left block is up to 100x that of the rest.
    block = corr.frame * 16 + (corr.pixel[:, 0] * 4 // h) * 4 + corr.pixel[:, 1] * 4 // w
    per_block = np.bincount(block, minlength=48)
    assert per_block.min() >= 2 and per_block.max() <= 12
    np.testing.assert_allclose(corr.dst, pts[corr.frame, corr.pixel[:, 0], corr.pixel[:, 1]])
    assert corr.weight.max() <= 10.0 and corr.weight.min() > 0


def test_sample_correspondences_drops_lowest_confidence_quantile(rng):
    k, h, w = 2, 40, 50
    pts = rng.normal(size=(k, h, w, 3)).astype(np.float32)
    depth = rng.uniform(1, 5, size=(k, h, w)).astype(np.float32)
    conf_a = rng.uniform(1, 3, size=(k, h, w)).astype(np.float32)
    conf_b = rng.uniform(1, 3, size=(k, h, w)).astype(np.float32)
    corr = sample_correspondences(pts, conf_a, depth, pts, conf_b, max_points=4000, conf_quantile=0.3, rng=rng)
    joint = np.sqrt(conf_a.astype(np.float64) * conf_b)
    picked = joint[corr.frame, corr.pixel[:, 0], corr.pixel[:, 1]]
    assert picked.min() > np.quantile(joint, 0.3)
    assert len(corr) == pytest.approx(0.7 * joint.size, abs=2)
    # Weights follow the joint confidence (normalised by its median).
    np.testing.assert_allclose(corr.weight, np.clip(picked / np.median(picked), 0, 10), rtol=1e-12)


def test_sample_correspondences_drops_invalid_and_is_deterministic():
    k, h, w = 2, 20, 30
    rng = np.random.default_rng(3)
    pts_a = rng.normal(size=(k, h, w, 3)).astype(np.float32)
    pts_b = rng.normal(size=(k, h, w, 3)).astype(np.float32)
    depth = rng.uniform(1, 5, size=(k, h, w)).astype(np.float32)
    conf = rng.uniform(1, 2, size=(k, h, w)).astype(np.float32)
    pts_a[0, :10] = np.nan
    depth[1, :, :5] = 0.0
    conf[1, 15:] = np.nan
    kw = dict(max_points=5000, conf_quantile=0.0)
    corr = sample_correspondences(pts_a, conf, depth, pts_b, conf, rng=np.random.default_rng(7), **kw)
    valid = np.isfinite(pts_a).all(-1) & (depth > 0) & np.isfinite(conf)
    assert len(corr) == int(valid.sum())  # fewer valid pixels than max_points: all of them
    assert np.all(valid[corr.frame, corr.pixel[:, 0], corr.pixel[:, 1]])
    small = dict(max_points=100, conf_quantile=0.2)
    c1 = sample_correspondences(pts_a, conf, depth, pts_b, conf, rng=np.random.default_rng(7), **small)
    c2 = sample_correspondences(pts_a, conf, depth, pts_b, conf, rng=np.random.default_rng(7), **small)
    c3 = sample_correspondences(pts_a, conf, depth, pts_b, conf, rng=np.random.default_rng(8), **small)
    np.testing.assert_array_equal(c1.pixel, c2.pixel)
    np.testing.assert_array_equal(c1.src, c2.src)
    assert not np.array_equal(c1.pixel, c3.pixel)
    with pytest.raises(AlignmentError):
        sample_correspondences(pts_a, conf, np.zeros_like(depth), pts_b, conf, rng=np.random.default_rng(0), **kw)
    with pytest.raises(ShapeError):
        sample_correspondences(pts_a, conf[:1], depth, pts_b, conf, rng=np.random.default_rng(0), **kw)


def _two_windows(rng, a_from_world: Sim3, b_from_world: Sim3, k=4, h=48, w=64):
    """Depth and poses of k shared frames as two windows with their own gauge would predict them."""
    K = np.tile(np.array([[60.0, 0, w / 2], [0, 60.0, h / 2], [0, 0, 1]]), (k, 1, 1))
    world_from_cam = np.tile(np.eye(4), (k, 1, 1))
    world_from_cam[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.05, size=(k, 3))).as_matrix()
    world_from_cam[:, :3, 3] = np.c_[np.linspace(0, 0.6, k), rng.normal(scale=0.05, size=(k, 2))]
    yy, xx = np.mgrid[0:h, 0:w]
    depth = 3.0 + np.sin(xx / 9.0)[None] + 0.5 * np.cos(yy / 7.0)[None] + np.arange(k)[:, None, None] * 0.1
    return K, world_from_cam, depth, a_from_world.apply_pose(world_from_cam), b_from_world.apply_pose(world_from_cam)


def test_two_window_overlap_end_to_end(rng):
    """unproject -> sample -> register recovers a_from_b between two gauges, with corrupted depth regions."""
    a_from_world = random_sim3(rng, (0.5, 2.0))
    b_from_world = random_sim3(rng, (0.5, 2.0))  # relative scale inside the gate's default range
    K, world_from_cam, depth, a_from_cam, b_from_cam = _two_windows(rng, a_from_world, b_from_world)
    depth_a = (depth * a_from_world.s).astype(np.float32)
    depth_b = depth * b_from_world.s * (1 + rng.normal(scale=0.003, size=depth.shape))
    depth_b[:, 30:, 40:] *= 1.4  # a wrong region (e.g. a moving object) in window B
    depth_b = depth_b.astype(np.float32)
    conf = np.ones_like(depth_a)
    pts_a = unproject_depth(depth_a, K, a_from_cam)
    pts_b = unproject_depth(depth_b, K, b_from_cam)
    corr = sample_correspondences(pts_a, conf, depth_a, pts_b, conf, max_points=CFG.max_points,
                                  conf_quantile=CFG.conf_quantile, rng=rng, depth_b=depth_b)
    res = register(corr.dst, corr.src, corr.weight, corr.depth_dst, **REG_KW)
    truth = a_from_world @ b_from_world.inverse()
    assert res.dst_from_src.s == pytest.approx(truth.s, rel=2e-3)
    assert rot_err_deg(res.dst_from_src.R, truth.R) < 0.2
    pose_est = pose_based_estimate(a_from_cam, b_from_cam, depth_a, depth_b)
    disagreement = transform_disagreement(res.dst_from_src, pose_est, corr.src, depth=corr.depth_dst)
    assert disagreement < 0.01
    assert quality_gate(res, disagreement, **GATE_KW) == (True, "")
    assert 0.7 < res.inlier_ratio < 0.95
