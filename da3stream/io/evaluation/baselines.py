"""Baselines of the accuracy benchmark and the demo, computed on the SAME predictions the engine gets.

- :func:`da3_streaming_chain`: a DA3-Streaming-style alignment, re-implemented
  here from its published method (DA3-Streaming, after VGGT-Long): each window's
  point map is its depth unprojected with the network's own cameras (camera
  head ``world_from_cam`` and intrinsics; DA3-Streaming does not fit poses to
  rays); consecutive windows are registered on the point maps of the frames they
  share, pixel to pixel, keeping only pixels confident in both windows
  (:class:`Da3StreamingParams`), by a weighted IRLS Sim(3) (closed-form weighted
  Umeyama inside, Huber weights on the point residuals, confidence as the prior
  weight); the Sim(3)s are chained window to window, without loop closure.
  ``use_rays`` is a variant on the ray-map points and ray-fitted poses (the
  engine's own pose source).
- :func:`perfect_gauge_floor`: each window's cameras moved into the world by its
  TRUE ``world_from_chunk`` (the inverse of the simulator's gauge): no chaining
  error at all; what remains is the error inside each window.
- :func:`window_poses`: a window's per-frame ``chunk_from_cam`` from the pose
  source the engine uses (fitted to the rays, like ``align.pose_source: auto``,
  or the camera head).

All three turn a list of windows (their source indices and predictions, in
processing order) into one ``world_from_cam`` per source frame; a frame seen by
several windows takes its pose from the first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from da3stream.alignment.points import points_from_rays, unproject_depth
from da3stream.alignment.ray_pose import pose_from_rays
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.errors import AlignmentError

Prediction = Any  # a da3stream.core.types.Prediction (io does not import core; only its arrays are read)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Da3StreamingParams:
    """Settings of the DA3-Streaming-style alignment (our reading of the published method)."""

    conf_mean_fraction: float = 1.0
    """A pixel of the overlap is kept when its confidence in BOTH windows is at least this times that window's mean overlap confidence."""
    huber_k: float = 1.345
    """Huber threshold in robust standard deviations (1.4826 x the median residual) of the current fit."""
    irls_iters: int = 10
    """IRLS iterations at most."""
    irls_tol: float = 1e-7
    """Stop when the relative change of the weighted mean residual falls below this."""
    max_points: int = 20000
    """Overlap pixels used at most (an even stride over the confident ones)."""
    min_points: int = 50
    """Fewer confident pairs than this: fall back to every finite pair."""


@dataclass(frozen=True)
class WindowRecord:
    """One window as the engine predicted it: source frame indices and the prediction."""

    indices: np.ndarray
    """(N,) int64 source frame indices."""
    prediction: Prediction
    """The prediction, in the window's own chunk frame."""


def window_poses(pred: Prediction, pose_source: str = "auto") -> np.ndarray:
    """(N, 4, 4) ``chunk_from_cam`` of a prediction: fitted to its rays unless ``pose_source`` is "head" or it has none."""
    if pred.rays is None or pose_source == "head":
        return np.asarray(pred.world_from_cam, np.float64)
    try:
        return pose_from_rays(pred.rays, tuple(pred.depth.shape[1:]), pred.ray_conf)[0]
    except AlignmentError as exc:
        log.warning("poses from rays failed (%s); using the camera head", exc)
        return np.asarray(pred.world_from_cam, np.float64)


