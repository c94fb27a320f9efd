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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import Sim3, invert_rigid
from da3stream.errors import ExportError, check_shape
from da3stream.io.export.depth import (
    chunk_scales, check_every, export_rows, frame_stem, grid_intrinsics, make_dir, world_depth,
)
from da3stream.io.store import RunStore

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = [
    "COLMAP_FORMATS", "ColmapModel", "colmap_model_from_store", "export_colmap", "group_intrinsics", "opencv_to_corner_pixels",
    "spread_tracks", "write_colmap_model",
]

COLMAP_FORMATS = ("text", "bin")
PINHOLE_MODEL_ID = 1
"""COLMAP's id of the PINHOLE camera model (params fx, fy, cx, cy)."""
PIXEL_CENTRE = 0.5
"""Coordinate of the top-left pixel's centre in COLMAP / nerfstudio images (0 in the store's OpenCV pixels)."""
DEFAULT_MAX_TRACK = 8
"""Default cap on observations per point (a window can hold ~100 frames that all see a point)."""
SKEW_TOL = 1e-9
"""Largest |K[0, 1]| (pixels) accepted for a PINHOLE camera (which has no skew)."""


@dataclass(frozen=True)
class ColmapModel:
    """A COLMAP sparse model as flat arrays. C cameras, N images, P points, O observations."""

    camera_id: np.ndarray
    """(C,) int64 camera ids (1-based)."""
    camera_wh: np.ndarray
    """(C, 2) int64 width, height in pixels."""
    camera_params: np.ndarray
    """(C, 4) float64 PINHOLE ``fx, fy, cx, cy`` in COLMAP pixels (corner origin)."""
    image_id: np.ndarray
    """(N,) int64 image ids (1-based)."""
    image_camera_id: np.ndarray
    """(N,) int64 camera of each image."""
    image_name: tuple
    """N file names."""
    quat_wxyz: np.ndarray
    """(N, 4) float64 rotation of ``cam_from_world``, w first."""
    cam_from_world_t: np.ndarray
    """(N, 3) float64 translation of ``cam_from_world``."""
    point_id: np.ndarray
    """(P,) int64 point ids (1-based)."""
    point_xyz: np.ndarray
    """(P, 3) float64 world-frame positions."""
    point_rgb: np.ndarray
    """(P, 3) uint8 colours."""
    point_error: np.ndarray
    """(P,) float64 mean reprojection error in pixels."""
    obs_image: np.ndarray
    """(O,) int64 index (0..N-1, not the id) of the observing image; sorted, so each image's observations are contiguous."""
    obs_xy: np.ndarray
    """(O, 2) float64 observation in COLMAP pixels."""
    obs_point: np.ndarray
    """(O,) int64 index (0..P-1, not the id) of the observed point."""

    def point2d_idx(self) -> np.ndarray:
        """(O,) int64 position of each observation within its image's POINTS2D list."""
        starts = np.searchsorted(self.obs_image, np.arange(self.image_id.shape[0]))
        return np.arange(self.obs_image.shape[0]) - starts[self.obs_image]

    def check(self) -> None:
        """Raise :class:`ExportError` on inconsistent arrays (shapes, indices, ordering)."""
        c, n, p, o = (self.camera_id.shape[0], self.image_id.shape[0], self.point_id.shape[0], self.obs_image.shape[0])
        check_shape("ColmapModel.camera_wh", self.camera_wh, (c, 2), "iu")
        check_shape("ColmapModel.camera_params", self.camera_params, (c, 4), "f")
        check_shape("ColmapModel.image_camera_id", self.image_camera_id, (n,), "iu")
        check_shape("ColmapModel.quat_wxyz", self.quat_wxyz, (n, 4), "f")
        check_shape("ColmapModel.cam_from_world_t", self.cam_from_world_t, (n, 3), "f")
        check_shape("ColmapModel.point_xyz", self.point_xyz, (p, 3), "f")
        check_shape("ColmapModel.point_rgb", self.point_rgb, (p, 3), "u")
        check_shape("ColmapModel.point_error", self.point_error, (p,), "f")
        check_shape("ColmapModel.obs_xy", self.obs_xy, (o, 2), "f")
        check_shape("ColmapModel.obs_point", self.obs_point, (o,), "iu")
        if len(self.image_name) != n:
            raise ExportError(f"ColmapModel: {len(self.image_name)} image names for {n} images")
        if any(("\n" in s or "\0" in s or " " in s or not s) for s in self.image_name):
            raise ExportError("ColmapModel: image names must be non-empty without spaces, newlines or NUL")
        if not np.isin(self.image_camera_id, self.camera_id).all():
            raise ExportError("ColmapModel: an image refers to a camera id that does not exist")
        if o and (np.any(np.diff(self.obs_image) < 0) or self.obs_image.min() < 0 or self.obs_image.max() >= n):
            raise ExportError("ColmapModel: observations must be sorted by image index within [0, N)")
        if o and (self.obs_point.min() < 0 or self.obs_point.max() >= p):
            raise ExportError("ColmapModel: an observation refers to a point index outside [0, P)")
        if p and np.bincount(self.obs_point, minlength=p).min() == 0:
            raise ExportError("ColmapModel: every point needs at least one observation")


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
                            name_format: str = "{stem}.png") -> tuple[ColmapModel, dict]:
    """Build the COLMAP model of a store: ``(model, stats)``.

    Args:
        every: export every N-th stored frame (time order).
        intrinsics_tol: frames whose ``fx, fy, cx, cy`` agree within this many pixels share a camera.
        depth_tolerance: a point is observed in a frame only when its camera-z is within this fraction of
            the frame's stored depth at that pixel (occlusion test); None skips the test.
        max_track_length: keep at most this many observations per point, spread evenly over the frames
            that see it (:func:`spread_tracks`); None keeps all (long windows make very long tracks).
        name_format: image file name; ``{stem}`` is ``frame_XXXXXX`` (the source index), ``{index}`` the index.

    ``stats``: ``cameras``, ``images``, ``points``, ``observations``, ``points_without_view``.
    """
    if not (np.isfinite(intrinsics_tol) and intrinsics_tol >= 0):
        raise ExportError(f"{store.path}: intrinsics_tol must be >= 0, got {intrinsics_tol}")
    if depth_tolerance is not None and not (np.isfinite(depth_tolerance) and depth_tolerance > 0):
        raise ExportError(f"{store.path}: depth_tolerance must be a positive number or None, got {depth_tolerance}")
    if max_track_length is not None and int(max_track_length) < 1:
        raise ExportError(f"{store.path}: max_track_length must be >= 1 or None, got {max_track_length}")
    table = store.frames_table()
    rows = export_rows(table, every)
    if rows.size == 0:
        raise ExportError(f"{store.path}: the store has no committed frames to export")
    H, W = store.image_hw
    params = pinhole_params(table["intrinsics"][rows])
    group, cam_params = group_intrinsics(params, float(intrinsics_tol))
    K_cam = np.zeros((len(cam_params), 3, 3))
    K_cam[:, 0, 0], K_cam[:, 1, 1] = cam_params[:, 0], cam_params[:, 1]
    K_cam[:, :2, 2] = cam_params[:, 2:4] - PIXEL_CENTRE  # back to OpenCV pixels for projecting
    K_cam[:, 2, 2] = 1.0
    world_from_cam = table["world_from_cam"][rows]
    quat_wxyz, t = cam_from_world_quat_t(world_from_cam)
    names = tuple(name_format.format(stem=frame_stem(i), index=int(i)) for i in table["index"][rows])
    if len(set(names)) != len(names):
        raise ExportError(f"{store.path}: name_format {name_format!r} gives duplicate image names")

    # the frame's position in the export, by store row (-1: not exported)
    pos_of_row = np.full(table["index"].shape[0], -1, np.int64)
    pos_of_row[rows] = np.arange(rows.size)
    chunks = store.chunks_table()
    scales = chunk_scales(store)
    K_grid = grid_intrinsics(store, table["intrinsics"])
    h, w = store.depth_hw
    xyz_all, rgb_all, obs_img, obs_xy, obs_pt = [], [], [], [], []
    n_points = n_dropped = 0
    for block in store.iter_map_points(world=False):
        for c in np.unique(block.chunk_id):
            sel = block.chunk_id == c
            W_c = Sim3.from_array(chunks["world_from_chunk"][c])
            X = W_c.apply(block.xyz[sel].astype(np.float64))
            frame_rows = np.arange(int(chunks["frame_start"][c]), int(chunks["frame_stop"][c]))
            frame_rows = frame_rows[pos_of_row[frame_rows] >= 0]
            frame_rows = frame_rows[np.argsort(pos_of_row[frame_rows], kind="stable")]
            depth = (world_depth(store, frame_rows, table["chunk_id"], scales)
                     if depth_tolerance is not None and frame_rows.size else None)
            cams = [(int(pos_of_row[r]), invert_rigid(table["world_from_cam"][r]), K_cam[group[pos_of_row[r]]], K_grid[r])
                    for r in frame_rows]
            has_view, obs = _chunk_observations(X, cams, depth, (H, W), (h, w), depth_tolerance, max_track_length)
            new_index = np.cumsum(has_view) - 1 + n_points
            for pos, idx, uv in obs:
                obs_img.append(np.full(idx.size, pos, np.int64))
                obs_xy.append(opencv_to_corner_pixels(uv))
                obs_pt.append(new_index[idx])
            xyz_all.append(X[has_view])
            rgb_all.append(block.rgb[sel][has_view])
            n_points += int(has_view.sum())
            n_dropped += int((~has_view).sum())
    if n_dropped:
        log.info("%s: %d map points are seen by no exported frame of their chunk and are not written", store.path, n_dropped)
    obs_img_a = np.concatenate(obs_img) if obs_img else np.zeros(0, np.int64)
    order = np.argsort(obs_img_a, kind="stable")
    model = ColmapModel(
        camera_id=np.arange(1, len(cam_params) + 1, dtype=np.int64),
        camera_wh=np.tile(np.array([[W, H]], np.int64), (len(cam_params), 1)),
        camera_params=cam_params,
        image_id=np.arange(1, rows.size + 1, dtype=np.int64),
        image_camera_id=group + 1,
        image_name=names,
        quat_wxyz=quat_wxyz,
        cam_from_world_t=t,
        point_id=np.arange(1, n_points + 1, dtype=np.int64),
        point_xyz=np.concatenate(xyz_all) if xyz_all else np.zeros((0, 3)),
        point_rgb=np.concatenate(rgb_all) if rgb_all else np.zeros((0, 3), np.uint8),
        point_error=np.zeros(n_points),
        obs_image=obs_img_a[order],
        obs_xy=(np.concatenate(obs_xy) if obs_xy else np.zeros((0, 2)))[order],
        obs_point=(np.concatenate(obs_pt) if obs_pt else np.zeros(0, np.int64))[order],
    )
    stats = {"cameras": int(len(cam_params)), "images": int(rows.size), "points": n_points,
             "observations": int(model.obs_image.shape[0]), "points_without_view": n_dropped}
    return model, stats


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


