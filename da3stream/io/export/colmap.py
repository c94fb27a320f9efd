"""COLMAP sparse models (``cameras``, ``images``, ``points3D``; text and binary) from a run store.

Conventions converted here, once:

* **Poses.** COLMAP stores ``cam_from_world`` (world -> camera) as a unit
  quaternion **w first** (``quat_wxyz``, normalised with ``qw >= 0``) and a
  translation. We invert the store's rigid ``world_from_cam``. Camera axes are
  OpenCV in both (+x right, +y down, +z forward).
* **Pixels.** COLMAP puts the image corner at 0: the centre of the top-left
  pixel is (0.5, 0.5). The store's intrinsics put that centre at (0, 0)
  (OpenCV, docs/CONVENTIONS.md). So the principal point is written as
  ``cx + 0.5, cy + 0.5`` and every 2D observation is shifted the same way.
* **Cameras.** One PINHOLE camera (``fx fy cx cy``) per group of frames whose
  intrinsics agree within ``intrinsics_tol`` pixels, at the ORIGINAL image
  resolution (``image_hw``). Observations are projected with the group's
  camera, so the model is consistent.
* **Points.** The fused map, composed into the world frame with the live
  ``world_from_chunk`` (float64). Each point is observed in the exported
  frames of its chunk (``chunks/frame_start .. frame_stop``, overlap frames
  included) where it projects inside the image, in front of the camera and —
  with ``depth_tolerance`` — within that relative distance of the frame's
  stored depth (so occluded views are not listed). The 2D observation is the
  exact projection, so the reprojection error is 0. Points with no such
  frame are not written (their count is returned).

``images.txt`` has exactly two lines per image: the pose line and the
POINTS2D line (``X Y POINT3D_ID`` triples), which is empty when the image
observes nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import Sim3, invert_rigid
from da3stream.errors import ExportError, check_shape
from da3stream.io.export.depth import (
    chunk_scales, check_every, export_rows, frame_stem, grid_intrinsics, world_depth,
)
from da3stream.io.export.colmap_files import COLMAP_FORMATS, ColmapModel, write_colmap_model
from da3stream.io.export.run_exports import point_stride
from da3stream.io.export.source_frames import write_source_images
from da3stream.io.store import RunStore

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = [
    "COLMAP_FORMATS", "ColmapModel", "colmap_model_from_store", "export_colmap", "group_intrinsics", "opencv_to_corner_pixels",
    "spread_tracks", "write_colmap_model",
]

PIXEL_CENTRE = 0.5
"""Coordinate of the top-left pixel's centre in COLMAP / nerfstudio images (0 in the store's OpenCV pixels)."""
DEFAULT_MAX_TRACK = 8
"""Default cap on observations per point (a window can hold ~100 frames that all see a point)."""
SHARED_CAMERA_RTOL = 1e-9
"""Intrinsics that agree within this relative tolerance are one camera (a known calibration stored per frame)."""
SKEW_TOL = 1e-9
"""Largest |K[0, 1]| (pixels) accepted for a PINHOLE camera (which has no skew)."""


# ----------------------------------------------------------------------------- conventions


def opencv_to_corner_pixels(uv: np.ndarray) -> np.ndarray:
    """(..., 2) OpenCV pixel coordinates (pixel centres at integers) -> corner-origin (COLMAP, nerfstudio)."""
    return np.asarray(uv, dtype=np.float64) + PIXEL_CENTRE


def pinhole_params(K: np.ndarray) -> np.ndarray:
    """(N, 3, 3) OpenCV intrinsics -> (N, 4) ``fx, fy, cx, cy`` with a corner-origin principal point."""
    K = np.asarray(K, dtype=np.float64)
    check_shape("pinhole_params(K)", K, ("N", 3, 3), "f")
    skew = np.abs(K[:, 0, 1])
    if skew.size and skew.max() > SKEW_TOL:
        raise ExportError(f"intrinsics have skew {skew.max():.3g} px; the PINHOLE camera model has none")
    c = opencv_to_corner_pixels(K[:, :2, 2])
    return np.stack([K[:, 0, 0], K[:, 1, 1], c[:, 0], c[:, 1]], axis=1)


def group_intrinsics(params: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Group frames whose ``params`` (N, 4) all agree within ``tol`` of a group's first member.

    Returns ``(group (N,) int64 in 0..G-1, in order of first appearance; representative params (G, 4))``.
    """
    P = np.asarray(params, dtype=np.float64)
    check_shape("group_intrinsics(params)", P, ("N", 4), "f")
    reps: list[np.ndarray] = []
    group = np.empty(P.shape[0], np.int64)
    for i, p in enumerate(P):
        for g, r in enumerate(reps):
            if np.abs(p - r).max() <= tol:
                group[i] = g
                break
        else:
            group[i] = len(reps)
            reps.append(p)
    return group, (np.stack(reps) if reps else np.zeros((0, 4)))


