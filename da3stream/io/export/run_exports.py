"""Exports of a run store: TUM and KITTI trajectories, PLY point maps.

Every export reads the store's live poses, so exports written after a loop
closure reflect the corrected geometry: trajectories use the current
``world_from_cam`` of every processed frame, and map points are composed from
their chunk frame with the current ``world_from_chunk`` on the fly.
Trajectories include, by default, interpolated poses of the frames the keyframe
filter dropped (:func:`full_trajectory`; ``keyframes_only=True`` for the stored
keyframes only). COLMAP, nerfstudio and depth exports live in
:mod:`da3stream.io.export.colmap`, :mod:`da3stream.io.export.nerfstudio` and
:mod:`da3stream.io.export.depth`; docs/EXPORTS.md has the table of conventions.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator, Optional, Union

import numpy as np

from da3stream.errors import ExportError
from da3stream.io.export.ply import PlyWriter, write_ply
from da3stream.io.store import RunStore
from da3stream.io.export.trajectory import write_kitti, write_tum

log = logging.getLogger(__name__)

StoreLike = Union[RunStore, str, os.PathLike]

__all__ = ["export_kitti", "export_ply", "export_tum", "collect_points", "full_trajectory", "pose_segments", "selected_points", "trajectory"]


@contextmanager
def _opened(store_or_path: StoreLike) -> Iterator[RunStore]:
    if isinstance(store_or_path, RunStore):
        yield store_or_path
        return
    store = RunStore.open(store_or_path, mode="r")
    try:
        yield store
    finally:
        store.close()


def trajectory(store_or_path: StoreLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamps (F,) float64 s, world_from_cam (F, 4, 4) float64, index (F,) int64)`` of every
    processed frame, in time order (ties keep processing order)."""
    with _opened(store_or_path) as store:
        t = store.frames_table()
    order = np.argsort(t["timestamp"], kind="stable")
    return t["timestamp"][order], t["world_from_cam"][order], t["index"][order]


def full_trajectory(store_or_path: StoreLike, keyframes_only: bool = False, every: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamps (N,), world_from_cam (N, 4, 4), index (N,), is_keyframe (N,) bool)`` in time order.

    ``keyframes_only=False``: a pose for every source frame that was read fine
    (``source/skipped_reason == 0``): stored keyframes keep their pose; frames the
    keyframe filter dropped get one interpolated between the stored keyframes
    before and after them in time (SLERP on rotation, linear on the centre, by
    timestamp). Frames before the first or after the last stored keyframe are
    left out (no extrapolation); subsampled or undecodable frames are not
    poses. A store without source rows gives its keyframes.
    ``keyframes_only=True``: the stored keyframes only (:func:`trajectory`).
    ``every``: then keep every N-th of those poses.
    """
    from da3stream.alignment.smoothing import blend_frame_poses
    from da3stream.io.export.depth import check_every
    from da3stream.io.store import SkipReason

    every = check_every(every, "trajectory")
    with _opened(store_or_path) as store:
        ts_k, T_k, idx_k = trajectory(store)
        src = None if keyframes_only else store.source_table()
    is_kf = np.ones(ts_k.shape[0], bool)
    if src is not None and ts_k.shape[0] and src["index"].shape[0]:
        read = src["skipped_reason"] == int(SkipReason.NONE)
        extra = read & ~np.isin(src["index"], idx_k)
        inside = extra & (src["timestamp"] >= ts_k[0]) & (src["timestamp"] <= ts_k[-1])
        if (extra & ~inside).any():
            log.info("%d dropped frames lie outside the keyframes' time span and get no pose", int((extra & ~inside).sum()))
        ts_d, idx_d = src["timestamp"][inside], src["index"][inside]
        after = np.searchsorted(ts_k, ts_d, side="right")  # first keyframe later than the frame
        after = np.clip(after, 1, ts_k.shape[0] - 1) if ts_k.shape[0] > 1 else np.zeros_like(after)
        before = np.maximum(after - 1, 0)
        span = ts_k[after] - ts_k[before]
        weight = np.clip(np.divide(ts_d - ts_k[before], span, out=np.zeros_like(ts_d), where=span > 0), 0.0, 1.0)
        T_d = blend_frame_poses(T_k[before], T_k[after], weight)
        ts_all = np.concatenate([ts_k, ts_d])
        order = np.lexsort((np.concatenate([idx_k, idx_d]), ts_all))
        ts_k, T_k = ts_all[order], np.concatenate([T_k, T_d])[order]
        idx_k, is_kf = np.concatenate([idx_k, idx_d])[order], np.concatenate([is_kf, np.zeros(ts_d.shape[0], bool)])[order]
    sel = slice(None, None, every)
    return ts_k[sel], T_k[sel], idx_k[sel], is_kf[sel]


def export_tum(store_or_path: StoreLike, path: Union[str, os.PathLike], *, keyframes_only: bool = False, every: int = 1) -> int:
    """Write the trajectory as TUM (real timestamps; see :func:`full_trajectory`); return the pose count."""
    ts, world_from_cam, segments = _trajectory_to_export(store_or_path, path, keyframes_only, every)
    write_tum(path, ts, world_from_cam, segments=segments)
    log.info("wrote %d poses to %s", ts.shape[0], path)
    return int(ts.shape[0])


def export_kitti(store_or_path: StoreLike, path: Union[str, os.PathLike], *, keyframes_only: bool = False, every: int = 1) -> int:
    """Write the trajectory as KITTI poses (time order; see :func:`full_trajectory`); return the pose count."""
    ts, world_from_cam, segments = _trajectory_to_export(store_or_path, path, keyframes_only, every)
    write_kitti(path, world_from_cam)
    _write_segments_sidecar(path, segments)
    log.info("wrote %d poses to %s", ts.shape[0], path)
    return int(ts.shape[0])


def _trajectory_to_export(store_or_path: StoreLike, path, keyframes_only: bool, every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamps (N,), world_from_cam (N, 4, 4), segments (N,))`` of :func:`full_trajectory`; ExportError when empty."""
    with _opened(store_or_path) as store:
        ts, world_from_cam, index, _ = full_trajectory(store, keyframes_only, every)
        segments = pose_segments(store, index)
    if ts.shape[0] == 0:
        raise ExportError(f"{path}: the store has no committed frames to export")
    return ts, world_from_cam, segments


