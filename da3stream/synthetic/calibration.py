"""Calibration checks of the simulated predictor on synthetic sequences.

A deliberately small stand-in for the engine's window chaining, used to pin
the simulator's error model (tests, docs/SIMULATOR.md, ``python -m
da3stream.synthetic calibrate``). It is not the engine's aligner: it has no
gating, no loop closure and a simple robust loop.

Three ways to chain consecutive windows through their shared frames:

- ``"points"``: Sim(3) fitted to same-pixel depth + ray points of the shared
  frames (rays when the prediction has them, else depth unprojected with the
  predicted poses), with confidence filtering and residual trimming;
- ``"poses"``: the predicted camera poses alone (rotations averaged, scale
  from the spread of the shared camera centres, translation from their means);
- ``"poses_depth_scale"``: as ``"poses"``, but the scale comes from the ratio
  of median depths when the shared cameras barely move.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.core.types import FrameBatch, Prediction
from da3stream.errors import AlignmentError

CHAIN_MODES = ("points", "poses", "poses_depth_scale")


def prediction_points(pred: Prediction, frames: np.ndarray) -> np.ndarray:
    """(K * h * w, 3) float64 chunk-frame points of ``frames``: rays when present (same grid), else depth + poses."""
    frames = np.asarray(frames)
    if pred.rays is not None and pred.rays.shape[1:3] == pred.depth.shape[1:3]:
        o, d = pred.rays[frames, ..., :3], pred.rays[frames, ..., 3:]
        return (o + pred.depth[frames][..., None] * d).reshape(-1, 3).astype(np.float64)
    h, w = pred.depth.shape[1:]
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    out = []
    for i in frames:
        cam = np.linalg.inv(pred.intrinsics[i]) @ pix * pred.depth[i].ravel()
        out.append((pred.world_from_cam[i, :3, :3] @ cam + pred.world_from_cam[i, :3, 3:4]).T)
    return np.concatenate(out)


def _relative(pa: Prediction, pb: Prediction, fa: np.ndarray, fb: np.ndarray, mode: str,
              rng: np.random.Generator, n_points: int, baseline_rel: float) -> Sim3:
    """``a_from_b`` for shared frames ``fa`` (in A) and ``fb`` (in B)."""
    if mode == "points":
        dst, src = prediction_points(pa, fa), prediction_points(pb, fb)
        conf = np.minimum(pa.conf[fa], pb.conf[fb]).ravel()
        good = np.flatnonzero((conf > np.quantile(conf, 0.3)) & np.all(np.isfinite(dst), 1) & np.all(np.isfinite(src), 1))
        sel = rng.choice(good, min(n_points, good.size), replace=False)
        dst, src = dst[sel], src[sel]
        centre = pa.world_from_cam[fa[0], :3, 3]
        rel = umeyama(src, dst, rank_tol=None)
        for _ in range(5):  # trim residuals (relative to the distance from the camera)
            r = np.linalg.norm(rel.apply(src) - dst, axis=1) / np.linalg.norm(dst - centre, axis=1)
            keep = r < 3.0 * np.median(r)
            rel = umeyama(src[keep], dst[keep], rank_tol=None)
        return rel
    M = np.sum(pa.world_from_cam[fa, :3, :3] @ np.swapaxes(pb.world_from_cam[fb, :3, :3], 1, 2), axis=0)
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    ca, cb = pa.world_from_cam[fa, :3, 3], pb.world_from_cam[fb, :3, 3]
    sa = np.linalg.norm(ca - ca.mean(0), axis=1).mean()
    sb = np.linalg.norm(cb - cb.mean(0), axis=1).mean()
    da, db = float(np.median(pa.depth[fa])), float(np.median(pb.depth[fb]))
    if mode == "poses_depth_scale" and sb < baseline_rel * db:
        s = da / db
    else:
        s = sa / max(sb, 1e-12)
    return Sim3(s, R, ca.mean(0) - s * R @ cb.mean(0))


def chain_windows(preds: Sequence[Prediction], windows: Sequence[np.ndarray], mode: str, *, seed: int = 0,
                  n_points: int = 3000, baseline_rel: float = 0.05) -> np.ndarray:
    """Chain windows (the first one is the world) and return ``world_from_cam`` (F, 4, 4) of every frame.

    Args:
        preds: one prediction per window.
        windows: the windows' source indices (sorted, consecutive windows share frames).
        mode: one of :data:`CHAIN_MODES`.
        seed: seeds the point sampling.
        n_points: points sampled per window pair ("points" mode).
        baseline_rel: "poses_depth_scale" takes the depth ratio below this camera spread / median depth.

    A frame seen by several windows keeps the pose from the first one.
    """
    if mode not in CHAIN_MODES:
        raise AlignmentError(f"chain_windows: mode must be one of {CHAIN_MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    world_from_chunk = Sim3.identity()
    est: dict[int, np.ndarray] = {}
    for k, (idx, p) in enumerate(zip(windows, preds)):
        if k:
            prev_idx, prev = windows[k - 1], preds[k - 1]
            shared = np.intersect1d(prev_idx, idx)
            if shared.size == 0:
                raise AlignmentError(f"chain_windows: windows {k - 1} and {k} share no frame")
            rel = _relative(prev, p, np.searchsorted(prev_idx, shared), np.searchsorted(idx, shared), mode, rng,
                            n_points, baseline_rel)
            world_from_chunk = world_from_chunk @ rel
        for j, i in enumerate(idx):
            est.setdefault(int(i), world_from_chunk.apply_pose(p.world_from_cam[j]))
    return np.stack([est[i] for i in sorted(est)])


def ate_rmse(est_centres: np.ndarray, gt_centres: np.ndarray) -> float:
    """RMSE (metres) of camera centres (F, 3) after the best Sim(3) alignment to the ground truth."""
    T = umeyama(est_centres, gt_centres, rank_tol=None)
    return float(np.sqrt(np.mean(np.sum((T.apply(est_centres) - gt_centres) ** 2, axis=1))))


def window_starts(n_frames: int, chunk: int, overlap: int) -> list[np.ndarray]:
    """Consecutive windows of ``chunk`` frames sharing ``overlap`` frames (the last one may be shorter)."""
    if not 0 <= overlap < chunk:
        raise AlignmentError(f"window_starts: need 0 <= overlap < chunk, got {overlap}, {chunk}")
    return [np.arange(s, min(s + chunk, n_frames)) for s in range(0, max(1, n_frames - overlap), chunk - overlap)]


def calibrate(gt, predictor, *, chunk: int = 24, overlap: int = 8, seed: int = 0,
              path_length_m: Optional[float] = None) -> dict:
    """ATE (metres and % of the path) of each chaining mode on one sequence.

    Args:
        gt: a :class:`~da3stream.synthetic.predictor.GroundTruth` (true poses).
        predictor: a predictor over the same frames (e.g. a SimulatedPredictor).
        chunk, overlap: window layout.
        seed: seeds the point sampling.
        path_length_m: for the percentages (None: measured from the true centres).
    """
    P = gt.world_from_cam
    windows = window_starts(P.shape[0], chunk, overlap)
    h, w = gt.image_hw
    preds = [predictor.predict(FrameBatch(np.zeros((len(i), h, w, 3), np.uint8), i, i / 30.0)) for i in windows]
    gt_c = P[:, :3, 3]
    length = path_length_m or float(np.sum(np.linalg.norm(np.diff(gt_c, axis=0), axis=1)))
    out = {"n_windows": len(windows), "path_length_m": length}
    for mode in CHAIN_MODES:
        ate = ate_rmse(chain_windows(preds, windows, mode, seed=seed)[:, :3, 3], gt_c)
        out[f"ate_{mode}_m"] = ate
        out[f"ate_{mode}_pct"] = 100.0 * ate / length
    return out
