"""Sim(3) value type, vectorised Lie maps and the Umeyama estimator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm
from scipy.spatial.transform import Rotation

from da3stream.alignment.lie import (
    exp_phi1,
    exp_sim3,
    log_sim3,
    sim3_ad,
    sim3_adjoint,
    sim3_compose,
    sim3_exp,
    sim3_hat,
    sim3_inverse,
    sim3_log,
    sim3_right_jacobian,
    sim3_right_jacobian_inv,
    so3_exp,
    so3_log,
)
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.errors import AlignmentError, ShapeError


def random_sim3(rng, scale_range=(0.1, 10.0)) -> Sim3:
    s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    return Sim3(s, Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix(), rng.normal(size=3) * 3)


def random_xi(rng, n, rot_max=3.0):
    xi = rng.normal(size=(n, 7))
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    xi[:, 3:6] = axis * rng.uniform(0, rot_max, size=(n, 1))
    return xi


# ---------------------------------------------------------------- Sim3 value type


def test_sim3_array_round_trip_and_immutability(rng):
    T = random_sim3(rng)
    back = Sim3.from_array(T.to_array())
    np.testing.assert_allclose(back.matrix(), T.matrix(), atol=1e-12)
    np.testing.assert_allclose(Sim3.from_matrix(T.matrix()).matrix(), T.matrix(), atol=1e-12)
    with pytest.raises(ValueError):
        T.R[0, 0] = 2.0
    with pytest.raises(AlignmentError):
        Sim3(0.0, np.eye(3), np.zeros(3))
    with pytest.raises(AlignmentError):
        Sim3(1.0, np.eye(3), np.array([np.nan, 0, 0]))


def test_apply_pose_keeps_rigidity_and_maps_centre(rng):
    T = random_sim3(rng)
    P = np.eye(4)
    P[:3, :3] = Rotation.random(random_state=4).as_matrix()
    P[:3, 3] = [1.0, 2.0, 3.0]
    Q = T.apply_pose(P[None])[0]
    np.testing.assert_allclose(Q[:3, :3] @ Q[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(Q[:3, 3], T.apply(P[:3, 3]), atol=1e-12)
    np.testing.assert_allclose(Q[:3, :3], T.R @ P[:3, :3], atol=1e-12)


# ---------------------------------------------------------------- Lie maps


@pytest.mark.parametrize("magnitude", [1e-10, 1e-4, 0.05, 1.0])
def test_exp_matches_matrix_exponential(rng, magnitude):
    xi = random_xi(rng, 50) * magnitude
    xi[:10, 6] = 0.0  # pure SE(3)
    xi[10:20, 3:6] = 0.0  # no rotation
    s, R, t = sim3_exp(xi)
    M = expm(sim3_hat(xi))
    np.testing.assert_allclose(M[:, :3, :3], s[:, None, None] * R, atol=1e-12)
    np.testing.assert_allclose(M[:, :3, 3], t, rtol=1e-10, atol=1e-13 * magnitude)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)


@pytest.mark.parametrize("rot_max", [1e-9, 1e-3, 1.0, 3.1])
def test_log_inverts_exp(rng, rot_max):
    xi = random_xi(rng, 40, rot_max=rot_max)
    xi[:5, 6] = 0.0  # zero log-scale
    xi[5:10, 6] = 1e-10
    np.testing.assert_allclose(sim3_log(*sim3_exp(xi)), xi, atol=1e-9)


def test_so3_log_near_pi_and_identity():
    phi = np.array([[np.pi - 1e-9, 0, 0], [0, 0, 0], [0, 1e-12, 0], [0, 2.0, 1.0]])
    np.testing.assert_allclose(so3_exp(so3_log(so3_exp(phi))), so3_exp(phi), atol=1e-9)
    assert np.all(np.linalg.norm(so3_log(so3_exp(phi)), axis=1) <= np.pi + 1e-12)


def test_exp_phi1_matches_scipy(rng):
    A = rng.normal(size=(20, 7, 7)) * rng.uniform(1e-6, 20, size=(20, 1, 1))
    E, F = exp_phi1(A)
    big = np.zeros((20, 14, 14))
    big[:, :7, :7] = A
    big[:, :7, 7:] = np.eye(7)
    ref = expm(big)
    scale = np.maximum(1.0, np.abs(ref).max(axis=(1, 2)))[:, None, None]
    np.testing.assert_allclose(E / scale, ref[:, :7, :7] / scale, atol=1e-10)
    np.testing.assert_allclose(F / scale, ref[:, :7, 7:] / scale, atol=1e-10)


def test_adjoint_and_bracket_identities(rng):
    T = random_sim3(rng)
    M = T.matrix()
    for xi in random_xi(rng, 5):
        lhs = M @ expm(sim3_hat(xi)) @ np.linalg.inv(M)
        rhs = expm(sim3_hat(sim3_adjoint(np.asarray(T.s), T.R, T.t) @ xi))
        np.testing.assert_allclose(lhs, rhs, atol=1e-9)
    a, b = random_xi(rng, 2)
    A, B = sim3_hat(a), sim3_hat(b)
    np.testing.assert_allclose(A @ B - B @ A, sim3_hat(sim3_ad(a) @ b), atol=1e-12)


def test_right_jacobian_against_finite_differences(rng):
    xi = random_xi(rng, 3, rot_max=2.5)
    eps = 1e-6
    for x in xi:
        Jinv = sim3_right_jacobian_inv(x)
        num = np.zeros((7, 7))
        for k in range(7):
            d = np.zeros(7)
            d[k] = eps
            plus = sim3_log(*sim3_compose(*sim3_exp(x), *sim3_exp(d)))
            minus = sim3_log(*sim3_compose(*sim3_exp(x), *sim3_exp(-d)))
            num[:, k] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(Jinv, num, atol=1e-6)
        np.testing.assert_allclose(sim3_right_jacobian(x) @ Jinv, np.eye(7), atol=1e-9)


def test_single_value_helpers_round_trip(rng):
    T = random_sim3(rng)
    np.testing.assert_allclose(exp_sim3(log_sim3(T)).matrix(), T.matrix(), atol=1e-9)
    s, R, t = sim3_inverse(np.asarray(T.s), T.R, T.t)
    np.testing.assert_allclose(Sim3(float(s), R, t).matrix(), T.inverse().matrix(), atol=1e-12)
    with pytest.raises(ShapeError):
        exp_sim3(np.zeros(6))


# ---------------------------------------------------------------- Umeyama


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_recovers_random_sim3(seed):
    rng = np.random.default_rng(seed)
    T = random_sim3(rng)
    src = rng.normal(size=(200, 3)) * rng.uniform(0.1, 10)
    est = umeyama(src, T.apply(src))
    assert est.s == pytest.approx(T.s, rel=1e-10)
    np.testing.assert_allclose(est.R, T.R, atol=1e-10)
    np.testing.assert_allclose(est.t, T.t, atol=1e-9 * max(1.0, np.abs(T.t).max()))


def test_umeyama_rigid_and_weights(rng):
    T = random_sim3(rng)
    rigid = Sim3(1.0, T.R, T.t)
    src = rng.normal(size=(100, 3))
    dst = rigid.apply(src)
    est = umeyama(src, dst, with_scale=False)
    assert est.s == 1.0
    np.testing.assert_allclose(est.matrix(), rigid.matrix(), atol=1e-10)
    # Corrupted rows with zero weight do not matter; with weight they do.
    dst_bad = dst.copy()
    dst_bad[:10] += 50.0
    w = np.ones(100)
    w[:10] = 0.0
    np.testing.assert_allclose(umeyama(src, dst_bad, w).matrix(), rigid.matrix(), atol=1e-9)
    assert not np.allclose(umeyama(src, dst_bad).matrix(), rigid.matrix(), atol=1e-3)


def test_umeyama_planar_points_and_no_reflection(rng):
    T = random_sim3(rng)
    src = np.c_[rng.normal(size=(50, 2)), np.zeros(50)]
    est = umeyama(src, T.apply(src))
    assert np.linalg.det(est.R) == pytest.approx(1.0)
    np.testing.assert_allclose(est.matrix(), T.matrix(), atol=1e-9)


@pytest.mark.parametrize(
    "case",
    ["collinear", "identical", "two_points", "zero_weights", "negative_weight", "nan"],
)
def test_umeyama_degenerate_inputs_raise(rng, case):
    src = rng.normal(size=(20, 3))
    dst = src + 1.0
    w = None
    if case == "collinear":
        src = np.outer(np.linspace(-1, 1, 20), [1.0, 2.0, 3.0]) + 5.0
        dst = src * 2.0
    elif case == "identical":
        src = np.tile([1.0, 2.0, 3.0], (20, 1))
        dst = src.copy()
    elif case == "two_points":
        src, dst = src[:2], dst[:2]
    elif case == "zero_weights":
        w = np.zeros(20)
    elif case == "negative_weight":
        w = np.ones(20)
        w[3] = -1.0
    elif case == "nan":
        src[4, 1] = np.nan
    with pytest.raises(AlignmentError):
        umeyama(src, dst, w)


def test_umeyama_shape_errors(rng):
    with pytest.raises(ShapeError):
        umeyama(rng.normal(size=(10, 2)), rng.normal(size=(10, 2)))
    with pytest.raises(ShapeError):
        umeyama(rng.normal(size=(10, 3)), rng.normal(size=(9, 3)))
    with pytest.raises(ShapeError):
        umeyama(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)), np.ones(9))