def spread_tracks(visible: np.ndarray, max_len: int) -> np.ndarray:
    """Keep at most ``max_len`` views per point, spread evenly over the frames that see it.

    ``visible``: (F, P) bool, frame k sees point p (frames in time order).
    A point seen ``n > max_len`` times keeps the first view of each of ``max_len``
    equal runs of its views; points seen ``n <= max_len`` times keep all.
    Returns a new (F, P) bool array.
    """
    check_shape("spread_tracks(visible)", visible, ("F", "P"), "b")
    rank = np.cumsum(visible, axis=0) - 1  # rank of each view among the point's views
    n = visible.sum(axis=0)
    bucket = (rank * max_len) // np.maximum(n, 1)
    prev = ((rank - 1) * max_len) // np.maximum(n, 1)
    return visible & ((rank == 0) | (bucket != prev))


def cam_from_world_quat_t(world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4, 4) rigid ``world_from_cam`` -> ``(quat_wxyz (N, 4) with qw >= 0, t (N, 3))`` of ``cam_from_world``."""
    cam_from_world = invert_rigid(world_from_cam)
    quat_xyzw = Rotation.from_matrix(cam_from_world[:, :3, :3]).as_quat() if len(cam_from_world) else np.zeros((0, 4))
    quat_wxyz = quat_xyzw[:, [3, 0, 1, 2]]
    quat_wxyz = np.where(quat_wxyz[:, :1] < 0, -quat_wxyz, quat_wxyz)
    return quat_wxyz, cam_from_world[:, :3, 3].copy()


# ----------------------------------------------------------------------------- from a store


def colmap_model_from_store(store: RunStore, *, every: int = 1, intrinsics_tol: float = 1e-6,
                            depth_tolerance: Optional[float] = 0.05, max_track_length: Optional[int] = DEFAULT_MAX_TRACK,
                            name_format: str = "{stem}.png", single_camera: Optional[bool] = None,
                            max_points: Optional[int] = None) -> tuple[ColmapModel, dict]:
    """Build the COLMAP model of a store: ``(model, stats)``.

    Args:
        every: export every N-th stored frame (time order).
        intrinsics_tol: frames whose ``fx, fy, cx, cy`` agree within this many pixels share a camera.
        depth_tolerance: a point is observed in a frame only when its camera-z is within this fraction of
            the frame's stored depth at that pixel (occlusion test); None skips the test.
        max_track_length: keep at most this many observations per point, spread evenly over the frames
            that see it (:func:`spread_tracks`); None keeps all (long windows make very long tracks).
        name_format: image file name; ``{stem}`` is ``frame_XXXXXX`` (the source index), ``{index}`` the index.
        single_camera: True: one camera for every image (the median ``fx, fy, cx, cy``); False: group by
            ``intrinsics_tol``; None (default): one camera when all exported intrinsics agree within
            :data:`SHARED_CAMERA_RTOL` relative (known calibration), else group by ``intrinsics_tol``.
        max_points: keep at most this many map points (every k-th map row, before the visibility test;
            :func:`~da3stream.io.export.run_exports.selected_points`); None keeps all.

    ``stats``: ``cameras``, ``images``, ``points``, ``observations``, ``points_without_view``.
    """
    _check_model_options(store, intrinsics_tol, depth_tolerance, max_track_length)
    table = store.frames_table()
    rows = export_rows(table, every)
    if rows.size == 0:
        raise ExportError(f"{store.path}: the store has no committed frames to export")
    H, W = store.image_hw
    group, cam_params, K_cam = _cameras(table["intrinsics"][rows], float(intrinsics_tol), single_camera)
    quat_wxyz, t = cam_from_world_quat_t(table["world_from_cam"][rows])
    names = tuple(name_format.format(stem=frame_stem(i), index=int(i)) for i in table["index"][rows])
    if len(set(names)) != len(names):
        raise ExportError(f"{store.path}: name_format {name_format!r} gives duplicate image names")
    pts = _observed_points(store, table, rows, group, K_cam, depth_tolerance, max_track_length, max_points)
    if pts.n_dropped:
        log.info("%s: %d map points are seen by no exported frame of their chunk and are not written", store.path, pts.n_dropped)
    order = np.argsort(pts.obs_image, kind="stable")
    model = ColmapModel(
        camera_id=np.arange(1, len(cam_params) + 1, dtype=np.int64),
        camera_wh=np.tile(np.array([[W, H]], np.int64), (len(cam_params), 1)),
        camera_params=cam_params,
        image_id=np.arange(1, rows.size + 1, dtype=np.int64),
        image_camera_id=group + 1,
        image_name=names,
        quat_wxyz=quat_wxyz,
        cam_from_world_t=t,
        point_id=np.arange(1, pts.xyz.shape[0] + 1, dtype=np.int64),
        point_xyz=pts.xyz,
        point_rgb=pts.rgb,
        point_error=np.zeros(pts.xyz.shape[0]),
        obs_image=pts.obs_image[order],
        obs_xy=pts.obs_xy[order],
        obs_point=pts.obs_point[order],
    )
    stats = {"cameras": int(len(cam_params)), "images": int(rows.size), "points": int(pts.xyz.shape[0]),
             "observations": int(model.obs_image.shape[0]), "points_without_view": pts.n_dropped}
    return model, stats


def _check_model_options(store: RunStore, intrinsics_tol: float, depth_tolerance: Optional[float],
                         max_track_length: Optional[int]) -> None:
    if not (np.isfinite(intrinsics_tol) and intrinsics_tol >= 0):
        raise ExportError(f"{store.path}: intrinsics_tol must be >= 0, got {intrinsics_tol}")
    if depth_tolerance is not None and not (np.isfinite(depth_tolerance) and depth_tolerance > 0):
        raise ExportError(f"{store.path}: depth_tolerance must be a positive number or None, got {depth_tolerance}")
    if max_track_length is not None and int(max_track_length) < 1:
        raise ExportError(f"{store.path}: max_track_length must be >= 1 or None, got {max_track_length}")


def shares_one_camera(params: np.ndarray, rtol: float = None) -> bool:
    """True when every row of ``params`` (N, 4) equals the first within ``rtol`` relative (of its magnitude)."""
    rtol = SHARED_CAMERA_RTOL if rtol is None else rtol
    P = np.asarray(params, dtype=np.float64)
    return bool(P.shape[0] == 0 or np.all(np.abs(P - P[0]) <= rtol * np.maximum(np.abs(P[0]), 1.0)))


def _cameras(intrinsics: np.ndarray, tol: float, single: Optional[bool] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(group (N,), params (C, 4) COLMAP pixels, K (C, 3, 3) OpenCV pixels)`` of the exported frames' cameras."""
    params = pinhole_params(intrinsics)
    if single or (single is None and shares_one_camera(params)):
        group, cam_params = np.zeros(params.shape[0], np.int64), np.median(params, axis=0, keepdims=True)
    else:
        group, cam_params = group_intrinsics(params, tol)
    K_cam = np.zeros((len(cam_params), 3, 3))
    K_cam[:, 0, 0], K_cam[:, 1, 1] = cam_params[:, 0], cam_params[:, 1]
    K_cam[:, :2, 2] = cam_params[:, 2:4] - PIXEL_CENTRE  # back to OpenCV pixels for projecting
    K_cam[:, 2, 2] = 1.0
    return group, cam_params, K_cam