def pose_segments(store_or_path: StoreLike, index: np.ndarray) -> np.ndarray:
    """(N,) int32 trajectory segment of each pose of source ``index`` (N,): that of the last stored keyframe at or before it.

    Segments split the trajectory where a window could not be aligned to the previous one (a scene cut, a
    rejected prediction, a failed alignment); poses of different segments share no common frame.
    """
    with _opened(store_or_path) as store:
        frames = store.frames_table()
        segment = store.chunks_table()["segment"]
    index = np.asarray(index, np.int64)
    if frames["index"].shape[0] == 0:
        return np.zeros(index.shape[0], np.int32)
    order = np.argsort(frames["index"], kind="stable")
    pos = np.clip(np.searchsorted(frames["index"][order], index, side="right") - 1, 0, None)
    return segment[frames["chunk_id"][order]][pos].astype(np.int32)


def _write_segments_sidecar(path: Union[str, os.PathLike], segments: np.ndarray) -> None:
    """KITTI files have no comments: with several segments, ``<path>.segments.json`` lists where each starts."""
    import json

    from da3stream.io.export.trajectory import segment_starts

    sidecar = f"{os.fspath(path)}.segments.json"
    starts = sorted(segment_starts(segments, segments.shape[0]))
    if not starts:
        if os.path.exists(sidecar):
            os.remove(sidecar)  # a stale one from an earlier export would mislead
        return
    bounds = starts + [int(segments.shape[0])]
    doc = {"poses": int(segments.shape[0]),
           "segments": [{"segment": int(segments[a]), "first_pose": a, "poses": b - a} for a, b in zip(bounds, bounds[1:])]}
    try:
        with open(sidecar, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    except OSError as exc:
        raise ExportError(f"{sidecar}: cannot write ({exc.strerror or exc})") from None


def point_stride(n_points: int, max_points: Optional[int]) -> int:
    """Keep every k-th map row so at most ``max_points`` of ``n_points`` remain (1: keep all)."""
    if max_points is None:
        return 1
    if int(max_points) < 1:
        raise ExportError(f"max_points must be >= 1 or None, got {max_points}")
    return max(1, -(-int(n_points) // int(max_points)))


def check_min_conf(min_conf: Optional[float], where) -> Optional[float]:
    """``min_conf`` as a float (or None); ExportError when it is not a finite number."""
    if min_conf is None:
        return None
    if not np.isfinite(min_conf):
        raise ExportError(f"{where}: min_conf must be a finite number, got {min_conf}")
    return float(min_conf)


def selected_points(store: RunStore, *, world: bool = True, min_conf: Optional[float] = None,
                    max_points: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Map blocks ``(xyz (p, 3) float32, rgb (p, 3) uint8)`` after the point selection of the exports.

    ``min_conf``: drop points whose stored confidence (``map/conf``) is below it; points stored
    without confidence (NaN) are dropped too. ``max_points``: keep every k-th map row (an even
    stride over the whole map, before ``min_conf``) so at most that many remain.
    """
    chunks = store.chunks_table()
    nc = int(chunks["point_stop"].shape[0])
    stride = point_stride(int(chunks["point_stop"][-1]) if nc else 0, max_points)
    row0 = 0
    for block in store.iter_map_points(world=world, n_chunks=nc):
        keep = np.ones(block.xyz.shape[0], bool)
        if stride > 1:
            keep &= (np.arange(row0, row0 + keep.size) % stride) == 0
        if min_conf is not None:
            with np.errstate(invalid="ignore"):
                keep &= block.conf.astype(np.float32) >= min_conf
        row0 += keep.size
        yield block.xyz[keep], block.rgb[keep]


def model_label(store: RunStore) -> str:
    """The run's model as exports name it, e.g. ``random:small:seed0 (RANDOM weights: meaningless outputs)``."""
    model = store.model
    label = str(model.get("id", "unknown model"))
    return label + (" (RANDOM weights: meaningless outputs)" if model.get("weights_random") else "")


def _map_comment(store: RunStore, world: bool) -> str:
    return f"da3stream map, {'world' if world else 'chunk'} frame, model {model_label(store)}"


def export_ply(store_or_path: StoreLike, path: Union[str, os.PathLike], voxel: Optional[float] = None,
               world: bool = True, min_conf: Optional[float] = None) -> int:
    """Write the fused map as binary PLY; return the number of points written.

    ``voxel``: downsample to one point per voxel of this edge (world units);
    this loads the whole map into memory. Without it the map is streamed
    chunk block by chunk block (flat memory). ``min_conf``: drop points whose
    fused confidence (``map/conf``, the predictor's confidence, higher = more
    reliable) is below it, before the voxel step (see :func:`selected_points`).
    """
    if voxel is not None and not (np.isfinite(voxel) and voxel > 0):
        raise ExportError(f"{path}: voxel must be a positive number, got {voxel}")
    min_conf = check_min_conf(min_conf, path)
    with _opened(store_or_path) as store:
        if voxel is not None:
            xyz, rgb = store.map_points(world=world, voxel=float(voxel)) if min_conf is None else _voxel_selected(
                store, world, min_conf, float(voxel))
            write_ply(path, xyz, rgb, comment=_map_comment(store, world))
            n = int(xyz.shape[0])
        else:
            if min_conf is None:
                chunks = store.chunks_table()
                n = int(chunks["point_stop"][-1]) if chunks["point_stop"].shape[0] else 0
            else:  # a first pass counts the points kept: the PLY header declares the count
                n = sum(int(xyz.shape[0]) for xyz, _ in selected_points(store, world=world, min_conf=min_conf))
            with PlyWriter(path, n, comment=_map_comment(store, world)) as w:
                for xyz, rgb in selected_points(store, world=world, min_conf=min_conf):
                    w.write(xyz, rgb)
    log.info("wrote %d points to %s", n, path)
    return n


def collect_points(store: RunStore, *, world: bool = True, min_conf: Optional[float] = None,
                   max_points: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """All points of :func:`selected_points` in memory: ``(xyz (P, 3) float32, rgb (P, 3) uint8)``."""
    blocks = list(selected_points(store, world=world, min_conf=min_conf, max_points=max_points))
    xyz = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros((0, 3), np.float32)
    rgb = np.concatenate([b[1] for b in blocks]) if blocks else np.zeros((0, 3), np.uint8)
    return xyz, rgb


def _voxel_selected(store: RunStore, world: bool, min_conf: float, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """The points kept by ``min_conf``, voxel-downsampled."""
    from da3stream.alignment.voxel import voxel_downsample

    xyz, rgb = collect_points(store, world=world, min_conf=min_conf)
    return voxel_downsample(xyz, rgb, voxel) if xyz.shape[0] else (xyz, rgb)
