"""The robust Sim(3) registration of :mod:`da3stream.alignment.registration`, in torch.

:func:`register_torch` takes the same arguments as
:func:`~da3stream.alignment.registration.register` (plus ``device``) and returns
the same :class:`~da3stream.alignment.registration.RegistrationResult`: the
same valid-pair filter, the same seeded minimal-sample starts, the same
truncated-cost choice of the start and the same IRLS (kernel weights, inlier
gating, convergence test), so on ``device="cpu"`` it agrees with the numpy
version within float64 rounding (``tests/test_registration_torch.py``).

What differs is how it runs on a GPU: after the inputs are uploaded, nothing
comes back to the host until the result does. Per IRLS iteration there is no
``.item()`` and no data-dependent branch; the numpy loop's ``break`` (converged,
or a degenerate step) becomes a mask that freezes the estimate, which gives the
same estimate and the same iteration count. ``torch.linalg.svd`` and ``eigh``
check their error codes on the host (a synchronisation per call), so the 3x3
rotation fit is done without them:

- the rotation maximising ``trace(R^T cov)`` is the top eigenvector of Horn's
  symmetric 4x4 quaternion matrix ``N`` (it is the proper rotation the
  Umeyama SVD gives with its reflection fix), found by repeated squaring of the
  shifted, normalised ``N`` (``power_steps`` squarings reach eigenvalue gaps of
  about ``2**-power_steps`` relative, i.e. second singular values of the
  cross-covariance down to ~1e-10 of the first with the default);
- the Umeyama scale ``(d1 + d2 + sign d3) / var_src`` is the top eigenvalue of
  ``N`` over ``var_src``;
- the collinearity test ``d2 > rank_tol * d1`` uses ``e2(d^2) / e1(d^2)^2``
  (sums of squared 2x2 minors over the squared Frobenius norm), which equals
  ``(d2 / d1)^2`` up to a factor of at most 3 -- the same test for any
  configuration that is not within a factor of ~1.7 of the (tiny) threshold.

The validity filter and the up-front degeneracy checks (they raise, exactly as
the numpy version does) run on the host before the upload; the result, and
whether any start was valid, come back in one transfer at the end.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from da3stream.alignment.registration import _KERNELS, _MODES, RegistrationResult, _check_geometry
from da3stream.alignment.sim3 import Sim3
from da3stream.errors import AlignmentError, ConfigError, check_shape

log = logging.getLogger(__name__)

__all__ = ["register_torch", "fit_sim3_batched", "resolve_align_device"]


def resolve_align_device(setting: str, predictor_device: Any = None) -> str:
    """The device registration runs on: ``"cpu"`` (numpy) or a CUDA device (torch).

    ``setting`` is ``align.device``: ``"auto"`` follows the predictor's device when
    it is a CUDA device and CUDA is available, else ``"cpu"``; ``"cpu"`` and
    ``"cuda"`` / ``"cuda:N"`` are taken as given (``"cuda"`` without CUDA raises).
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


# ----------------------------------------------------------------------------- batched closed-form fits


def _horn_matrix(cov):
    """(B, 4, 4) Horn matrix of (B, 3, 3) ``cov = sum w dst src^T``: q^T N q = trace(R(q)^T cov)."""
    import torch

    S = cov.transpose(-1, -2)  # S[a, b] = sum w src_a dst_b
    sxx, sxy, sxz = S[..., 0, 0], S[..., 0, 1], S[..., 0, 2]
    syx, syy, syz = S[..., 1, 0], S[..., 1, 1], S[..., 1, 2]
    szx, szy, szz = S[..., 2, 0], S[..., 2, 1], S[..., 2, 2]
    rows = [
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _top_eigenpair(N, power_steps: int):
    """Top eigenvector (B, 4) and eigenvalue (B,) of symmetric (B, 4, 4) ``N``, without host syncs."""
    import torch

    eye = torch.eye(4, dtype=N.dtype, device=N.device)
    c = torch.linalg.matrix_norm(N).clamp_min(torch.finfo(N.dtype).tiny)[..., None, None]
    A = (N + c * eye) / (2 * c)  # eigenvalues in [0, 1], same order, same vectors
    for _ in range(power_steps):
        A = A @ A
        A = A / A.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(N.dtype).tiny)
    col = torch.linalg.vector_norm(A, dim=-2).argmax(dim=-1)  # the column of largest norm ~ the eigenvector
    q = torch.gather(A, -1, col[..., None, None].expand(*A.shape[:-1], 1))[..., 0]
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(torch.finfo(N.dtype).tiny)
    lam = torch.einsum("bi,bij,bj->b", q, N, q)
    return q, lam