class _Points(NamedTuple):
    """The model's points and their observations, before sorting by image."""

    xyz: np.ndarray  # (P, 3) float64 world frame
    rgb: np.ndarray  # (P, 3) uint8
    obs_image: np.ndarray  # (O,) int64 position of the observing image in the export
    obs_xy: np.ndarray  # (O, 2) float64 COLMAP pixels
    obs_point: np.ndarray  # (O,) int64 point index
    n_dropped: int  # map points no exported frame of their chunk sees


def _observed_points(store: RunStore, table: dict, rows: np.ndarray, group: np.ndarray, K_cam: np.ndarray,
                     depth_tolerance: Optional[float], max_track_length: Optional[int],
                     max_points: Optional[int] = None) -> _Points:
    """Every map point seen by an exported frame of its chunk, composed into the world, with its observations."""
    # the frame's position in the export, by store row (-1: not exported)
    pos_of_row = np.full(table["index"].shape[0], -1, np.int64)
    pos_of_row[rows] = np.arange(rows.size)
    chunks = store.chunks_table()
    scales = chunk_scales(store)
    K_grid = grid_intrinsics(store, table["intrinsics"])
    image_hw, depth_hw = store.image_hw, store.depth_hw
    xyz_all, rgb_all, obs_img, obs_xy, obs_pt = [], [], [], [], []
    n_points = n_dropped = 0
    stride = point_stride(store.n_points, max_points)
    row0 = 0
    for block in store.iter_map_points(world=False):
        subsample = (np.arange(row0, row0 + block.chunk_id.size) % stride) == 0
        row0 += block.chunk_id.size
        for c in np.unique(block.chunk_id):
            sel = (block.chunk_id == c) & subsample
            W_c = Sim3.from_array(chunks["world_from_chunk"][c])
            X = W_c.apply(block.xyz[sel].astype(np.float64))
            frame_rows = np.arange(int(chunks["frame_start"][c]), int(chunks["frame_stop"][c]))
            frame_rows = frame_rows[pos_of_row[frame_rows] >= 0]
            frame_rows = frame_rows[np.argsort(pos_of_row[frame_rows], kind="stable")]
            depth = (world_depth(store, frame_rows, table["chunk_id"], scales)
                     if depth_tolerance is not None and frame_rows.size else None)
            cams = [(int(pos_of_row[r]), invert_rigid(table["world_from_cam"][r]), K_cam[group[pos_of_row[r]]], K_grid[r])
                    for r in frame_rows]
            has_view, obs = _chunk_observations(X, cams, depth, image_hw, depth_hw, depth_tolerance, max_track_length)
            new_index = np.cumsum(has_view) - 1 + n_points
            for pos, idx, uv in obs:
                obs_img.append(np.full(idx.size, pos, np.int64))
                obs_xy.append(opencv_to_corner_pixels(uv))
                obs_pt.append(new_index[idx])
            xyz_all.append(X[has_view])
            rgb_all.append(block.rgb[sel][has_view])
            n_points += int(has_view.sum())
            n_dropped += int((~has_view).sum())
    return _Points(
        xyz=np.concatenate(xyz_all) if xyz_all else np.zeros((0, 3)),
        rgb=np.concatenate(rgb_all) if rgb_all else np.zeros((0, 3), np.uint8),
        obs_image=np.concatenate(obs_img) if obs_img else np.zeros(0, np.int64),
        obs_xy=np.concatenate(obs_xy) if obs_xy else np.zeros((0, 2)),
        obs_point=np.concatenate(obs_pt) if obs_pt else np.zeros(0, np.int64),
        n_dropped=n_dropped,
    )


