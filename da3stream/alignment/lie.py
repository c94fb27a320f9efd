"""Vectorised SO(3) / Sim(3) exponential and logarithm maps, adjoints and Jacobians.

Everything here works on stacked numpy arrays (leading batch dimensions ``...``)
and returns new arrays.

Tangent ordering (used everywhere in da3stream, including the pose graph):

    xi = [rho (3), phi (3), sigma (1)]            (..., 7) float64

``phi`` is the rotation vector, ``sigma = log(s)`` the log-scale and ``rho`` the
translational part. The matching 4x4 Lie-algebra matrix is

    hat(xi) = [[sigma I + [phi]_x, rho],
               [0,                 0  ]]

and ``exp(hat(xi)) = [[s R, W rho], [0, 1]]`` with ``s = e^sigma``,
``R = exp([phi]_x)`` and ``W = int_0^1 exp(tau (sigma I + [phi]_x)) dtau``.
With ``phi1(A) = int_0^1 e^{tau A} dtau``, ``W = phi1(sigma I + [phi]_x)`` is
evaluated in closed form through the complex scalar ``phi1(sigma + i |phi|)``
(series near zero, so no case analysis or cancellation near zero rotation or
zero log-scale), and the right Jacobian ``Jr(xi) = phi1(-ad(xi))`` by a
vectorised scaling-and-squaring series (:func:`exp_phi1`) after balancing the
translational part. Both agree with ``scipy.linalg.expm`` of the block matrix
``[[A, I], [0, 0]]`` to ~1e-13 relative.

A :class:`~da3stream.alignment.sim3.Sim3` is (s, R, t); the batched helpers here
take and return the parts ``(s (...,), R (..., 3, 3), t (..., 3))``.

These are the project's only SO(3) / Sim(3) maps (the simulator uses them too).
pypose was a declared dependency for this and was dropped, measured against
this module with ``python -m da3stream.bench lie`` (CPU, float64, 2 shared
cores, 2026-12-04; pypose 0.9.5, torch 2.13; median of 5 calls; pypose's sim3
tangent has the same order):

    batch        1,000: exp / log / act        100,000: exp / log / act
    lie.py       0.28 / 0.86 / 0.02 ms         109 / 204 / 1.7 ms
    pypose       0.64 / 48  / 0.14 ms          668 / 575 / 1.7 ms

(a rerun on the loaded machine: 1k pypose log 44 ms; 100k exp / log 43 / 336
ms ours, 1,199 / 1,283 ms pypose).

pypose's Exp differed from ours by up to 5.1e-14 (1k) and 2.3e-11 (100k);
against ``scipy.linalg.expm`` at 1k, pypose 5.1e-14 and ours 2.2e-15. In the
pose graph (1,000 nodes, 1,049 edges, 40 LM iterations, 1.46 s under
cProfile) exp and log take 0.05 s and 0.12 s and the inverse right Jacobian
0.29 s: pypose has no sim3 ``Jr``, and its dense ``pp.optim.LM`` took ~15 s
and 3.6 GB per iteration on this problem (the project's environment notes),
so it serves nowhere here.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import AlignmentError, check_shape

__all__ = [
    "exp_phi1",
    "hat",
    "so3_exp",
    "so3_log",
    "sim3_hat",
    "sim3_exp",
    "sim3_log",
    "sim3_ad",
    "sim3_adjoint",
    "sim3_right_jacobian",
    "sim3_right_jacobian_inv",
    "sim3_compose",
    "sim3_inverse",
    "sim3_to_parts",
    "sim3_from_parts",
    "exp_sim3",
    "log_sim3",
]


def hat(v: np.ndarray) -> np.ndarray:
    """Skew-symmetric matrices [v]_x, (..., 3) -> (..., 3, 3)."""
    v = np.asarray(v, dtype=np.float64)
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1] = -v[..., 2]
    out[..., 0, 2] = v[..., 1]
    out[..., 1, 0] = v[..., 2]
    out[..., 1, 2] = -v[..., 0]
    out[..., 2, 0] = -v[..., 1]
    out[..., 2, 1] = v[..., 0]
    return out


def so3_exp(phi: np.ndarray) -> np.ndarray:
    """Rotation matrices from rotation vectors, (..., 3) -> (..., 3, 3)."""
    phi = np.asarray(phi, dtype=np.float64)
    flat = phi.reshape(-1, 3)
    return Rotation.from_rotvec(flat).as_matrix().reshape(phi.shape[:-1] + (3, 3))


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vectors (angle <= pi) from rotation matrices, (..., 3, 3) -> (..., 3).

    Goes through unit quaternions, so it is stable near 0 and near pi.
    """
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(R.shape[:-2] + (3,))


