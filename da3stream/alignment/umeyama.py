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

This is the project's one Umeyama: :func:`umeyama_batched` fits many small
sets at once (the registration's minimal samples) and reports why a set is
degenerate; :func:`umeyama` checks one pairing, fits it through the same code
and raises. Registration, evaluation, the DA3 predictor's pose conditioning
and the simulator's calibration all call these.
"""

from __future__ import annotations

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import AlignmentError, check_shape

__all__ = ["umeyama", "umeyama_batched", "weighted_moments"]

_TINY = np.finfo(np.float64).tiny

# reasons a set is degenerate (umeyama_batched's ``fail``); 0 is a valid fit
_OK, _COINCIDENT, _NO_SPREAD, _RANK_DEFICIENT, _BAD_SCALE = range(5)


def weighted_moments(src: np.ndarray, dst: np.ndarray, weights: np.ndarray):
    """Weighted centroids and statistics of point pairings, batched over leading dimensions.

    Args:
        src: (..., M, 3) float64 source points.
        dst: (..., M, 3) float64 destination points.
        weights: (..., M) float64 non-negative weights (a zero sum gives zero moments).

    Returns:
        ``(mu_src (..., 3), mu_dst (..., 3), cov (..., 3, 3), var_src (...,))`` where
        ``cov = sum w (dst - mu_dst)(src - mu_src)^T / sum w`` and
        ``var_src = sum w |src - mu_src|^2 / sum w``; the last as a float for one set.
    """
    w = weights / np.maximum(weights.sum(axis=-1, keepdims=True), _TINY)
    mu_src = np.einsum("...m,...mi->...i", w, src)
    mu_dst = np.einsum("...m,...mi->...i", w, dst)
    src_c = src - mu_src[..., None, :]
    dst_c = dst - mu_dst[..., None, :]
    cov = np.swapaxes(dst_c * w[..., None], -1, -2) @ src_c
    var_src = np.einsum("...m,...mi,...mi->...", w, src_c, src_c)
    return mu_src, mu_dst, cov, (float(var_src) if np.ndim(var_src) == 0 else var_src)


def umeyama_batched(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray,
    *,
    with_scale: bool = True,
    rank_tol: float | None = 1e-9,
    min_spread: float = 0.0,
):
    """Weighted closed-form ``dst_from_src`` of B point sets at once (the one Umeyama of the project).

    Args:
        src: (B, M, 3) float64 source points.
        dst: (B, M, 3) float64 destination points.
        weights: (B, M) float64 non-negative weights (zeros allowed).
        with_scale, rank_tol, min_spread: as :func:`umeyama`.

    Returns:
        ``(s (B,), R (B, 3, 3), t (B, 3), fail (B,) int)``; ``fail`` is 0 for a valid
        fit, else the reason (coincident points, no spread, rank-deficient
        covariance, non-positive scale) and the set's ``s`` is a placeholder 1.
    """
    mu_s, mu_d, cov, var_s = weighted_moments(src, dst, weights)
    var_s = np.asarray(var_s).reshape(len(cov))
    fail = np.zeros(len(cov), dtype=np.int64)
    if rank_tol is not None:
        extent = np.max(np.abs(src - mu_s[:, None]), axis=(1, 2)) ** 2
        fail[~(var_s > rank_tol * np.maximum(extent, _TINY))] = _COINCIDENT
    fail[(fail == _OK) & ~((var_s > 0.0) & (var_s >= min_spread))] = _NO_SPREAD
    U, d, Vt = np.linalg.svd(cov)
    if rank_tol is not None:
        fail[(fail == _OK) & ~((d[:, 0] > 0.0) & (d[:, 1] > rank_tol * d[:, 0]))] = _RANK_DEFICIENT
    sign = np.ones((len(cov), 3))
    sign[np.linalg.det(U) * np.linalg.det(Vt) < 0.0, 2] = -1.0
    R = (U * sign[:, None, :]) @ Vt
    if with_scale:
        s = np.einsum("bi,bi->b", d, sign) / np.where(fail == _OK, var_s, 1.0)
        fail[(fail == _OK) & ~(np.isfinite(s) & (s > 0.0))] = _BAD_SCALE
        s = np.where(fail == _OK, s, 1.0)
    else:
        s = np.ones(len(cov))
    t = mu_d - s[:, None] * np.einsum("bij,bj->bi", R, mu_s)
    return s, R, t, fail


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
    s, R, t, fail = umeyama_batched(src[None], dst[None], w[None], with_scale=with_scale, rank_tol=rank_tol,
                                    min_spread=min_spread)
    if fail[0] == _COINCIDENT:
        raise AlignmentError("umeyama: source points coincide (zero spread)")
    if fail[0] == _NO_SPREAD:
        raise AlignmentError(f"umeyama: source points have no spread (variance {weighted_moments(src, dst, w)[3]:.3g})")
    if fail[0] == _RANK_DEFICIENT:
        raise AlignmentError("umeyama: rank-deficient weighted covariance (collinear or coincident points)")
    if fail[0] == _BAD_SCALE:
        raise AlignmentError("umeyama: non-positive scale estimate (reflected or degenerate pairing)")
    return Sim3(float(s[0]), R[0], t[0])


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
