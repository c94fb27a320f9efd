"""Closed-form weighted Umeyama alignment with a degenerate-input check.

Given point pairs ``(src_i, dst_i)`` and non-negative weights ``w_i``, find the
similarity ``dst_from_src = (s, R, t)`` minimising

    sum_i w_i |dst_i - (s R src_i + t)|^2

(Umeyama 1991, "Least-squares estimation of transformation parameters between
two point patterns", with weights). Degenerate configurations -- fewer than
three points, zero or invalid weights, coincident or collinear points, for
which the rotation about the common line is not determined -- raise
:class:`~da3stream.errors.AlignmentError` instead of returning a silently
arbitrary transform. The one relaxation, ``rank_tol=None``, accepts
rank-deficient pairings for callers that follow the official DA3 api
(camera centres of a straight-line trajectory).

This is the project's one Umeyama: registration, evaluation, the DA3
predictor's pose conditioning and the simulator's calibration all call it.
"""

from __future__ import annotations

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import AlignmentError, check_shape

__all__ = ["umeyama", "weighted_moments"]


def weighted_moments(src: np.ndarray, dst: np.ndarray, weights: np.ndarray):
    """Weighted centroids and statistics of a point pairing.

    Args:
        src: (M, 3) float64 source points.
        dst: (M, 3) float64 destination points.
        weights: (M,) float64 non-negative weights with a positive sum.

    Returns:
        ``(mu_src (3,), mu_dst (3,), cov (3, 3), var_src)`` where
        ``cov = sum w (dst - mu_dst)(src - mu_src)^T / sum w`` and
        ``var_src = sum w |src - mu_src|^2 / sum w``.
    """
    w = weights / weights.sum()
    mu_src = w @ src
    mu_dst = w @ dst
    src_c = src - mu_src
    dst_c = dst - mu_dst
    cov = (dst_c * w[:, None]).T @ src_c
    var_src = float(w @ np.einsum("ij,ij->i", src_c, src_c))
    return mu_src, mu_dst, cov, var_src


def umeyama(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    with_scale: bool = True,
    rank_tol: float | None = 1e-9,
    min_points: int = 3,
    min_spread: float = 0.0,
) -> Sim3:
    """Least-squares ``dst_from_src`` similarity (or rigid transform) between paired points.

    Args:
        src: (M, 3) float source points.
        dst: (M, 3) float destination points, paired row by row with ``src``.
        weights: (M,) non-negative weights, or None for uniform weights.
        with_scale: estimate the scale; when False the result is rigid (s = 1).
        rank_tol: the cross-covariance counts as rank-deficient when its second
            singular value is below ``rank_tol`` times the first (collinear or
            coincident points), or when the source spread is below ``rank_tol``
            times the squared source extent. None accepts rank-deficient
            pairings (two points, collinear points): the rotation about their
            line is then one of the minimisers, the one the SVD gives (the
            official DA3 api's camera-centre alignment does this).
        min_points: fewer points with positive weight raise.
        min_spread: the weighted source variance ``sum w |src - mu|^2 / sum w``
            must be positive and at least this (an absolute floor).

    Returns:
        ``dst_from_src`` as a :class:`Sim3`.

    Raises:
        AlignmentError: fewer than ``min_points`` points, non-finite input,
            negative / non-finite / all-zero weights, no source spread, a
            rank-deficient weighted covariance (unless ``rank_tol`` is None) or
            a non-positive scale.
        ShapeError: wrong shapes.
    """
    src, dst, w = _checked_pairs(src, dst, weights, min_points)
    mu_src, mu_dst, cov, var_src = weighted_moments(src, dst, w)
    if rank_tol is not None:
        extent = float(np.max(np.abs(src - mu_src))) ** 2
        if not var_src > rank_tol * max(extent, np.finfo(np.float64).tiny):
            raise AlignmentError("umeyama: source points coincide (zero spread)")
    if not (var_src > 0.0 and var_src >= min_spread):
        raise AlignmentError(f"umeyama: source points have no spread (variance {var_src:.3g})")
    U, d, Vt = np.linalg.svd(cov)
    if rank_tol is not None and not (d[0] > 0.0 and d[1] > rank_tol * d[0]):
        raise AlignmentError("umeyama: rank-deficient weighted covariance (collinear or coincident points)")
    sign = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0.0:
        sign[2] = -1.0
    R = (U * sign) @ Vt
    if with_scale:
        s = float(np.dot(d, sign) / var_src)
        if not (np.isfinite(s) and s > 0.0):
            raise AlignmentError(f"umeyama: non-positive scale estimate {s:.3g} (reflected or degenerate pairing)")
    else:
        s = 1.0
    t = mu_dst - s * (R @ mu_src)
    return Sim3(s, R, t)


def _checked_pairs(src, dst, weights, min_points: int):
    """``(src, dst, w)`` as float64 after the shape, finiteness and point-count checks of :func:`umeyama`."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    check_shape("umeyama(src)", src, ("M", 3))
    check_shape("umeyama(dst)", dst, (src.shape[0], 3))
    m = src.shape[0]
    if weights is None:
        w = np.ones(m)
    else:
        w = np.asarray(weights, dtype=np.float64)
        check_shape("umeyama(weights)", w, (m,))
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise AlignmentError("umeyama: src or dst contains NaN or inf")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise AlignmentError("umeyama: weights must be finite and non-negative")
    n_used = int(np.count_nonzero(w > 0))
    if n_used < max(min_points, 1):
        raise AlignmentError(f"umeyama: need at least {max(min_points, 1)} points with positive weight, got {n_used}")
    return src, dst, w
