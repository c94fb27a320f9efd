"""A COLMAP sparse model as flat arrays, and its ``cameras`` / ``images`` / ``points3D`` files (text and binary).

:mod:`da3stream.io.export.colmap` builds the model from a run store and
converts the conventions; this module only checks the arrays and encodes them
in COLMAP's two file formats (``images.txt`` has exactly two lines per image).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from da3stream.errors import ExportError, check_shape
from da3stream.io.export.depth import atomic_write, make_dir

PathLike = Union[str, os.PathLike]

__all__ = ["COLMAP_FORMATS", "PINHOLE_MODEL_ID", "ColmapModel", "write_colmap_model"]

COLMAP_FORMATS = ("text", "bin")
PINHOLE_MODEL_ID = 1
"""COLMAP's id of the PINHOLE camera model (params fx, fy, cx, cy)."""


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
        atomic_write(p, fn(model))
        paths.append(p)
    return paths


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