def _quat_wxyz_to_matrix(q):
    """(B, 3, 3) rotation matrices of unit quaternions (B, 4) in [w, x, y, z] order."""
    import torch

    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], -1),
    ], -2)


def _second_singular_ratio2(cov):
    """(B,) ~ (d2 / d1)^2 of (B, 3, 3) matrices: sum of squared 2x2 minors over the squared Frobenius norm squared."""
    import torch

    a = cov
    minors = torch.stack([
        a[..., i, k] * a[..., j, l] - a[..., i, l] * a[..., j, k]
        for i, j in ((0, 1), (0, 2), (1, 2)) for k, l in ((0, 1), (0, 2), (1, 2))
    ], -1)
    fro2 = (a * a).sum(dim=(-2, -1))
    return (minors * minors).sum(-1) / (fro2 * fro2).clamp_min(torch.finfo(a.dtype).tiny)


def fit_sim3_batched(src, dst, w, mode: str, R_fixed=None, rank_tol: float = 1e-9, power_steps: int = 40,
                     min_positive: int = 3):
    """Weighted closed-form ``dst_from_src`` of B point sets at once, without host synchronisation.

    Args:
        src: (B, M, 3) float64 tensor.
        dst: (B, M, 3) float64 tensor.
        w: (B, M) non-negative weights (zeros allowed).
        mode: ``"sim3"``, ``"se3"`` or ``"scale"`` (rotation ``R_fixed`` (3, 3) kept).
        rank_tol: degeneracy tolerance (as :func:`~da3stream.alignment.umeyama.umeyama`).
        power_steps: squarings of the eigenvector search (see the module docstring).
        min_positive: fewer positive weights than this makes a set degenerate.

    Returns:
        ``(s (B,), R (B, 3, 3), t (B, 3), ok (B,) bool)``; where ``ok`` is False the
        set is degenerate and the other values are placeholders (s = 1).
    """
    import torch

    tiny = torch.finfo(src.dtype).tiny
    wsum = w.sum(-1)
    wn = w / wsum.clamp_min(tiny)[..., None]
    mu_s = torch.einsum("bm,bmi->bi", wn, src)
    mu_d = torch.einsum("bm,bmi->bi", wn, dst)
    sc = src - mu_s[:, None]
    dc = dst - mu_d[:, None]
    cov = torch.einsum("bm,bmi,bmj->bij", wn, dc, sc)
    var_s = torch.einsum("bm,bmi,bmi->b", wn, sc, sc)
    extent = sc.abs().amax(dim=(1, 2)) ** 2
    ok = ((w > 0).sum(-1) >= min_positive) & (wsum > 0) & torch.isfinite(w).all(-1)
    ok &= var_s > rank_tol * extent.clamp_min(tiny)
    safe_var = torch.where(ok, var_s, torch.ones_like(var_s))
    if mode == "scale":
        R = R_fixed.to(src).expand(cov.shape).clone()
        s = (cov * R).sum(dim=(-2, -1)) / safe_var
    else:
        q, lam = _top_eigenpair(_horn_matrix(cov), power_steps)
        R = _quat_wxyz_to_matrix(q)
        fro2 = (cov * cov).sum(dim=(-2, -1))
        ok &= (fro2 > 0) & (_second_singular_ratio2(cov) > rank_tol * rank_tol)
        s = lam / safe_var if mode == "sim3" else torch.ones_like(var_s)
    ok &= torch.isfinite(s) & (s > 0)
    s = torch.where(ok, s, torch.ones_like(s))
    t = mu_d - s[:, None] * torch.einsum("bij,bj->bi", R, mu_s)
    return s, R, t, ok