# ----------------------------------------------------------------------------- writers


def write_colmap_model(model: ColmapModel, out_dir: PathLike, fmt: str = "bin") -> list[Path]:
    """Write ``cameras``, ``images`` and ``points3D`` (``.txt`` or ``.bin``) into ``out_dir``; return the paths."""
    out = Path(out_dir)
    if fmt not in COLMAP_FORMATS:
        raise ExportError(f"{out}: COLMAP format must be one of {', '.join(COLMAP_FORMATS)}, got {fmt!r}")
    model.check()
    make_dir(out)
    ext = ".txt" if fmt == "text" else ".bin"
    writers = (_cameras_text, _images_text, _points_text) if fmt == "text" else (_cameras_bin, _images_bin, _points_bin)
    paths = []
    for name, fn in zip(("cameras", "images", "points3D"), writers):
        p = out / f"{name}{ext}"
        _atomic_write(p, fn(model))
        paths.append(p)
    return paths


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _num(v: float) -> str:
    return repr(float(v))


def _tracks(model: ColmapModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations grouped by point: ``(order (O,), starts (P,), counts (P,))``."""
    order = np.lexsort((model.point2d_idx(), model.obs_image, model.obs_point))
    counts = np.bincount(model.obs_point, minlength=model.point_id.shape[0])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts
    return order, starts, counts


def _cameras_text(m: ColmapModel) -> bytes:
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {m.camera_id.shape[0]}"]
    for cid, (w, h), p in zip(m.camera_id, m.camera_wh, m.camera_params):
        lines.append(f"{int(cid)} PINHOLE {int(w)} {int(h)} " + " ".join(_num(v) for v in p))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _images_text(m: ColmapModel) -> bytes:
    n = m.image_id.shape[0]
    o = m.obs_image.shape[0]
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {n}, mean observations per image: {o / n if n else 0.0}"]
    starts = np.searchsorted(m.obs_image, np.arange(n + 1))
    for k in range(n):
        pose = " ".join(_num(v) for v in (*m.quat_wxyz[k], *m.cam_from_world_t[k]))
        lines.append(f"{int(m.image_id[k])} {pose} {int(m.image_camera_id[k])} {m.image_name[k]}")
        a, b = starts[k], starts[k + 1]
        pid = m.point_id[m.obs_point[a:b]]
        lines.append(" ".join(f"{_num(x)} {_num(y)} {int(i)}" for (x, y), i in zip(m.obs_xy[a:b], pid)))  # may be empty
    return ("\n".join(lines) + "\n").encode("utf-8")


def _points_text(m: ColmapModel) -> bytes:
    p = m.point_id.shape[0]
    order, starts, counts = _tracks(m)
    img_id = m.image_id[m.obs_image[order]]
    p2d = m.point2d_idx()[order]
    mean_track = float(counts.mean()) if p else 0.0
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {p}, mean track length: {mean_track}"]
    for k in range(p):
        a, b = starts[k], starts[k] + counts[k]
        xyz = " ".join(_num(v) for v in m.point_xyz[k])
        rgb = " ".join(str(int(v)) for v in m.point_rgb[k])
        track = " ".join(f"{int(i)} {int(j)}" for i, j in zip(img_id[a:b], p2d[a:b]))
        lines.append(f"{int(m.point_id[k])} {xyz} {rgb} {_num(m.point_error[k])} {track}")
    return ("\n".join(lines) + "\n").encode("utf-8")


_CAMERA_BIN = np.dtype([("id", "<i4"), ("model", "<i4"), ("width", "<u8"), ("height", "<u8"), ("params", "<f8", (4,))])
_IMAGE_HEAD_BIN = np.dtype([("id", "<i4"), ("q", "<f8", (4,)), ("t", "<f8", (3,)), ("camera", "<i4")])
_POINT2D_BIN = np.dtype([("xy", "<f8", (2,)), ("point3d", "<i8")])
_POINT3D_BIN = np.dtype([("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("track_length", "<u8")])
_TRACK_BIN = np.dtype([("image", "<i4"), ("point2d", "<i4")])


def _cameras_bin(m: ColmapModel) -> bytes:
    rec = np.zeros(m.camera_id.shape[0], _CAMERA_BIN)
    rec["id"], rec["model"] = m.camera_id, PINHOLE_MODEL_ID
    rec["width"], rec["height"] = m.camera_wh[:, 0], m.camera_wh[:, 1]
    rec["params"] = m.camera_params
    return np.uint64(len(rec)).astype("<u8").tobytes() + rec.tobytes()


def _images_bin(m: ColmapModel) -> bytes:
    n = m.image_id.shape[0]
    starts = np.searchsorted(m.obs_image, np.arange(n + 1))
    obs = np.zeros(m.obs_image.shape[0], _POINT2D_BIN)
    obs["xy"], obs["point3d"] = m.obs_xy, m.point_id[m.obs_point]
    parts = [np.uint64(n).astype("<u8").tobytes()]
    for k in range(n):
        head = np.zeros(1, _IMAGE_HEAD_BIN)
        head["id"], head["camera"] = m.image_id[k], m.image_camera_id[k]
        head["q"], head["t"] = m.quat_wxyz[k], m.cam_from_world_t[k]
        a, b = starts[k], starts[k + 1]
        parts += [head.tobytes(), m.image_name[k].encode("utf-8") + b"\0",
                  np.uint64(b - a).astype("<u8").tobytes(), obs[a:b].tobytes()]
    return b"".join(parts)


def _points_bin(m: ColmapModel) -> bytes:
    """Variable-length point records laid out with index arithmetic (no per-point Python loop)."""
    p = m.point_id.shape[0]
    order, starts, counts = _tracks(m)
    head = np.zeros(p, _POINT3D_BIN)
    head["id"], head["xyz"], head["rgb"] = m.point_id, m.point_xyz, m.point_rgb
    head["error"], head["track_length"] = m.point_error, counts
    track = np.zeros(order.shape[0], _TRACK_BIN)
    track["image"], track["point2d"] = m.image_id[m.obs_image[order]], m.point2d_idx()[order]
    hs, ts = _POINT3D_BIN.itemsize, _TRACK_BIN.itemsize
    sizes = hs + ts * counts
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if p else np.zeros(0, np.int64)
    buf = np.empty(int(sizes.sum()), np.uint8)
    buf[(offsets[:, None] + np.arange(hs)).ravel()] = head.view(np.uint8)
    if order.size:
        point_of = np.repeat(np.arange(p), counts)
        k_within = np.arange(order.size) - starts[point_of]
        t_off = offsets[point_of] + hs + ts * k_within
        buf[(t_off[:, None] + np.arange(ts)).ravel()] = track.view(np.uint8)
    return np.uint64(p).astype("<u8").tobytes() + buf.tobytes()


# ----------------------------------------------------------------------------- export


def export_colmap(store_or_path, out_dir: PathLike, *, fmt: str = "bin", every: int = 1, intrinsics_tol: float = 1e-6,
                  depth_tolerance: Optional[float] = 0.05, max_track_length: Optional[int] = DEFAULT_MAX_TRACK,
                  name_format: str = "{stem}.png") -> dict:
    """Write the store as a COLMAP sparse model into ``out_dir`` (``cameras``, ``images``, ``points3D``).

    ``fmt``: ``"text"`` (``.txt``) or ``"bin"`` (``.bin``). The other arguments are those of
    :func:`colmap_model_from_store`. Returns its stats plus ``format`` and ``files``.
    """
    out = Path(out_dir)
    if fmt not in COLMAP_FORMATS:
        raise ExportError(f"{out}: COLMAP format must be one of {', '.join(COLMAP_FORMATS)}, got {fmt!r}")
    every = check_every(every, str(out))
    owned = not isinstance(store_or_path, RunStore)
    store = RunStore.open(store_or_path, mode="r") if owned else store_or_path
    try:
        model, stats = colmap_model_from_store(store, every=every, intrinsics_tol=intrinsics_tol, depth_tolerance=depth_tolerance,
                                               max_track_length=max_track_length, name_format=name_format)
    finally:
        if owned:
            store.close()
    paths = write_colmap_model(model, out, fmt)
    log.info("wrote COLMAP model (%s) to %s: %d cameras, %d images, %d points, %d observations",
             fmt, out, stats["cameras"], stats["images"], stats["points"], stats["observations"])
    return {**stats, "format": fmt, "files": [str(p) for p in paths]}