def _huber_weights(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber IRLS weights of non-negative residuals: 1 inside ``delta``, ``delta / r`` beyond."""
    return np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-300))


def irls_sim3(src: np.ndarray, dst: np.ndarray, prior: np.ndarray, params: Da3StreamingParams = Da3StreamingParams()) -> Sim3:
    """``dst_from_src`` Sim(3) of paired (M, 3) points by weighted IRLS with a Huber kernel.

    ``prior`` (M,) are the confidence weights; each iteration solves the weighted
    closed-form Umeyama with ``prior * huber(residual)``.
    """
    w = np.asarray(prior, np.float64)
    T = umeyama(src, dst, w)
    last = np.inf
    for _ in range(params.irls_iters):
        r = np.linalg.norm(T.apply(src) - dst, axis=1)
        sigma = 1.4826 * float(np.median(r))
        if sigma <= 0:
            break
        wi = w * _huber_weights(r, params.huber_k * sigma)
        T = umeyama(src, dst, wi)
        cost = float(np.sum(wi * r) / np.sum(wi))
        if abs(last - cost) <= params.irls_tol * max(cost, 1e-300):
            break
        last = cost
    return T


def _shared(prev: WindowRecord, cur: WindowRecord) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``prev`` and in ``cur`` of the frames both windows hold."""
    common, ia, ib = np.intersect1d(prev.indices, cur.indices, return_indices=True)
    return ia, ib


def point_map(pred: Prediction, rows: np.ndarray, use_rays: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(points (M, 3), confidence (M,))`` of the frames ``rows`` of a prediction, pixel by pixel.

    ``use_rays``: ``origin + depth * direction`` on the ray grid with the ray
    confidence (when the prediction has rays); otherwise the depth unprojected
    with the camera head's poses and intrinsics (DA3-Streaming's point maps).
    """
    if use_rays and pred.rays is not None:
        pts = points_from_rays(pred.rays[rows], pred.depth[rows])
        conf = pred.ray_conf[rows] if pred.ray_conf is not None else np.ones(pts.shape[:3], np.float32)
    else:
        pts = unproject_depth(pred.depth[rows], pred.intrinsics[rows], np.asarray(pred.world_from_cam, np.float64)[rows])
        conf = pred.conf[rows]
    return pts.reshape(-1, 3), np.asarray(conf, np.float64).reshape(-1)


def _overlap_pairs(prev: WindowRecord, cur: WindowRecord, params: Da3StreamingParams, use_rays: bool):
    """``(src points in cur, dst points in prev, prior weights)`` of the confident shared pixels, or None."""
    ia, ib = _shared(prev, cur)
    if ia.size == 0:
        return None
    dst, ca = point_map(prev.prediction, ia, use_rays)
    src, cb = point_map(cur.prediction, ib, use_rays)
    if dst.shape != src.shape:
        return None
    finite = np.all(np.isfinite(dst), axis=1) & np.all(np.isfinite(src), axis=1)
    keep = finite & (ca >= params.conf_mean_fraction * ca[finite].mean()) & (cb >= params.conf_mean_fraction * cb[finite].mean())
    if keep.sum() < params.min_points:
        keep = finite
    sel = np.flatnonzero(keep)
    sel = sel[:: max(1, sel.size // params.max_points)]
    if sel.size < 3:
        return None
    return src[sel].astype(np.float64), dst[sel].astype(np.float64), np.sqrt(ca[sel] * cb[sel])


def da3_streaming_chain(windows: Sequence[WindowRecord], params: Da3StreamingParams = Da3StreamingParams(),
                        use_rays: bool = False) -> list[Sim3]:
    """``world_from_chunk`` of every window, chained by the DA3-Streaming-style overlap registration.

    ``use_rays``: register ray-map points (see :func:`point_map`) instead of the published depth + camera-head points.

    The first window defines the world. A window that shares no frame (or no
    usable pixel) with the previous one keeps the previous window's transform.
    """
    out = [Sim3.identity()]
    for prev, cur in zip(windows[:-1], windows[1:]):
        pairs = _overlap_pairs(prev, cur, params, use_rays)
        if pairs is None:
            log.warning("DA3-Streaming-style: window at frame %d shares nothing with its predecessor", int(cur.indices[0]))
            out.append(out[-1])
            continue
        try:
            prev_from_cur = irls_sim3(*pairs, params=params)
        except AlignmentError as exc:
            log.warning("DA3-Streaming-style: registration failed at frame %d (%s)", int(cur.indices[0]), exc)
            prev_from_cur = Sim3.identity()
        out.append(out[-1] @ prev_from_cur)
    return out


def trajectory_from_windows(windows: Sequence[WindowRecord], world_from_chunk: Sequence[Sim3],
                            chunk_poses: Callable[[Prediction], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(source indices (F,) sorted, world_from_cam (F, 4, 4))``: each frame from the first window that holds it."""
    poses: dict[int, np.ndarray] = {}
    for rec, T in zip(windows, world_from_chunk):
        world = T.apply_pose(chunk_poses(rec.prediction))
        for k, i in enumerate(rec.indices.tolist()):
            poses.setdefault(int(i), world[k])
    idx = np.array(sorted(poses), dtype=np.int64)
    return idx, np.stack([poses[int(i)] for i in idx])


def da3_streaming_trajectory(windows: Sequence[WindowRecord], params: Da3StreamingParams = Da3StreamingParams(),
                             use_rays: bool = False):
    """``(indices, world_from_cam)`` of the DA3-Streaming-style chain.

    As published (``use_rays`` False): depth + camera-head point maps and the
    camera head's poses. With ``use_rays``: ray-map points and poses fitted to
    the rays, the engine's pose source (a variant, so the comparison does not
    hinge on the pose source alone).
    """
    chain = da3_streaming_chain(windows, params, use_rays)
    if use_rays:
        return trajectory_from_windows(windows, chain, window_poses)
    return trajectory_from_windows(windows, chain, lambda p: np.asarray(p.world_from_cam, np.float64))


def perfect_gauge_floor(windows: Sequence[WindowRecord], chunk_from_world: Callable[[np.ndarray], Sim3],
                        pose_source: str = "auto"):
    """``(indices, world_from_cam)`` with every window placed by its TRUE gauge (``chunk_from_world(indices)``)."""
    world_from_chunk = [chunk_from_world(rec.indices).inverse() for rec in windows]
    return trajectory_from_windows(windows, world_from_chunk, lambda p: window_poses(p, pose_source))