# ----------------------------------------------------------------------------- registration


def _kernel_weights(u, kernel: str):
    import torch

    if kernel == "huber":
        return torch.where(u <= 1.0, torch.ones_like(u), 1.0 / u.clamp_min(1.0))
    if kernel == "cauchy":
        return 1.0 / (1.0 + u * u)
    return torch.where(u < 1.0, (1.0 - u * u) ** 2, torch.zeros_like(u))  # tukey


def _apply(s, R, t, pts):
    """(B, M, 3) = s R pts + t for transforms (B,), (B, 3, 3), (B, 3) and points (M, 3)."""
    return s[:, None, None] * (pts @ R.transpose(-1, -2)) + t[:, None, :]


def _as_numpy(name: str, value, shape: tuple) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    a = np.asarray(value, dtype=np.float64)
    check_shape(name, a, shape)
    return a


def register_torch(
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
    device: Any = "cpu",
    power_steps: int = 40,
) -> RegistrationResult:
    """Robust ``dst_from_src`` (IRLS over weighted Umeyama) in torch float64 on ``device``.

    Arguments, result and errors are those of
    :func:`~da3stream.alignment.registration.register` (``dst``, ``src`` (M, 3),
    ``weight``, ``depth_dst`` (M,), numpy arrays or tensors); ``device`` is where
    the hypotheses and the IRLS run and ``power_steps`` the eigenvector search
    length (see the module docstring).
    """
    import torch

    if mode not in _MODES:
        raise AlignmentError(f"register(mode): expected sim3, se3 or scale, got {mode!r}")
    if kernel not in _KERNELS:
        raise AlignmentError(f"register(kernel): expected huber, cauchy or tukey, got {kernel!r}")
    if not (kernel_scale > 0 and inlier_threshold > 0):
        raise AlignmentError("register: kernel_scale and inlier_threshold must be positive")
    if mode == "scale" and init is None:
        raise AlignmentError("register: mode='scale' needs init (its rotation is kept)")
    dst = _as_numpy("register(dst)", dst, ("M", 3))
    m = dst.shape[0]
    src = _as_numpy("register(src)", src, (m, 3))
    weight = _as_numpy("register(weight)", weight, (m,))
    depth_dst = _as_numpy("register(depth_dst)", depth_dst, (m,))

    # host side: the same filter and up-front checks as the numpy version (they raise)
    valid = np.all(np.isfinite(dst), axis=1) & np.all(np.isfinite(src), axis=1)
    valid &= np.isfinite(weight) & (weight > 0) & np.isfinite(depth_dst) & (depth_dst > 0)
    n = int(valid.sum())
    if n < max(min_points, 3):
        raise AlignmentError(f"register: {n} valid weighted pairs, fewer than min_points={min_points}")
    dst, src, conf, depth = dst[valid], src[valid], weight[valid], depth_dst[valid]
    base_np = conf / depth**2
    _check_geometry(src, base_np, mode, rank_tol)
    idx = None
    if n_hypotheses > 0:
        rng = np.random.default_rng(seed)
        size = min(sample_size, n)
        idx = np.stack([rng.choice(n, size=size, replace=False) for _ in range(n_hypotheses)])

    dev = torch.device(device)
    f64 = torch.float64
    D = torch.as_tensor(dst, dtype=f64).to(dev, non_blocking=True)
    S = torch.as_tensor(src, dtype=f64).to(dev, non_blocking=True)
    C = torch.as_tensor(conf, dtype=f64).to(dev, non_blocking=True)
    Z = torch.as_tensor(depth, dtype=f64).to(dev, non_blocking=True)
    base = C / Z**2
    R_fixed = None if init is None else torch.tensor(np.array(init.R, dtype=np.float64), device=dev)
    fit = dict(mode=mode, R_fixed=R_fixed, rank_tol=rank_tol, power_steps=power_steps)

    # starts: init, the weighted least-squares fit, the minimal-sample fits (in the numpy order)
    s_c, R_c, t_c, ok_c = [], [], [], []
    if init is not None:
        s_c.append(torch.tensor([init.s], dtype=f64, device=dev))
        R_c.append(R_fixed[None] if R_fixed is not None else torch.tensor(np.array(init.R, np.float64), device=dev)[None])
        t_c.append(torch.tensor(np.array(init.t, np.float64), device=dev)[None])
        ok_c.append(torch.ones(1, dtype=torch.bool, device=dev))
    ls = fit_sim3_batched(S[None], D[None], base[None], min_positive=2 if mode == "scale" else 3, **fit)
    for lst, v in zip((s_c, R_c, t_c, ok_c), ls):
        lst.append(v)
    if idx is not None:
        I = torch.as_tensor(idx, dtype=torch.long).to(dev)
        hyp = fit_sim3_batched(S[I], D[I], base[I], min_positive=1, **fit)
        for lst, v in zip((s_c, R_c, t_c, ok_c), hyp):
            lst.append(v)
    s_all, R_all, t_all, ok_all = (torch.cat(v) for v in (s_c, R_c, t_c, ok_c))
    trunc2 = inlier_threshold**2
    r_all = torch.linalg.vector_norm(D[None] - _apply(s_all, R_all, t_all, S), dim=-1) / Z
    scores = (C * torch.minimum(r_all**2, torch.full_like(r_all, trunc2))).sum(-1)
    scores = torch.where(ok_all, scores, torch.full_like(scores, float("inf")))
    best = torch.argmin(scores)
    any_ok = ok_all.any()
    s, R, t = s_all[best], R_all[best], t_all[best]

    # IRLS: the numpy loop's breaks become masks
    def residuals(s_, R_, t_):
        return torch.linalg.vector_norm(D - (s_ * (S @ R_.T) + t_), dim=-1) / Z

    r = residuals(s, R, t)
    active = torch.ones((), dtype=torch.bool, device=dev)
    converged = torch.zeros((), dtype=torch.bool, device=dev)
    iterations = torch.zeros((), dtype=torch.long, device=dev)
    need = max(min_points, 3)
    for _ in range(irls_iters):
        iterations = iterations + active.long()
        w = base * _kernel_weights(r / kernel_scale, kernel)
        inl = r < inlier_threshold
        gate = (inl & (w > 0)).sum() >= need
        w = torch.where(gate & ~inl, torch.zeros_like(w), w)
        s_n, R_n, t_n, ok_n = fit_sim3_batched(S[None], D[None], w[None], min_positive=2 if mode == "scale" else 3,
                                               **fit)
        s_n, R_n, t_n, ok_n = s_n[0], R_n[0], t_n[0], ok_n[0]
        step = active & ok_n
        move = torch.linalg.vector_norm((s_n * (S @ R_n.T) + t_n) - (s * (S @ R.T) + t), dim=-1) / Z
        done = step & (move.max() < tol)
        s = torch.where(step, s_n, s)
        R = torch.where(step, R_n, R)
        t = torch.where(step, t_n, t)
        r = torch.where(step, residuals(s, R, t), r)
        converged = converged | done
        active = step & ~done
    inlier_ratio = (r < inlier_threshold).to(f64).mean()
    residual_median = torch.quantile(r, 0.5)

    # one transfer back
    packed = torch.cat([s.reshape(1), R.reshape(9), t.reshape(3), inlier_ratio.reshape(1), residual_median.reshape(1),
                        iterations.to(f64).reshape(1), converged.to(f64).reshape(1), any_ok.to(f64).reshape(1)])
    out = packed.cpu().numpy()
    if not out[17] > 0:
        raise AlignmentError("register: no valid starting transform (inconsistent correspondences)")
    T = Sim3(float(out[0]), out[1:10].reshape(3, 3), out[10:13])
    return RegistrationResult(T, float(out[13]), float(out[14]), n, int(out[15]), bool(out[16] > 0))
