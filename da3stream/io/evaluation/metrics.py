"""Trajectory accuracy against a ground-truth TUM file: ATE and RPE, as ``evo_ape`` / ``evo_rpe`` compute them.

1. Association: every pose of the trajectory with fewer poses is matched to
   the nearest timestamp of the other one, within ``max_diff`` seconds (evo's
   ``associate_trajectories``, nearest-time method, default 0.01 s).
2. Alignment: one Sim(3) ``gt_from_est`` by Umeyama on the matched camera
   centres (``evo_ape -as``: align + correct scale), applied to the estimate.
3. ATE: distance between matched camera centres after alignment
   (``PoseRelation.translation_part``): RMSE, mean, median, max.
4. RPE with delta = 1 matched pose: ``E_i = (Q_i^-1 Q_i+1)^-1 (P_i^-1 P_i+1)``
   for ground truth Q and aligned estimate P; translation RMSE (norm of the
   translation of E_i) and rotation RMSE (angle of E_i, degrees).
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import invert_rigid
from da3stream.alignment.umeyama import umeyama
from da3stream.errors import AlignmentError, ExportError, check_shape
from da3stream.io.export.trajectory import read_tum

PathLike = Union[str, os.PathLike]

__all__ = ["associate", "ate_over_time", "evaluate", "trajectory_errors"]

MIN_MATCHED = 3
"""Fewest matched poses a Sim(3) alignment needs."""


def associate(stamps_1: np.ndarray, stamps_2: np.ndarray, max_diff: float = 0.01, offset_2: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Match timestamps by nearest time, as evo's ``associate_trajectories`` does.

    The shorter sequence keeps each stamp that has a partner within ``max_diff``
    in the longer one (ties go to the earlier partner; a partner may serve more
    than one stamp). ``offset_2`` is added to ``stamps_2`` for matching.

    Returns:
        ``(idx_1, idx_2)`` int64 index arrays of equal length, in the order of the shorter sequence.
    """
    s1 = np.asarray(stamps_1, dtype=np.float64)
    s2 = np.asarray(stamps_2, dtype=np.float64) + float(offset_2)
    check_shape("associate(stamps_1)", s1, ("N",), "f")
    check_shape("associate(stamps_2)", s2, ("M",), "f")
    swap = s2.shape[0] > s1.shape[0]
    short, long_ = (s1, s2) if swap else (s2, s1)
    if long_.shape[0] == 0 or short.shape[0] == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    order = np.argsort(long_, kind="stable")
    ls = long_[order]
    i_short = np.arange(short.shape[0])
    inside = (short >= ls[0] - max_diff) & (short <= ls[-1] + max_diff)
    up = np.minimum(np.searchsorted(ls, short, side="right"), ls.shape[0] - 1)
    diff_ub = ls[up] - short
    diff_lb = np.where(up > 0, short - ls[np.maximum(up - 1, 0)], np.inf)
    take_ub = (diff_ub <= max_diff) & (diff_ub < diff_lb)
    take_lb = ~take_ub & (diff_lb <= max_diff) & (diff_lb <= diff_ub)
    keep = inside & (take_ub | take_lb)
    best = np.where(take_ub, up, up - 1)[keep]
    idx_short, idx_long = i_short[keep].astype(np.int64), order[best].astype(np.int64)
    return (idx_short, idx_long) if swap else (idx_long, idx_short)


def trajectory_errors(gt_from_cam: np.ndarray, est_from_cam: np.ndarray, *, correct_scale: bool = True) -> dict[str, Any]:
    """ATE and RPE of matched pose pairs ``gt_from_cam`` / ``est_from_cam`` (both (N, 4, 4) float64).

    The estimate is aligned to the ground truth by Umeyama on camera centres
    (Sim(3), or SE(3) when ``correct_scale`` is False) before measuring.
    """
    Q = np.asarray(gt_from_cam, dtype=np.float64)
    P = np.asarray(est_from_cam, dtype=np.float64)
    check_shape("trajectory_errors(gt_from_cam)", Q, ("N", 4, 4), "f")
    check_shape("trajectory_errors(est_from_cam)", P, (Q.shape[0], 4, 4), "f")
    n = Q.shape[0]
    if n < MIN_MATCHED:
        raise ExportError(f"trajectory_errors: {n} matched poses, at least {MIN_MATCHED} needed")
    gt_from_est = umeyama(P[:, :3, 3], Q[:, :3, 3], with_scale=correct_scale)
    Pa = gt_from_est.apply_pose(P)
    ate = np.linalg.norm(Pa[:, :3, 3] - Q[:, :3, 3], axis=1)
    rel_gt = invert_rigid(Q[:-1]) @ Q[1:]
    rel_est = invert_rigid(Pa[:-1]) @ Pa[1:]
    E = invert_rigid(rel_gt) @ rel_est
    rpe_t = np.linalg.norm(E[:, :3, 3], axis=1)
    rpe_r = np.degrees(Rotation.from_matrix(E[:, :3, :3]).magnitude())
    path_length = float(np.linalg.norm(np.diff(Q[:, :3, 3], axis=0), axis=1).sum())
    ate_rmse = float(np.sqrt(np.mean(ate**2)))
    return {
        "ate_rmse": ate_rmse,
        "ate_mean": float(np.mean(ate)),
        "ate_median": float(np.median(ate)),
        "ate_max": float(np.max(ate)),
        "rpe_trans_rmse": float(np.sqrt(np.mean(rpe_t**2))),
        "rpe_rot_rmse_deg": float(np.sqrt(np.mean(rpe_r**2))),
        "n_matched": int(n),
        "path_length": path_length,
        "ate_percent_of_path": 100.0 * ate_rmse / path_length if path_length > 0 else float("nan"),
        "align_scale": float(gt_from_est.s),
    }


