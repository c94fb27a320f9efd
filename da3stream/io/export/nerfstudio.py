"""nerfstudio / instant-ngp ``transforms.json`` export, with RGB and depth images.

Conventions converted here, once:

* **Poses.** ``transform_matrix`` is camera-to-world in the OpenGL/Blender camera
  convention nerfstudio uses (+x right, +y up, the camera looks along -z). It
  is the store's ``world_from_cam`` (OpenCV camera: +y down, +z forward) with
  the camera's y and z axes negated: :func:`opencv_to_opengl_world_from_cam`,
  the only place that flip happens. The world frame is the run's world frame
  unchanged (nerfstudio re-orients and re-centres it when it loads the data).
* **Resolution.** Images are the store's ``frames/rgb``, which lives on the
  predictor's depth grid ``(h, w)`` (``depth_hw``), not the original video
  resolution; ``w``, ``h`` and the intrinsics written are for that grid. They
  are the store's original-resolution intrinsics mapped with the pipeline's
  own ``orig_from_grid`` (see :func:`da3stream.io.export.depth.grid_intrinsics`),
  i.e. exactly the intrinsics the stored depth was unprojected with.
* **Pixels.** nerfstudio puts the image corner at 0 (a pixel centre is at
  +0.5), the store at the top-left pixel's centre (OpenCV), so ``cx, cy`` are
  written +0.5.
* **Intrinsics** ``fl_x, fl_y, cx, cy, w, h`` are top-level keys when every
  exported frame has the same values, otherwise per frame.
* **Depth** (``depth_file_path``) is a 16-bit PNG of z-depth in world units ×
  ``depth_scale`` (default 1000: millimetres for a metric run, matching
  nerfstudio's default ``depth_unit_scale_factor = 1e-3``); 0 = invalid. See
  :mod:`da3stream.io.export.depth`.

* **Points.** ``points3D.ply`` (``ply_file_path``, what splatfacto initialises
  its Gaussians from) holds the fused map in the run's world frame, the world
  of ``transform_matrix``: the OpenCV -> OpenGL flip is of the camera axes
  only, so the points need none (nerfstudio applies its own re-orientation to
  poses and points alike when it loads them).
* **Original images** (``original_images=True``): the source frames re-read at
  ``image_hw`` with the stored intrinsics; depth stays on the depth grid
  (nerfstudio resizes depth images to the image size when it loads them).

Layout: ``out_dir/transforms.json``, ``out_dir/images/frame_XXXXXX.png``,
``out_dir/depth/frame_XXXXXX.png`` (``XXXXXX``: source frame index), ``out_dir/points3D.ply``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from da3stream.errors import ExportError, check_shape
from da3stream.io.export.colmap import PIXEL_CENTRE
from da3stream.io.export.depth import (
    DEFAULT_DEPTH_SCALE, PNG16_MAX, chunk_scales, check_every, depth_to_png16, export_rows, frame_stem, grid_intrinsics,
    make_dir, world_depth, write_json, write_png16, write_rgb_png,
)
from da3stream.io.export.ply import write_ply
from da3stream.io.export.run_exports import check_min_conf, collect_points, model_label
from da3stream.io.export.source_frames import write_source_images
from da3stream.io.store import RunStore

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["OPENCV_FROM_OPENGL_CAM", "export_nerfstudio", "opencv_to_opengl_world_from_cam"]

OPENCV_FROM_OPENGL_CAM = np.diag([1.0, -1.0, -1.0, 1.0])
"""Maps OpenGL camera coordinates to OpenCV camera coordinates (and back: it is its own inverse)."""
ROWS_PER_READ = 16
"""Frames read from the store at once."""
POINTS_FILE = "points3D.ply"
"""The initial point cloud beside ``transforms.json`` (``ply_file_path``)."""


def opencv_to_opengl_world_from_cam(world_from_cam: np.ndarray) -> np.ndarray:
    """(N, 4, 4) ``world_from_cam`` with an OpenCV camera -> the same pose with an OpenGL camera.

    ``world_from_glcam = world_from_cvcam @ cvcam_from_glcam``: the camera's y and z
    axes (columns 1 and 2 of the rotation) are negated; the centre is unchanged.
    """
    T = np.asarray(world_from_cam, dtype=np.float64)
    check_shape("opencv_to_opengl_world_from_cam(world_from_cam)", T, ("N", 4, 4), "f")
    return T @ OPENCV_FROM_OPENGL_CAM


def _intrinsics_dict(K: np.ndarray, hw: tuple) -> dict:
    """nerfstudio intrinsics of one OpenCV-convention K (depth grid)."""
    return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2] + PIXEL_CENTRE),
            "cy": float(K[1, 2] + PIXEL_CENTRE), "w": int(hw[1]), "h": int(hw[0])}


def export_nerfstudio(store_or_path, out_dir: PathLike, *, every: int = 1, depth: bool = True,
                      depth_scale: float = DEFAULT_DEPTH_SCALE, original_images: bool = False,
                      source: Optional[PathLike] = None, points: bool = True, max_points: Optional[int] = None,
                      min_conf: Optional[float] = None) -> dict:
    """Write ``transforms.json`` + RGB PNGs (+ 16-bit depth PNGs, + the initial point cloud) of every ``every``-th stored frame.

    Args:
        store_or_path: a :class:`RunStore` (must keep RGB unless ``original_images``) or its path.
        out_dir: output directory (created).
        every: export every N-th stored frame (time order).
        depth: also write depth images and ``depth_file_path``.
        depth_scale: PNG depth units per world unit.
        original_images: write the source frames at the ORIGINAL resolution (``image_hw``), re-read from
            the run's source (``source``: where it is now; :mod:`da3stream.io.export.source_frames`), with
            the stored original-resolution intrinsics; otherwise the store's depth-grid RGB.
        points: write the fused map as ``points3D.ply`` beside ``transforms.json`` and name it in
            ``ply_file_path`` (the initial Gaussians of splatfacto), world frame = the poses' world frame.
        max_points, min_conf: the point selection of that PLY (see :func:`~da3stream.io.export.run_exports.selected_points`).

    Returns:
        ``{"frames": N, "resolution_hw": [h, w], "shared_intrinsics": bool, "depth_scale": ..., "points": P or None}``.
    """
    out = Path(out_dir)
    every = check_every(every, str(out))
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise ExportError(f"{out}: depth_scale must be a positive number, got {depth_scale}")
    min_conf = check_min_conf(min_conf, out)
    owned = not isinstance(store_or_path, RunStore)
    store = RunStore.open(store_or_path, mode="r") if owned else store_or_path
    try:
        return _export(store, out, every, depth, float(depth_scale), original_images, source,
                       (max_points, min_conf) if points else None)
    finally:
        if owned:
            store.close()


def _write_points(store: RunStore, out: Path, max_points: Optional[int], min_conf: Optional[float]) -> int:
    """Write ``points3D.ply`` (the run's world frame, the frame of ``transform_matrix``); return the point count."""
    xyz, rgb = collect_points(store, world=True, min_conf=min_conf, max_points=max_points)
    write_ply(out / POINTS_FILE, xyz, rgb, comment=f"da3stream map, world frame, model {model_label(store)}")
    return int(xyz.shape[0])


def _write_images(store: RunStore, out: Path, table: dict, rows: np.ndarray, original: bool,
                  source: Optional[PathLike]) -> None:
    """``images/frame_XXXXXX.png``: the source frames at ``image_hw`` (original) or the store's depth-grid RGB."""
    stems = [frame_stem(table["index"][r]) for r in rows]
    if original:
        write_source_images(store, table["index"][rows], [f"{s}.png" for s in stems], out / "images", source)
        return
    make_dir(out / "images")
    for k0 in range(0, rows.size, ROWS_PER_READ):
        rgb = store.rgb(rows[k0:k0 + ROWS_PER_READ])
        for k, stem in enumerate(stems[k0:k0 + ROWS_PER_READ]):
            write_rgb_png(out / "images" / f"{stem}.png", rgb[k])


def _export(store: RunStore, out: Path, every: int, depth: bool, depth_scale: float, original: bool = False,
            source: Optional[PathLike] = None, points: Optional[tuple] = None) -> dict:
    """The export; ``points``: ``(max_points, min_conf)`` of the PLY, None for no PLY."""
    if not store.has_rgb and not original:
        raise ExportError(f"{store.path}: the store keeps no RGB (save_rgb was false); nerfstudio needs images")
    table = store.frames_table()
    rows = export_rows(table, every)
    if rows.size == 0:
        raise ExportError(f"{store.path}: the store has no committed frames to export")
    hw = tuple(store.image_hw) if original else tuple(store.depth_hw)
    K = table["intrinsics"][rows] if original else grid_intrinsics(store, table["intrinsics"][rows])
    intr = [_intrinsics_dict(k, hw) for k in K]
    shared = all(d == intr[0] for d in intr)
    c2w_gl = opencv_to_opengl_world_from_cam(table["world_from_cam"][rows])
    scales = chunk_scales(store)
    _write_images(store, out, table, rows, original, source)
    if depth:
        make_dir(out / "depth")
    frames, lost = [], 0
    for k0 in range(0, rows.size, ROWS_PER_READ):
        batch = rows[k0:k0 + ROWS_PER_READ]
        dep = world_depth(store, batch, table["chunk_id"], scales) if depth else None
        for k, r in enumerate(batch):
            pos = k0 + k
            stem = frame_stem(table["index"][r])
            frame = {"file_path": f"images/{stem}.png", "transform_matrix": c2w_gl[pos].tolist(),
                     "timestamp": float(table["timestamp"][r]), "source_index": int(table["index"][r])}
            if depth:
                values, n_lost = depth_to_png16(dep[k], depth_scale)
                lost += n_lost
                write_png16(out / "depth" / f"{stem}.png", values)
                frame["depth_file_path"] = f"depth/{stem}.png"
            if not shared:
                frame.update(intr[pos])
            frames.append(frame)
    if lost:
        log.warning("%s: %d depth pixels beyond %.6g world units were written as 0 (invalid); lower depth_scale",
                    out, lost, PNG16_MAX / depth_scale)
    n_points = _write_points(store, out, *points) if points is not None else None
    meta = _meta(store, intr[0] if shared else None, frames, depth, depth_scale, original)
    if points is not None:
        meta["ply_file_path"] = POINTS_FILE
        meta["da3stream"]["ply_file_path"] = ("fused map points in the world frame of transform_matrix "
                                              "(no axis flip: the OpenCV -> OpenGL flip is of the camera only)")
    write_json(out / "transforms.json", meta)
    log.info("wrote nerfstudio transforms.json with %d frames to %s", len(frames), out)
    return {"frames": len(frames), "resolution_hw": [int(hw[0]), int(hw[1])], "shared_intrinsics": bool(shared),
            "depth_scale": depth_scale if depth else None, "points": n_points}


def _meta(store: RunStore, shared_intr: Optional[dict], frames: list, depth: bool, depth_scale: float, original: bool) -> dict:
    """The ``transforms.json`` document."""
    meta = {"camera_model": "OPENCV"}
    if shared_intr is not None:
        meta.update(shared_intr)
    meta.update({
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": frames,
        "da3stream": {
            "model": store.model.get("id"),
            "weights_random": bool(store.model.get("weights_random", False)),
            "model_label": model_label(store),
            "resolution": ("the original image size (image_hw), frames re-read from the run's source" if original
                           else "the store's depth grid (depth_hw), not the original image size"),
            "original_hw": list(store.image_hw),
            "depth_hw": list(store.depth_hw),
            "transform_matrix": "camera-to-world, OpenGL camera axes (+x right, +y up, looking along -z); world = the run's world frame",
            "principal_point": "corner origin (the centre of the top-left pixel is (0.5, 0.5))",
            "depth": (f"16-bit PNG on the depth grid, z-depth = value / {depth_scale} world units, 0 = invalid" if depth else None),
            "depth_unit_scale_factor": (1.0 / depth_scale if depth else None),
        },
    })
    return meta
