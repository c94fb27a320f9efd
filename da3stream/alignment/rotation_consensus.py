"""Robust mean of rotations, and which of them agree with it.

Two windows that share K frames each hold their own camera rotation of every
shared frame; ``Q_k = R_a,k R_b,k^T`` is then K estimates of one rotation
``a_from_b``. A failed sub-block of frames inside one window (DA3 gets a few
frames of a window wrong together) shows as a group of ``Q_k`` that sit
degrees away from the rest. :func:`robust_rotation_mean` finds the rotation
the majority agrees on (a medoid start, then IRLS on the weighted chordal mean
with Cauchy weights on the angle), and :func:`agreeing` marks the frames
within a robust bound of it.
"""

from __future__ import annotations

import numpy as np

from da3stream.errors import AlignmentError, check_shape

__all__ = ["agreeing", "angles_deg", "chordal_mean", "robust_rotation_mean"]


def chordal_mean(Q: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """The rotation closest (Frobenius) to the weighted sum of rotations ``Q`` (K, 3, 3)."""
    M = Q.sum(axis=0) if weight is None else np.einsum("k,kij->ij", np.asarray(weight, np.float64), Q)
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt


def angles_deg(R: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """(K,) geodesic angles, in degrees, between ``R`` (3, 3) and each of ``Q`` (K, 3, 3)."""
    cos = (np.einsum("ij,kij->k", R, Q) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def robust_rotation_mean(Q: np.ndarray, *, scale_deg: float = 0.5, iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(R (3, 3), angles (K,) degrees)``: the rotation most of ``Q`` agrees on, and each one's angle to it.

    Starts at the medoid (the ``Q_k`` with the smallest summed angle to the
    others, so up to half the set may be off by any amount), then reweights the
    chordal mean with Cauchy weights ``1 / (1 + (angle / scale_deg)^2)``.
    """
    Q = np.asarray(Q, dtype=np.float64)
    check_shape("robust_rotation_mean(Q)", Q, ("K", 3, 3))
    if Q.shape[0] == 0 or not np.all(np.isfinite(Q)):
        raise AlignmentError("robust_rotation_mean: no rotations, or rotations with NaN/inf")
    if scale_deg <= 0:
        raise AlignmentError(f"robust_rotation_mean: scale_deg must be > 0, got {scale_deg}")
    pair_cos = (np.einsum("aij,bij->ab", Q, Q) - 1.0) / 2.0
    R = Q[int(np.argmin(np.arccos(np.clip(pair_cos, -1.0, 1.0)).sum(axis=1)))]
    for _ in range(iters):
        a = angles_deg(R, Q)
        R_new = chordal_mean(Q, 1.0 / (1.0 + (a / scale_deg) ** 2))
        if np.max(np.abs(R_new - R)) < 1e-12:
            R = R_new
            break
        R = R_new
    return R, angles_deg(R, Q)


def agreeing(angles: np.ndarray, *, k_sigma: float = 4.0, floor_deg: float = 0.5) -> np.ndarray:
    """(K,) bool: angles within ``max(k_sigma x 1.4826 x median angle, floor_deg)`` of the robust mean."""
    a = np.asarray(angles, dtype=np.float64)
    bound = max(k_sigma * 1.4826 * float(np.median(a)), float(floor_deg))
    return a <= bound