def sim3_hat(xi: np.ndarray) -> np.ndarray:
    """(..., 7) tangent vectors -> (..., 4, 4) Lie-algebra matrices."""
    xi = np.asarray(xi, dtype=np.float64)
    out = np.zeros(xi.shape[:-1] + (4, 4))
    out[..., :3, :3] = hat(xi[..., 3:6]) + xi[..., 6, None, None] * np.eye(3)
    out[..., :3, 3] = xi[..., 0:3]
    return out


_TAYLOR_DEGREE = 14
_TAYLOR_NORM = 0.5


def exp_phi1(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(expm(A), phi1(A))`` for stacked square matrices (..., n, n), vectorised.

    ``phi1(A) = int_0^1 expm(tau A) dtau = sum_k A^k / (k+1)!``. Scaling and
    squaring: both series are summed to degree 14 for ``A / 2^m`` with
    ``|A / 2^m|_inf <= 0.5`` (truncation below 1e-16), then doubled ``m`` times
    with ``e^{2A} = (e^A)^2`` and ``phi1(2A) = (I + e^A) phi1(A) / 2``. The
    whole batch shares one ``m``, so it runs as a few batched matmuls (scipy's
    ``expm`` loops over a batch in Python-level calls, ~25x slower here).
    """
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[-1]
    eye = np.eye(n)
    norm = float(np.max(np.sum(np.abs(A), axis=-1))) if A.size else 0.0
    m = int(max(0, np.ceil(np.log2(norm / _TAYLOR_NORM)))) if norm > _TAYLOR_NORM else 0
    As = A / (2.0**m)
    term = np.broadcast_to(eye, A.shape).copy()
    E = term.copy()
    F = term.copy()
    for k in range(1, _TAYLOR_DEGREE + 1):
        term = term @ As / k
        E = E + term
        F = F + term / (k + 1)
    for _ in range(m):
        F = 0.5 * (F + E @ F)
        E = E @ E
    return E, F


def _phi1(A: np.ndarray) -> np.ndarray:
    """phi1(A) = int_0^1 expm(tau A) dtau for stacked square matrices (..., n, n)."""
    return exp_phi1(A)[1]


_SERIES_RADIUS = 0.1
_SERIES_DEGREE = 10
_THETA_TINY = 1e-8


def _phi1_scalar(z: np.ndarray) -> np.ndarray:
    """(e^z - 1) / z elementwise for real or complex z (series near 0, no cancellation)."""
    z = np.asarray(z)
    small = np.abs(z) < _SERIES_RADIUS
    zs = np.where(small, z, 0)
    series = np.zeros_like(zs)
    coef = 1.0
    power = np.ones_like(zs)
    for k in range(_SERIES_DEGREE + 1):
        coef /= k + 1
        series = series + coef * power
        power = power * zs
    zb = np.where(small, 1, z)
    return np.where(small, series, (np.exp(zb) - 1) / zb)


def _sim3_W(phi: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The (..., 3, 3) matrix W = phi1(sigma I + [phi]_x) mapping rho to the translation of exp(xi).

    Closed form ``W = C0 I + C1 [phi]_x + C2 [phi]_x^2`` with ``C0 = phi1(sigma)``,
    ``C1 = Im phi1(sigma + i theta) / theta`` and
    ``C2 = (C0 - Re phi1(sigma + i theta)) / theta^2`` (``theta = |phi|``): the
    integrals of ``e^{sigma tau}``, ``e^{sigma tau} sin(theta tau) / theta`` and
    ``e^{sigma tau} (1 - cos(theta tau)) / theta^2`` over [0, 1]. The
    cancellation in C2 for small theta is harmless because C2 multiplies
    ``[phi]_x^2`` (of size theta^2); below ``theta = 1e-8`` that term is under
    1e-16 and C2 takes its sigma = 0 limit 1/6.
    """
    theta = np.linalg.norm(phi, axis=-1)
    c0 = _phi1_scalar(sigma)
    pz = _phi1_scalar(sigma + 1j * theta)
    pos = theta > 0
    th = np.where(pos, theta, 1.0)
    c1 = np.where(pos, pz.imag / th, 0.0)
    c2 = np.where(theta > _THETA_TINY, (c0 - pz.real) / th**2, 1.0 / 6.0)
    K = hat(phi)
    return c0[..., None, None] * np.eye(3) + c1[..., None, None] * K + c2[..., None, None] * (K @ K)


def sim3_exp(xi: np.ndarray):
    """Exponential map, (..., 7) -> ``(s (...,), R (..., 3, 3), t (..., 3))``."""
    xi = np.asarray(xi, dtype=np.float64)
    check_shape("sim3_exp(xi)", xi, (None,) * (xi.ndim - 1) + (7,))
    rho, phi, sigma = xi[..., 0:3], xi[..., 3:6], xi[..., 6]
    W = _sim3_W(phi, sigma)
    return np.exp(sigma), so3_exp(phi), np.einsum("...ij,...j->...i", W, rho)


def sim3_log(s: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Logarithm map, ``(s (...,), R (..., 3, 3), t (..., 3))`` -> (..., 7) [rho, phi, sigma]."""
    s = np.asarray(s, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if np.any(~(s > 0.0)):
        raise AlignmentError("sim3_log: scale must be positive")
    sigma = np.log(s)
    phi = so3_log(R)
    W = _sim3_W(phi, sigma)
    rho = np.linalg.solve(W, t[..., None])[..., 0]
    return np.concatenate([rho, phi, sigma[..., None]], axis=-1)


def sim3_ad(xi: np.ndarray) -> np.ndarray:
    """Lie-bracket matrices ad(xi) (..., 7, 7): ``ad(a) b = vee([hat(a), hat(b)])``."""
    xi = np.asarray(xi, dtype=np.float64)
    rho, phi, sigma = xi[..., 0:3], xi[..., 3:6], xi[..., 6]
    out = np.zeros(xi.shape[:-1] + (7, 7))
    out[..., 0:3, 0:3] = hat(phi) + sigma[..., None, None] * np.eye(3)
    out[..., 0:3, 3:6] = hat(rho)
    out[..., 0:3, 6] = -rho
    out[..., 3:6, 3:6] = hat(phi)
    return out


def sim3_adjoint(s: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Adjoint matrices Ad(T) (..., 7, 7): ``T exp(xi) T^-1 = exp(Ad(T) xi)``."""
    s = np.asarray(s, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros(R.shape[:-2] + (7, 7))
    out[..., 0:3, 0:3] = s[..., None, None] * R
    out[..., 0:3, 3:6] = hat(t) @ R
    out[..., 0:3, 6] = -t
    out[..., 3:6, 3:6] = R
    out[..., 6, 6] = 1.0
    return out


def sim3_right_jacobian(xi: np.ndarray) -> np.ndarray:
    """Right Jacobians Jr(xi) (..., 7, 7): ``exp(xi + d) ~= exp(xi) exp(Jr(xi) d)``.

    ``Jr(xi) = phi1(-ad(xi))``. The translational part is balanced first:
    with ``D = diag(c, c, c, 1, 1, 1, 1)``, ``D ad(rho, phi, sigma) D^-1 =
    ad(c rho, phi, sigma)``, so ``Jr(xi) = D^-1 Jr(c rho, phi, sigma) D``. With
    ``c = 1 / max(1, |rho|)`` the series sees a matrix whose norm depends on
    the rotation and log-scale only, which keeps the squaring count small even
    for large translations.
    """
    xi = np.asarray(xi, dtype=np.float64)
    c = 1.0 / np.maximum(1.0, np.linalg.norm(xi[..., 0:3], axis=-1))
    xb = xi.copy()
    xb[..., 0:3] *= c[..., None]
    J = _phi1(-sim3_ad(xb))
    J[..., 0:3, 3:7] /= c[..., None, None]
    return J


def sim3_right_jacobian_inv(xi: np.ndarray) -> np.ndarray:
    """Inverse right Jacobians (..., 7, 7): ``log(exp(xi) exp(d)) ~= xi + Jr^-1(xi) d``."""
    return np.linalg.inv(sim3_right_jacobian(xi))


def sim3_compose(s1, R1, t1, s2, R2, t2):
    """Batched ``T1 @ T2`` on parts."""
    R = R1 @ R2
    t = s1[..., None] * np.einsum("...ij,...j->...i", R1, t2) + t1
    return s1 * s2, R, t


def sim3_inverse(s, R, t):
    """Batched inverse on parts."""
    Rt = np.swapaxes(R, -1, -2)
    return 1.0 / s, Rt, -np.einsum("...ij,...j->...i", Rt, t) / s[..., None]


def sim3_to_parts(transforms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sequence of :class:`Sim3` -> ``(s (N,), R (N, 3, 3), t (N, 3))``."""
    transforms = list(transforms)
    if not transforms:
        return np.zeros(0), np.zeros((0, 3, 3)), np.zeros((0, 3))
    s = np.array([T.s for T in transforms], dtype=np.float64)
    R = np.stack([T.R for T in transforms])
    t = np.stack([T.t for T in transforms])
    return s, R, t


def sim3_from_parts(s: np.ndarray, R: np.ndarray, t: np.ndarray) -> list[Sim3]:
    """Inverse of :func:`sim3_to_parts`."""
    return [Sim3(float(s[k]), R[k], t[k]) for k in range(len(s))]


def exp_sim3(xi: np.ndarray) -> Sim3:
    """A single :class:`Sim3` from a (7,) tangent vector [rho, phi, sigma]."""
    xi = np.asarray(xi, dtype=np.float64)
    check_shape("exp_sim3(xi)", xi, (7,))
    s, R, t = sim3_exp(xi)
    return Sim3(float(s), R, t)


def log_sim3(T: Sim3) -> np.ndarray:
    """(7,) tangent vector [rho, phi, sigma] of a single :class:`Sim3`."""
    return sim3_log(np.asarray(T.s), T.R, T.t)
