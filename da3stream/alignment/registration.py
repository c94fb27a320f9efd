"""Robust Sim(3) registration of two windows on their shared frames.

:func:`register` estimates ``dst_from_src`` from same-pixel point pairs with
iteratively reweighted least squares, each step a closed-form weighted Umeyama
(:mod:`da3stream.alignment.umeyama`). Residuals are relative to depth,

    r_i = |dst_i - T(src_i)| / depth_dst_i,

so a far, noisy point weighs as much as a near one with the same relative
error (the least-squares weights carry ``1 / depth_dst^2``). Robust weights are
the kernel of ``r / kernel_scale`` times the confidence weights; pairs beyond
``inlier_threshold`` get zero weight while enough inliers remain, so gross
outliers cannot pull the estimate even with a monotone kernel (Huber).

The IRLS start is the best of: the weighted least-squares fit, ``init`` when
given, and ``n_hypotheses`` minimal-sample fits (a small seeded RANSAC-style
search), scored by the truncated cost ``sum w min(r^2, inlier_threshold^2)``.
This makes the estimator insensitive to the start even with 30-40% gross
outliers.

Modes:

- ``"sim3"``: scale, rotation and translation.
- ``"se3"``: rotation and translation, scale fixed to 1 (metric models).
- ``"scale"``: rotation taken from ``init`` (required; typically
  :func:`pose_based_estimate`), scale and translation estimated. For
  metric-ish models whose camera rotations are reliable but whose depth scale
  drifts between windows.

:func:`pose_based_estimate` derives ``a_from_b`` from the shared frames' camera
poses alone; :func:`transform_disagreement` compares two estimates and
:func:`quality_gate` turns a result into an accept/fallback decision.

One implementation, in numpy, on the host. A torch twin (float64, no host
round trip per IRLS step, meant for CUDA) agreed with it to ~5e-14 and was
removed after ``python -m da3stream.bench registration`` (2 shared cores,
2026-12-04; median of 5 calls, 30 % outliers, 64 starts, 10 IRLS steps):

    pairs         500      4,000     20,000
    numpy        7.3 ms   18.0 ms   153 ms
    torch (CPU)  152 ms   252 ms    681 ms

Torch made 9,677 operator calls per registration whatever the pair count (the
eigenvector search of 64 + 11 closed-form fits): on a GPU each is at least one
kernel launch of ~5 us, so >= ~50 ms, above numpy's 18 ms at the pipeline's
4,000 pairs (``align.max_points``). The pairs are host arrays already (sampled
from the prediction on the host), and one registration per window sits next to
a network forward of seconds, so the GPU gains nothing at these sizes. Torch
tensors (any device) are still accepted as inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from da3stream.alignment.rotation_consensus import chordal_mean
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama, umeyama_batched, weighted_moments
from da3stream.errors import AlignmentError, ConfigError, check_shape

log = logging.getLogger(__name__)

__all__ = [
    "RegistrationResult",
    "register",
    "kernel_weights",
    "pose_based_estimate",
    "transform_disagreement",
    "quality_gate",
    "resolve_align_device",
]

_MODES = ("sim3", "se3", "scale")
_KERNELS = ("huber", "cauchy", "tukey")


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """Outcome and quality record of :func:`register`."""

    dst_from_src: Sim3
    """The estimated transform (maps source-chunk points into the destination chunk frame)."""
    inlier_ratio: float
    """Fraction of valid pairs whose depth-relative residual is below ``inlier_threshold``."""
    residual_median: float
    """Median depth-relative residual over all valid pairs."""
    n_points: int
    """Valid pairs used (finite, positive depth, non-negative weight)."""
    iterations: int
    """IRLS iterations run."""
    converged: bool
    """True when the last IRLS update moved points by less than ``tol`` (relative to depth)."""


def kernel_weights(u: np.ndarray, kernel: str) -> np.ndarray:
    """IRLS weights of a robust kernel at normalised residuals ``u = r / kernel_scale`` (>= 0)."""
    if kernel == "huber":
        return np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1.0))
    if kernel == "cauchy":
        return 1.0 / (1.0 + u * u)
    if kernel == "tukey":
        return np.where(u < 1.0, (1.0 - u * u) ** 2, 0.0)
    raise AlignmentError(f"register(kernel): expected huber, cauchy or tukey, got {kernel!r}")


def _relative_residuals(T: Sim3, dst: np.ndarray, src: np.ndarray, depth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(dst - (T.s * (src @ T.R.T) + T.t), axis=1) / depth


def _fit(src, dst, w, mode: str, R_fixed, rank_tol: float) -> Sim3:
    """One weighted closed-form fit in the given mode (raises AlignmentError when degenerate)."""
    if mode == "scale":
        if np.count_nonzero(w > 0) < 2 or not np.all(np.isfinite(w)) or w.sum() <= 0:
            raise AlignmentError("register: fewer than 2 points with positive weight")
        s, _, t, ok = _fixed_rotation_fits(src[None], dst[None], w[None], R_fixed, rank_tol)
        if not ok[0]:
            raise AlignmentError("register: coincident points or non-positive scale with the fixed rotation")
        return Sim3(float(s[0]), R_fixed, t[0])
    return umeyama(src, dst, w, with_scale=(mode == "sim3"), rank_tol=rank_tol)


def _fixed_rotation_fits(src, dst, w, R_fixed, rank_tol: float):
    """Scale and translation of B sets (B, M, 3) under the rotation ``R_fixed``: ``(s, R, t, ok)`` as in _batched_fits."""
    mu_s, mu_d, cov, var_s = weighted_moments(src, dst, w)
    extent = np.max(np.abs(src - mu_s[:, None]), axis=(1, 2)) ** 2
    ok = var_s > rank_tol * np.maximum(extent, np.finfo(np.float64).tiny)
    s = np.einsum("hij,ij->h", cov, R_fixed) / np.where(ok, var_s, 1.0)
    ok &= np.isfinite(s) & (s > 0)
    s = np.where(ok, s, 1.0)
    R = np.broadcast_to(R_fixed, cov.shape).copy()
    t = mu_d - s[:, None] * np.einsum("hij,hj->hi", R, mu_s)
    return s, R, t, ok


def _check_geometry(src: np.ndarray, w: np.ndarray, mode: str, rank_tol: float) -> None:
    """Raise when the weighted source points cannot determine the transform.

    All modes need spread (not all coincident); sim3/se3 also need the points
    not to be collinear (rotation about the line would be free): the second
    eigenvalue of the weighted covariance must exceed ``rank_tol`` times the first.
    """
    wn = w / w.sum()
    c = src - wn @ src
    eig = np.linalg.eigvalsh((c * wn[:, None]).T @ c)
    extent = float(np.max(np.abs(c))) ** 2
    if not eig[2] > rank_tol * max(extent, np.finfo(np.float64).tiny):
        raise AlignmentError("register: source points coincide (zero spread)")
    if mode != "scale" and not eig[1] > rank_tol * eig[2]:
        raise AlignmentError("register: rank-deficient weighted covariance (collinear points)")


def _batched_fits(src, dst, w, mode: str, R_fixed, rank_tol: float):
    """Closed-form fits of H small samples at once: (H, S, 3) -> (s (H,), R (H,3,3), t (H,3), ok (H,))."""
    if mode == "scale":
        return _fixed_rotation_fits(src, dst, w, R_fixed, rank_tol)
    s, R, t, fail = umeyama_batched(src, dst, w, with_scale=(mode == "sim3"), rank_tol=rank_tol)
    return s, R, t, fail == 0


def register(
    dst,
    src,
    weight,
    depth_dst,
    *,
    mode: str = "sim3",
    kernel: str = "huber",
    kernel_scale: float = 0.05,
    inlier_threshold: float = 0.1,
    irls_iters: int = 10,
    min_points: int = 50,
    init: Sim3 | None = None,
    n_hypotheses: int = 64,
    sample_size: int = 4,
    seed: int = 0,
    tol: float = 1e-7,
    rank_tol: float = 1e-9,
) -> RegistrationResult:
    """Robust ``dst_from_src`` from paired points (IRLS over weighted Umeyama).

    Args:
        dst: (M, 3) destination-frame points (window A's chunk frame).
        src: (M, 3) source-frame points (window B's chunk frame), paired with ``dst``.
        weight: (M,) non-negative confidence weights.
        depth_dst: (M,) positive z-depth of ``dst`` in A's camera (the residual normaliser).
        mode: ``"sim3"``, ``"se3"`` or ``"scale"`` (see the module docstring).
        kernel: ``"huber"``, ``"cauchy"`` or ``"tukey"``.
        kernel_scale: kernel width as a fraction of depth.
        inlier_threshold: depth-relative residual below which a pair is an inlier.
        irls_iters: IRLS iterations (after the start is chosen).
        min_points: fewer valid pairs raise; while fewer pairs than this are
            inliers, IRLS keeps the outliers (with kernel weights) in play.
        init: optional start; required for ``mode="scale"`` (its rotation is kept).
        n_hypotheses: minimal-sample starts tried (0 disables the search).
        sample_size: points per minimal sample.
        seed: seed of the hypothesis sampler (the result is deterministic).
        tol: IRLS stops when an update moves every pair by less than ``tol`` x depth.
        rank_tol: relative singular-value floor of the degeneracy checks.

    The arrays may be numpy arrays or torch tensors (on any device; they are
    read to the host once).

    Returns:
        :class:`RegistrationResult` (always finite).

    Raises:
        AlignmentError: fewer than ``min_points`` valid pairs, all-zero weights,
            degenerate geometry (coincident or collinear points), unknown mode
            or kernel, or ``mode="scale"`` without ``init``.
    """
    _check_options(mode, kernel, kernel_scale, inlier_threshold, init)
    dst, src, conf, depth = _valid_pairs(dst, src, weight, depth_dst, min_points)
    base = conf / depth**2
    R_fixed = None if init is None else init.R
    _check_geometry(src, base, mode, rank_tol)
    fit = dict(mode=mode, R_fixed=R_fixed, rank_tol=rank_tol)
    T = _best_start(dst, src, conf, depth, base, init, fit, n_hypotheses=n_hypotheses, sample_size=sample_size,
                    seed=seed, inlier_threshold=inlier_threshold)
    T, r, iterations, converged = _irls(T, dst, src, depth, base, fit, kernel=kernel, kernel_scale=kernel_scale,
                                        inlier_threshold=inlier_threshold, irls_iters=irls_iters,
                                        need=max(min_points, 3), tol=tol)
    inlier_ratio = float(np.mean(r < inlier_threshold))
    residual_median = float(np.median(r))
    return RegistrationResult(T, inlier_ratio, residual_median, len(dst), iterations, converged)


def _check_options(mode: str, kernel: str, kernel_scale: float, inlier_threshold: float, init) -> None:
    if mode not in _MODES:
        raise AlignmentError(f"register(mode): expected sim3, se3 or scale, got {mode!r}")
    if kernel not in _KERNELS:
        raise AlignmentError(f"register(kernel): expected huber, cauchy or tukey, got {kernel!r}")
    if not (kernel_scale > 0 and inlier_threshold > 0):
        raise AlignmentError("register: kernel_scale and inlier_threshold must be positive")
    if mode == "scale" and init is None:
        raise AlignmentError("register: mode='scale' needs init (its rotation is kept)")


def _as_float64(name: str, value, shape: tuple) -> np.ndarray:
    """``value`` (numpy array, sequence or torch tensor on any device) as a float64 numpy array of ``shape``."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    a = np.asarray(value, dtype=np.float64)
    check_shape(name, a, shape)
    return a


def _valid_pairs(dst, src, weight, depth_dst, min_points: int):
    """The finite, positively weighted pairs with positive depth: ``(dst, src, conf, depth)``; too few raise."""
    dst = _as_float64("register(dst)", dst, ("M", 3))
    m = dst.shape[0]
    src = _as_float64("register(src)", src, (m, 3))
    weight = _as_float64("register(weight)", weight, (m,))
    depth_dst = _as_float64("register(depth_dst)", depth_dst, (m,))
    valid = np.all(np.isfinite(dst), axis=1) & np.all(np.isfinite(src), axis=1)
    valid &= np.isfinite(weight) & (weight > 0) & np.isfinite(depth_dst) & (depth_dst > 0)
    n = int(valid.sum())
    if n < max(min_points, 3):
        raise AlignmentError(f"register: {n} valid weighted pairs, fewer than min_points={min_points}")
    return dst[valid], src[valid], weight[valid], depth_dst[valid]


def _best_start(dst, src, conf, depth, base, init, fit: dict, *, n_hypotheses: int, sample_size: int, seed: int,
                inlier_threshold: float) -> Sim3:
    """The best of least squares, ``init`` and minimal-sample fits by the truncated cost."""
    n = len(dst)
    candidates = [init] if init is not None else []
    try:
        candidates.append(_fit(src, dst, base, **fit))
    except AlignmentError:
        log.debug("register: least-squares start rejected (e.g. negative scale under outliers)")
    if n_hypotheses > 0:
        rng = np.random.default_rng(seed)
        size = min(sample_size, n)
        idx = np.stack([rng.choice(n, size=size, replace=False) for _ in range(n_hypotheses)])
        s_h, R_h, t_h, ok = _batched_fits(src[idx], dst[idx], base[idx], **fit)
        candidates += [Sim3(s_h[h], R_h[h], t_h[h]) for h in np.flatnonzero(ok)]
    if not candidates:
        raise AlignmentError("register: no valid starting transform (inconsistent correspondences)")
    trunc2 = inlier_threshold**2
    scores = [float(np.sum(conf * np.minimum(_relative_residuals(T, dst, src, depth) ** 2, trunc2))) for T in candidates]
    return candidates[int(np.argmin(scores))]


def _irls(T: Sim3, dst, src, depth, base, fit: dict, *, kernel: str, kernel_scale: float, inlier_threshold: float,
          irls_iters: int, need: int, tol: float):
    """IRLS from ``T``: ``(T, residuals, iterations, converged)``."""
    iterations = 0
    converged = False
    r = _relative_residuals(T, dst, src, depth)
    for _ in range(irls_iters):
        iterations += 1
        w = base * kernel_weights(r / kernel_scale, kernel)
        inl = r < inlier_threshold
        if np.count_nonzero(inl & (w > 0)) >= need:
            w = np.where(inl, w, 0.0)
        try:
            T_new = _fit(src, dst, w, **fit)
        except AlignmentError:
            log.debug("register: IRLS step degenerate, keeping the previous estimate")
            break
        move = np.linalg.norm((T_new.s * (src @ T_new.R.T) + T_new.t) - (T.s * (src @ T.R.T) + T.t), axis=1) / depth
        T = T_new
        r = _relative_residuals(T, dst, src, depth)
        if float(np.max(move)) < tol:
            converged = True
            break
    return T, r, iterations, converged


def pose_based_estimate(
    a_from_cam: np.ndarray,
    b_from_cam: np.ndarray,
    depth_a: np.ndarray | None = None,
    depth_b: np.ndarray | None = None,
    *,
    min_baseline_ratio: float = 0.05,
    rank_tol: float = 1e-9,
) -> Sim3:
    """``a_from_b`` implied by the shared frames' camera poses in both windows.

    Rotation: chordal mean of ``R_a,k R_b,k^T``. Scale: least-squares ratio of
    the camera-centre spreads (rotation fixed) when the baseline is large
    enough -- the RMS spread of B's centres is at least ``min_baseline_ratio``
    times B's median depth, or, without depths, simply non-zero; otherwise the
    median per-pixel ratio ``depth_a / depth_b`` (same frames, same pixels).
    Translation: mean of ``c_a - s R c_b`` over the shared frames.

    Args:
        a_from_cam: (K, 4, 4) shared frames' rigid poses in A's chunk frame.
        b_from_cam: (K, 4, 4) the same frames' poses in B's chunk frame.
        depth_a: optional (K, h, w) A's z-depth of those frames.
        depth_b: optional (K, h, w) B's z-depth of those frames.
        min_baseline_ratio: see above.
        rank_tol: relative floor for "non-zero" spread.

    Raises:
        AlignmentError: the scale is undetermined (one camera centre and no
            depths, or no valid depth pair) or inputs are not finite.
    """
    Pa = np.asarray(a_from_cam, dtype=np.float64)
    Pb = np.asarray(b_from_cam, dtype=np.float64)
    check_shape("pose_based_estimate(a_from_cam)", Pa, ("K", 4, 4))
    check_shape("pose_based_estimate(b_from_cam)", Pb, (Pa.shape[0], 4, 4))
    if Pa.shape[0] == 0:
        raise AlignmentError("pose_based_estimate: no shared frames")
    if not (np.all(np.isfinite(Pa)) and np.all(np.isfinite(Pb))):
        raise AlignmentError("pose_based_estimate: poses contain NaN or inf")
    if (depth_a is None) != (depth_b is None):
        raise AlignmentError("pose_based_estimate: pass both depth_a and depth_b or neither")
    R = chordal_mean(Pa[:, :3, :3] @ np.swapaxes(Pb[:, :3, :3], 1, 2))
    ca, cb = Pa[:, :3, 3], Pb[:, :3, 3]
    ca_c, cb_c = ca - ca.mean(axis=0), cb - cb.mean(axis=0)
    spread_b2 = float(np.mean(np.sum(cb_c**2, axis=1)))
    s_centres = float(np.mean(np.sum(ca_c * (cb_c @ R.T), axis=1)) / spread_b2) if spread_b2 > 0 else np.nan
    scale_floor = rank_tol * max(float(np.max(np.abs(cb))), 1.0)
    s_depth, median_depth_b = _depth_ratio(depth_a, depth_b, Pa.shape[0])
    if np.isfinite(median_depth_b):
        use_centres = np.sqrt(spread_b2) >= min_baseline_ratio * median_depth_b
    else:
        use_centres = np.sqrt(spread_b2) > scale_floor
    if use_centres and np.isfinite(s_centres) and s_centres > 0:
        s = s_centres
    elif np.isfinite(s_depth) and s_depth > 0:
        s = s_depth
    else:
        raise AlignmentError("pose_based_estimate: scale undetermined (no camera baseline and no valid depth pair)")
    t = np.mean(ca - s * (cb @ R.T), axis=0)
    return Sim3(s, R, t)


def _depth_ratio(depth_a, depth_b, k: int) -> tuple[float, float]:
    """``(median depth_a / depth_b, median depth_b)`` over the valid pixel pairs; NaNs without depths or pairs."""
    if depth_a is None:
        return np.nan, np.nan
    da = np.asarray(depth_a, dtype=np.float64)
    db = np.asarray(depth_b, dtype=np.float64)
    check_shape("pose_based_estimate(depth_a)", da, (k, "h", "w"))
    check_shape("pose_based_estimate(depth_b)", db, da.shape)
    ok = np.isfinite(da) & np.isfinite(db) & (da > 0) & (db > 0)
    if not np.any(ok):
        return np.nan, np.nan
    return float(np.median(da[ok] / db[ok])), float(np.median(db[ok]))


def transform_disagreement(a: Sim3, b: Sim3, pts: np.ndarray, *, depth: np.ndarray | None = None) -> float:
    """Median relative distance between ``a.apply(pts)`` and ``b.apply(pts)``.

    Both are ``dst_from_src`` estimates and ``pts`` (M, 3) are source-frame
    points. Each distance is divided by the point's destination-frame z-depth
    ``depth`` (M,) when given, else by the robust extent of ``a.apply(pts)``
    (median distance to their median). 0 means identical on these points; 0.1
    means they disagree by 10% of depth (or extent).
    """
    pts = np.asarray(pts, dtype=np.float64)
    check_shape("transform_disagreement(pts)", pts, ("M", 3))
    ok = np.all(np.isfinite(pts), axis=1)
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float64)
        check_shape("transform_disagreement(depth)", depth, (pts.shape[0],))
        ok &= np.isfinite(depth) & (depth > 0)
    if not np.any(ok):
        raise AlignmentError("transform_disagreement: no finite points")
    pa = a.s * (pts[ok] @ a.R.T) + a.t
    pb = b.s * (pts[ok] @ b.R.T) + b.t
    dist = np.linalg.norm(pa - pb, axis=1)
    if depth is not None:
        return float(np.median(dist / depth[ok]))
    extent = float(np.median(np.linalg.norm(pa - np.median(pa, axis=0), axis=1)))
    if not extent > 0:
        raise AlignmentError("transform_disagreement: points have zero extent; pass depth")
    return float(np.median(dist) / extent)


def quality_gate(
    result: RegistrationResult,
    disagreement: float | None,
    *,
    min_inlier_ratio: float,
    max_residual: float,
    scale_range: tuple,
    max_pose_disagreement: float,
) -> tuple[bool, str]:
    """Accept or reject a registration: ``(ok, reason)`` with reason ``""`` when ok.

    Checks, first failure wins: ``"low_inliers"`` (inlier ratio below
    ``min_inlier_ratio``), ``"high_residual"`` (median residual above
    ``max_residual``), ``"scale_out_of_range"`` (scale outside
    ``[scale_range[0], scale_range[1]]``), ``"pose_disagreement"``
    (``disagreement`` above ``max_pose_disagreement``; skipped when None or NaN,
    i.e. when no pose-based estimate exists).
    """
    lo, hi = scale_range
    if not result.inlier_ratio >= min_inlier_ratio:
        return False, "low_inliers"
    if not result.residual_median <= max_residual:
        return False, "high_residual"
    if not lo <= result.dst_from_src.s <= hi:
        return False, "scale_out_of_range"
    if disagreement is not None and np.isfinite(disagreement) and disagreement > max_pose_disagreement:
        return False, "pose_disagreement"
    return True, ""


def resolve_align_device(setting: str, predictor_device: Any = None) -> str:
    """The validated ``align.device`` setting: ``"cpu"`` or a CUDA device name.

    ``"auto"`` follows the predictor's device when it is a CUDA device and CUDA
    is available, else ``"cpu"``; ``"cpu"`` and ``"cuda"`` / ``"cuda:N"`` are
    taken as given (``"cuda"`` without CUDA raises :class:`ConfigError`).
    :func:`register` runs in numpy on the host whatever this says: the inputs
    are host arrays and numpy beats torch there (see the module docstring).
    """
    name = str(setting).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        dev = str(predictor_device or "cpu").lower()
        if not dev.startswith("cuda"):
            return "cpu"
        try:
            import torch
        except ImportError:
            return "cpu"
        return dev if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"align.device: {setting!r} requested but CUDA is not available")
        return name
    raise ConfigError(f"align.device: expected auto, cpu or cuda[:N], got {setting!r}")
