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

Layout: ``out_dir/transforms.json``, ``out_dir/images/frame_XXXXXX.png``,
``out_dir/depth/frame_XXXXXX.png`` (``XXXXXX``: source frame index).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

import numpy as np

from da3stream.errors import ExportError, check_shape
from da3stream.io.export.colmap import PIXEL_CENTRE
from da3stream.io.export.depth import (
    DEFAULT_DEPTH_SCALE, PNG16_MAX, chunk_scales, check_every, depth_to_png16, export_rows, frame_stem, grid_intrinsics,
    make_dir, world_depth, write_json, write_png16, write_rgb_png,
)
from da3stream.io.store import RunStore

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["OPENCV_FROM_OPENGL_CAM", "export_nerfstudio", "opencv_to_opengl_world_from_cam"]

OPENCV_FROM_OPENGL_CAM = np.diag([1.0, -1.0, -1.0, 1.0])
"""Maps OpenGL camera coordinates to OpenCV camera coordinates (and back: it is its own inverse)."""
ROWS_PER_READ = 16
"""Frames read from the store at once."""


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
                      depth_scale: float = DEFAULT_DEPTH_SCALE) -> dict:
    """Write ``transforms.json`` + RGB PNGs (+ 16-bit depth PNGs) of every ``every``-th stored frame.

    Args:
        store_or_path: a :class:`RunStore` (must keep RGB) or its path.
        out_dir: output directory (created).
        every: export every N-th stored frame (time order).
        depth: also write depth images and ``depth_file_path``.
        depth_scale: PNG depth units per world unit.

    Returns:
        ``{"frames": N, "resolution_hw": [h, w], "shared_intrinsics": bool, "depth_scale": ...}``.
    """
    out = Path(out_dir)
    every = check_every(every, str(out))
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise ExportError(f"{out}: depth_scale must be a positive number, got {depth_scale}")
    owned = not isinstance(store_or_path, RunStore)
    store = RunStore.open(store_or_path, mode="r") if owned else store_or_path
    try:
        return _export(store, out, every, depth, float(depth_scale))
    finally:
        if owned:
            store.close()


def _export(store: RunStore, out: Path, every: int, depth: bool, depth_scale: float) -> dict:
    if not store.has_rgb:
        raise ExportError(f"{store.path}: the store keeps no RGB (save_rgb was false); nerfstudio needs images")
    table = store.frames_table()
    rows = export_rows(table, every)
    if rows.size == 0:
        raise ExportError(f"{store.path}: the store has no committed frames to export")
    hw = store.depth_hw
    K_grid = grid_intrinsics(store, table["intrinsics"][rows])
    intr = [_intrinsics_dict(K, hw) for K in K_grid]
    shared = all(d == intr[0] for d in intr)
    c2w_gl = opencv_to_opengl_world_from_cam(table["world_from_cam"][rows])
    scales = chunk_scales(store)
    make_dir(out / "images")
    if depth:
        make_dir(out / "depth")
    frames, lost = [], 0
    for k0 in range(0, rows.size, ROWS_PER_READ):
        batch = rows[k0:k0 + ROWS_PER_READ]
        rgb = store.rgb(batch)
        dep = world_depth(store, batch, table["chunk_id"], scales) if depth else None
        for k, r in enumerate(batch):
            pos = k0 + k
            stem = frame_stem(table["index"][r])
            write_rgb_png(out / "images" / f"{stem}.png", rgb[k])
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
    meta = {"camera_model": "OPENCV"}
    if shared:
        meta.update(intr[0])
    meta.update({
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": frames,
        "da3stream": {
            "resolution": "the store's depth grid (depth_hw), not the original image size",
            "original_hw": list(store.image_hw),
            "transform_matrix": "camera-to-world, OpenGL camera axes (+x right, +y up, looking along -z); world = the run's world frame",
            "principal_point": "corner origin (the centre of the top-left pixel is (0.5, 0.5))",
            "depth": (f"16-bit PNG, z-depth = value / {depth_scale} world units, 0 = invalid" if depth else None),
            "depth_unit_scale_factor": (1.0 / depth_scale if depth else None),
        },
    })
    write_json(out / "transforms.json", meta)
    log.info("wrote nerfstudio transforms.json with %d frames to %s", len(frames), out)
    return {"frames": len(frames), "resolution_hw": [int(hw[0]), int(hw[1])], "shared_intrinsics": bool(shared),
            "depth_scale": depth_scale if depth else None}