def _chunk_observations(X: np.ndarray, cams: list, depth: Optional[np.ndarray], image_hw: tuple, depth_hw: tuple,
                        depth_tolerance: Optional[float], max_track_length: Optional[int]) -> tuple[np.ndarray, list]:
    """Observations of one chunk's world points ``X`` (P, 3) in its exported frames.

    ``cams``: per frame ``(export position, cam_from_world (4, 4), K (3, 3) of its COLMAP camera in OpenCV
    pixels, depth-grid K (3, 3))``; ``depth``: (F, h, w) world-unit depth of those frames or None.
    Returns ``(has_view (P,) bool, [(export position, point indices (n,), uv (n, 2) OpenCV pixels), ...])``.
    """
    visible = np.zeros((len(cams), X.shape[0]), bool)
    for k, (_, cam_from_world, K, K_grid) in enumerate(cams):
        visible[k] = _visible(X, cam_from_world, K, image_hw, None if depth is None else depth[k], K_grid, depth_hw,
                              depth_tolerance)[1]
    if max_track_length is not None:
        visible = spread_tracks(visible, int(max_track_length))
    obs = []
    for k, (pos, cam_from_world, K, _) in enumerate(cams):
        idx = np.flatnonzero(visible[k])
        uv, _ = _visible(X[idx], cam_from_world, K, image_hw, None, None, depth_hw, None)
        obs.append((pos, idx, uv))
    return visible.any(axis=0), obs