def evaluate(store_or_est_tum: Any, gt_tum_path: PathLike, *, max_diff: float = 0.01, offset: float = 0.0,
             correct_scale: bool = True) -> dict[str, Any]:
    """Accuracy of a run (a store, its path, or an estimated TUM file) against a ground-truth TUM file.

    Returns a dict with ``ate_rmse``, ``ate_mean``, ``ate_median``, ``ate_max``,
    ``rpe_trans_rmse``, ``rpe_rot_rmse_deg``, ``n_matched``, ``path_length``
    (of the matched ground truth), ``ate_percent_of_path`` (100 ATE-RMSE / path
    length), plus ``align_scale``, ``n_est``, ``n_gt``, ``max_diff``.
    ``offset`` (s) is added to the estimate's timestamps for matching.
    """
    est_ts, est_poses, gt_ts, gt_poses, idx_gt, idx_est = _matched(store_or_est_tum, gt_tum_path, max_diff, offset)
    try:
        out = trajectory_errors(gt_poses[idx_gt], est_poses[idx_est], correct_scale=correct_scale)
    except AlignmentError as exc:
        raise AlignmentError(f"{gt_tum_path}: cannot align the estimate to the ground truth ({exc})") from None
    out.update(n_est=int(est_ts.shape[0]), n_gt=int(gt_ts.shape[0]), max_diff=float(max_diff))
    return out


def _matched(store_or_est_tum: Any, gt_tum_path: PathLike, max_diff: float, offset: float):
    """Load the estimate and the ground truth and associate them by timestamp (at least MIN_MATCHED pairs)."""
    est_ts, est_poses = _load_estimate(store_or_est_tum)
    gt_ts, gt_poses = read_tum(gt_tum_path)
    idx_gt, idx_est = associate(gt_ts, est_ts, max_diff=max_diff, offset_2=offset)
    if idx_gt.shape[0] < MIN_MATCHED:
        raise ExportError(
            f"{gt_tum_path}: only {idx_gt.shape[0]} of {est_ts.shape[0]} estimated poses have a ground-truth "
            f"timestamp within {max_diff} s (at least {MIN_MATCHED} needed)"
        )
    return est_ts, est_poses, gt_ts, gt_poses, idx_gt, idx_est


def ate_over_time(store_or_est_tum: Any, gt_tum_path: PathLike, *, max_diff: float = 0.01, offset: float = 0.0,
                  correct_scale: bool = True) -> dict[str, np.ndarray]:
    """Per-pose ATE of a run against a ground-truth TUM file, for plots (same matching and alignment as :func:`evaluate`).

    Returns, for the N matched poses in time order: ``timestamp`` (N,) float64
    seconds of the estimate, ``error`` (N,) float64 camera-centre distance after
    the Sim(3) alignment (its RMSE is ``evaluate(...)["ate_rmse"]``), ``gt_xyz``
    and ``est_xyz`` (N, 3) float64 camera centres in the ground-truth frame
    (the estimate aligned).
    """
    est_ts, est_poses, gt_ts, gt_poses, idx_gt, idx_est = _matched(store_or_est_tum, gt_tum_path, max_diff, offset)
    order = np.argsort(est_ts[idx_est], kind="stable")
    idx_gt, idx_est = idx_gt[order], idx_est[order]
    gt_xyz, est_xyz = gt_poses[idx_gt][:, :3, 3], est_poses[idx_est][:, :3, 3]
    try:
        gt_from_est = umeyama(est_xyz, gt_xyz, with_scale=correct_scale)
    except AlignmentError as exc:
        raise AlignmentError(f"{gt_tum_path}: cannot align the estimate to the ground truth ({exc})") from None
    aligned = gt_from_est.apply(est_xyz)
    return {"timestamp": est_ts[idx_est], "error": np.linalg.norm(aligned - gt_xyz, axis=1), "gt_xyz": gt_xyz,
            "est_xyz": aligned}


def _load_estimate(src: Any) -> tuple[np.ndarray, np.ndarray]:
    from da3stream.io.store import RunStore

    if isinstance(src, RunStore) or (isinstance(src, (str, os.PathLike)) and os.path.isdir(src)):
        from da3stream.io.export.run_exports import trajectory

        ts, world_from_cam, _ = trajectory(src)
        return ts, world_from_cam
    return read_tum(src)