def _visible(X: np.ndarray, cam_from_world: np.ndarray, K: np.ndarray, image_hw: tuple, depth: Optional[np.ndarray],
             K_grid: Optional[np.ndarray], depth_hw: tuple, depth_tolerance: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """Project world points ``X`` (P, 3) into one frame: ``(uv (P, 2) OpenCV pixels, visible (P,) bool)``.

    Visible: in front of the camera, inside the image and, with ``depth`` (h, w) world units, within
    ``depth_tolerance`` (relative) of the depth at the grid pixel the store unprojected with ``K_grid``.
    """
    x = X @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    z = x[:, 2]
    front = z > 0
    inv_z = 1.0 / np.where(front, z, 1.0)
    xn, yn = x[:, 0] * inv_z, x[:, 1] * inv_z  # normalised image coordinates (camera ray with z = 1)
    uv = np.empty((X.shape[0], 2))
    uv[:, 0] = K[0, 0] * xn + K[0, 2]
    uv[:, 1] = K[1, 1] * yn + K[1, 2]
    H, W = image_hw
    lo = -PIXEL_CENTRE  # COLMAP's image spans [0, W) x [0, H) in corner-origin pixels
    ok = front & (uv[:, 0] >= lo) & (uv[:, 0] < W + lo) & (uv[:, 1] >= lo) & (uv[:, 1] < H + lo)
    if depth is None or not ok.any():
        return uv, ok
    idx = np.flatnonzero(ok)
    xs, ys = xn[idx], yn[idx]
    j = np.rint(K_grid[0, 0] * xs + K_grid[0, 1] * ys + K_grid[0, 2])
    i = np.rint(K_grid[1, 1] * ys + K_grid[1, 2])
    h, w = depth_hw
    inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    idx, i, j = idx[inside], i[inside].astype(np.int64), j[inside].astype(np.int64)
    d = depth[i, j]
    with np.errstate(invalid="ignore"):
        near = np.isfinite(d) & (d > 0) & (np.abs(z[idx] - d) <= depth_tolerance * d)
    visible = np.zeros(X.shape[0], bool)
    visible[idx[near]] = True
    return uv, visible


# ----------------------------------------------------------------------------- export


def export_colmap(store_or_path, out_dir: PathLike, *, fmt: str = "bin", every: int = 1, intrinsics_tol: float = 1e-6,
                  depth_tolerance: Optional[float] = 0.05, max_track_length: Optional[int] = DEFAULT_MAX_TRACK,
                  name_format: str = "{stem}.png", single_camera: Optional[bool] = None,
                  max_points: Optional[int] = None, images: Optional[PathLike] = None, source: Optional[PathLike] = None) -> dict:
    """Write the store as a COLMAP sparse model into ``out_dir`` (``cameras``, ``images``, ``points3D``).

    ``fmt``: ``"text"`` (``.txt``) or ``"bin"`` (``.bin``). ``images``: also write the exported frames
    into this folder under their image names, at the ORIGINAL resolution the cameras describe, re-read
    from the run's source (``source``: where it is now, default the path the store records; see
    :mod:`da3stream.io.export.source_frames`). The other arguments are those of
    :func:`colmap_model_from_store`. Returns its stats plus ``format``, ``files`` (and ``image_files``).
    """
    out = Path(out_dir)
    if fmt not in COLMAP_FORMATS:
        raise ExportError(f"{out}: COLMAP format must be one of {', '.join(COLMAP_FORMATS)}, got {fmt!r}")
    every = check_every(every, str(out))
    owned = not isinstance(store_or_path, RunStore)
    store = RunStore.open(store_or_path, mode="r") if owned else store_or_path
    try:
        model, stats = colmap_model_from_store(store, every=every, intrinsics_tol=intrinsics_tol, depth_tolerance=depth_tolerance,
                                               max_track_length=max_track_length, name_format=name_format,
                                               single_camera=single_camera, max_points=max_points)
        paths = write_colmap_model(model, out, fmt)
        if images is not None:
            table = store.frames_table()
            index = table["index"][export_rows(table, every)]
            stats["image_files"] = write_source_images(store, index, model.image_name, images, source)
    finally:
        if owned:
            store.close()
    log.info("wrote COLMAP model (%s) to %s: %d cameras, %d images, %d points, %d observations",
             fmt, out, stats["cameras"], stats["images"], stats["points"], stats["observations"])
    return {**stats, "format": fmt, "files": [str(p) for p in paths]}
