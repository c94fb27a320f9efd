"""Per-frame depth and confidence export: 16-bit PNG (scaled integers) or ``.npz`` (float32).

Every stored keyframe's depth is written on the predictor's depth grid
``(h, w)`` (``depth_hw`` of the store), converted from its chunk's units to the
run's **world units** (depth × the scale of the frame's ``world_from_chunk``),
so it agrees with the exported poses. Depth is z-depth along the camera's +z
axis (OpenCV), not distance along the ray.

PNG encoding (``fmt="png16"``)::

    value = round(depth_world * depth_scale)        uint16, 0 = invalid
    depth_world = value / depth_scale

With the default ``depth_scale = 1000`` a value is a millimetre when the world
unit is the metre (a metric model), which is also what nerfstudio's default
``depth_unit_scale_factor = 1e-3`` expects. Depth that is not finite, not
positive or beyond ``65535 / depth_scale`` is written as 0 (invalid; the count
is logged). ``depth_scale=None`` picks ``65535 / max depth`` over the exported
frames instead. Confidence is written the same way with ``conf_scale``
(default: ``65535 / max confidence``; larger values saturate at 65535).

``fmt="npz"`` writes one ``.npz`` per frame with ``depth`` and ``conf`` as
float32 (the stored float16 values times the chunk scale, no quantisation),
``intrinsics`` (3, 3) for the depth grid, ``world_from_cam`` (4, 4),
``index`` and ``timestamp``.

Both formats write ``depth_scale.json`` beside the files: the encoding, the
scales, the units, the resolution and, per frame, the file names, the
depth-grid intrinsics and ``world_from_cam``. docs/EXPORTS.md has the table of
all exports.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from da3stream.errors import ExportError, ShapeError, check_shape
from da3stream.io.store import RunStore

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = [
    "DEPTH_FORMATS", "PNG16_MAX", "atomic_write", "chunk_scales", "depth_to_png16", "export_depth", "export_rows", "frame_stem",
    "grid_intrinsics", "png16_to_depth", "read_depth_export", "world_depth",
]

DEPTH_FORMATS = ("png16", "npz")
PNG16_MAX = 65535
"""Largest value of a 16-bit PNG sample."""
MANIFEST = "depth_scale.json"
DEFAULT_DEPTH_SCALE = 1000.0
"""PNG units per world unit: millimetres for a metric run."""
ROWS_PER_READ = 16
"""Frames read from the store at once (bounds memory for long runs)."""


# ----------------------------------------------------------------------------- shared per-frame helpers


def check_every(every: int, what: str) -> int:
    """``every`` as a positive int, or :class:`ExportError` naming ``what`` (the output)."""
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or int(every) < 1:
        raise ExportError(f"{what}: every must be a positive integer, got {every!r}")
    return int(every)


def export_rows(frames_table: dict, every: int = 1) -> np.ndarray:
    """``frames/`` rows to export: every ``every``-th stored frame in time order (ties keep row order).

    Returns (N,) int64 rows.
    """
    ts = np.asarray(frames_table["timestamp"])
    order = np.argsort(ts, kind="stable").astype(np.int64)
    return order[:: int(every)]


def frame_stem(index: int) -> str:
    """File stem of a frame, named by its source index: ``frame_000123``."""
    return f"frame_{int(index):06d}"


def grid_intrinsics(store: RunStore, intrinsics: np.ndarray) -> np.ndarray:
    """Map (N, 3, 3) original-resolution intrinsics to the depth grid with the store's own mapping.

    The pipeline records ``orig_from_grid`` (3, 3), the pixel map it used to
    lift depth-grid intrinsics to the original resolution
    (``K_orig = orig_from_grid @ K_grid``); its inverse is what the stored
    depth was unprojected with. Stores without it fall back to the plain
    resize ``diag(W / w, H / h, 1)``. The result keeps the store's pixel
    convention (OpenCV: pixel (row v, column u) centred at (u, v)).
    """
    K = np.asarray(intrinsics, dtype=np.float64)
    check_shape("grid_intrinsics(intrinsics)", K, ("N", 3, 3), "f")
    m = store.attrs_get("orig_from_grid")
    if m is None:
        (H, W), (h, w) = store.image_hw, store.depth_hw
        orig_from_grid = np.diag([W / w, H / h, 1.0])
    else:
        orig_from_grid = np.asarray(m, dtype=np.float64)
        if orig_from_grid.shape != (3, 3) or not np.all(np.isfinite(orig_from_grid)):
            raise ExportError(f"{store.path}: root attribute orig_from_grid is not a finite 3x3 matrix")
    return np.einsum("ij,njk->nik", np.linalg.inv(orig_from_grid), K)


def chunk_scales(store: RunStore) -> np.ndarray:
    """(C,) float64 scale ``s`` of every chunk's live ``world_from_chunk`` (chunk units -> world units)."""
    wfc = store.chunks_table()["world_from_chunk"]
    s = np.asarray(wfc[:, 0], dtype=np.float64)
    if s.size and not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ExportError(f"{store.path}: a chunk has no valid world_from_chunk scale")
    return s


def world_depth(store: RunStore, rows: np.ndarray, frame_chunk_id: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(N, h, w) float32 depth of ``rows`` in world units: stored float16 depth × its chunk's scale."""
    d = store.depth(np.asarray(rows, np.int64)).astype(np.float32)
    s = scales[np.asarray(frame_chunk_id)[rows]].astype(np.float32)
    return d * s[:, None, None]


# ----------------------------------------------------------------------------- encoding


def depth_to_png16(depth: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """Quantise ``depth`` (h, w) float to ``(values (h, w) uint16, n_out_of_range)``; invalid -> 0.

    ``value = round(depth * scale)``; depth that is not finite, not positive,
    rounds to 0 or exceeds :data:`PNG16_MAX` becomes 0. ``n_out_of_range``
    counts the finite positive depths lost that way.
    """
    d = np.asarray(depth)
    check_shape("depth_to_png16(depth)", d, ("h", "w"), "f")
    v = np.rint(d.astype(np.float64) * float(scale))
    ok = np.isfinite(d) & (d > 0)
    good = ok & (v >= 1) & (v <= PNG16_MAX)
    return np.where(good, v, 0).astype(np.uint16), int(np.count_nonzero(ok & ~good))


def png16_to_depth(values: np.ndarray, scale: float) -> np.ndarray:
    """(h, w) uint16 -> (h, w) float32 depth ``value / scale``; 0 (invalid) -> NaN."""
    v = np.asarray(values)
    check_shape("png16_to_depth(values)", v, ("h", "w"), "u")
    out = (v.astype(np.float64) / float(scale)).astype(np.float32)
    return np.where(v == 0, np.float32(np.nan), out)


def _conf_to_png16(conf: np.ndarray, scale: float) -> np.ndarray:
    c = np.asarray(conf, np.float64)
    v = np.rint(np.where(np.isfinite(c), c, 0.0) * scale)
    return np.clip(v, 0, PNG16_MAX).astype(np.uint16)


def write_png16(path: Path, values: np.ndarray) -> None:
    """Write (h, w) uint16 as a 16-bit greyscale PNG (atomic rename)."""
    if values.dtype != np.uint16 or values.ndim != 2:
        raise ShapeError(f"write_png16({path}): expected (h, w) uint16, got {values.dtype} {values.shape}")
    _write_image(path, values)


def write_rgb_png(path: Path, rgb: np.ndarray) -> None:
    """Write (h, w, 3) uint8 RGB as PNG (atomic rename)."""
    check_shape(f"write_rgb_png({path})", rgb, ("h", "w", 3), "u")
    _write_image(path, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))


def _write_image(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ExportError(f"{path}: PNG encoding failed")
    atomic_write(path, buf.tobytes())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``path.partial`` and a rename; ExportError (one line) on an OS error."""
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON (atomic rename)."""
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{path}: cannot create the directory ({exc.strerror or exc})") from None


def _opened(store_or_path) -> tuple[RunStore, bool]:
    if isinstance(store_or_path, RunStore):
        return store_or_path, False
    return RunStore.open(store_or_path, mode="r"), True


# ----------------------------------------------------------------------------- export


def export_depth(store_or_path, out_dir: PathLike, *, fmt: str = "png16", depth_scale: Optional[float] = DEFAULT_DEPTH_SCALE,
                 conf_scale: Optional[float] = None, every: int = 1, conf: bool = True, compress: bool = False) -> dict:
    """Write every ``every``-th stored frame's depth (and confidence) into ``out_dir``.

    Layout: ``out_dir/depth/frame_XXXXXX.png`` and ``out_dir/conf/frame_XXXXXX.png``
    (``png16``) or ``out_dir/frame_XXXXXX.npz`` (``npz``), plus ``out_dir/depth_scale.json``.
    ``XXXXXX`` is the source frame index.

    Args:
        store_or_path: a :class:`RunStore` or the store path.
        out_dir: output directory (created).
        fmt: ``"png16"`` or ``"npz"``.
        depth_scale: PNG units per world unit (``png16`` only); None picks ``65535 / max depth``.
        conf_scale: PNG units per confidence unit; None picks ``65535 / max confidence``.
        every: export every N-th stored frame (time order).
        conf: also write confidence (when the store keeps it).
        compress: zlib-compress ``.npz`` files (about 2x smaller, about 50x more CPU time).

    Returns:
        ``{"frames": N, "format": fmt, "depth_scale": ..., "conf_scale": ..., "invalid_out_of_range": n}``.
    """
    out = Path(out_dir)
    if fmt not in DEPTH_FORMATS:
        raise ExportError(f"{out}: depth format must be one of {', '.join(DEPTH_FORMATS)}, got {fmt!r}")
    every = check_every(every, str(out))
    for name, value in (("depth_scale", depth_scale), ("conf_scale", conf_scale)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ExportError(f"{out}: {name} must be a positive number, got {value}")
    store, owned = _opened(store_or_path)
    try:
        return _export_depth(store, out, fmt, depth_scale, conf_scale, every, conf, compress)
    finally:
        if owned:
            store.close()


def _batches(rows: np.ndarray):
    for k in range(0, len(rows), ROWS_PER_READ):
        yield rows[k:k + ROWS_PER_READ]


def _export_depth(store: RunStore, out: Path, fmt: str, depth_scale, conf_scale, every: int, conf: bool,
                  compress: bool) -> dict:
    table = store.frames_table()
    rows = export_rows(table, every)
    if rows.size == 0:
        raise ExportError(f"{out}: the store has no committed frames to export")
    scales = chunk_scales(store)
    with_conf = conf and store.has_conf
    if fmt == "png16" and (depth_scale is None or (with_conf and conf_scale is None)):
        max_d, max_c = _maxima(store, rows, table["chunk_id"], scales, with_conf)
        if depth_scale is None:
            depth_scale = PNG16_MAX / max_d if max_d > 0 else DEFAULT_DEPTH_SCALE
        if with_conf and conf_scale is None:
            conf_scale = PNG16_MAX / max_c if max_c > 0 else 1.0
    if fmt == "npz":
        depth_scale = conf_scale = None
    make_dir(out)
    if fmt == "png16":
        make_dir(out / "depth")
        if with_conf:
            make_dir(out / "conf")
    K_grid = grid_intrinsics(store, table["intrinsics"])
    entries, lost = [], 0
    for batch in _batches(rows):
        depth = world_depth(store, batch, table["chunk_id"], scales)
        cf = store.conf(batch).astype(np.float32) if with_conf else None
        for k, r in enumerate(batch):
            entry = {"row": int(r), "index": int(table["index"][r]), "timestamp": float(table["timestamp"][r]),
                     "intrinsics": K_grid[r].tolist(), "world_from_cam": table["world_from_cam"][r].tolist()}
            frame = (depth[k], None if cf is None else cf[k], K_grid[r])
            if fmt == "png16":
                lost += _write_png_frame(out, table, r, frame, depth_scale, conf_scale, entry)
            else:
                _write_npz_frame(out, table, r, frame, compress, entry)
            entries.append(entry)
    if lost:
        log.warning("%s: %d depth pixels beyond %.6g world units were written as 0 (invalid); lower depth_scale",
                    out, lost, PNG16_MAX / depth_scale)
    write_json(out / MANIFEST, _manifest(fmt, depth_scale, conf_scale if with_conf else None, store.depth_hw, entries))
    log.info("wrote depth of %d frames to %s (%s)", len(entries), out, fmt)
    return {"frames": len(entries), "format": fmt, "depth_scale": depth_scale,
            "conf_scale": conf_scale if with_conf else None, "invalid_out_of_range": int(lost)}


def _write_png_frame(out: Path, table: dict, r: int, frame: tuple, depth_scale: float, conf_scale: Optional[float],
                     entry: dict) -> int:
    """Write one frame's ``depth/`` (and ``conf/``) PNG, name them in ``entry``; return the depth pixels lost."""
    depth, cf, _ = frame
    stem = frame_stem(table["index"][r])
    values, n_lost = depth_to_png16(depth, depth_scale)
    write_png16(out / "depth" / f"{stem}.png", values)
    entry["depth"] = f"depth/{stem}.png"
    if cf is not None:
        write_png16(out / "conf" / f"{stem}.png", _conf_to_png16(cf, conf_scale))
        entry["conf"] = f"conf/{stem}.png"
    return n_lost


def _write_npz_frame(out: Path, table: dict, r: int, frame: tuple, compress: bool, entry: dict) -> None:
    """Write one frame's ``.npz`` (depth, conf, intrinsics, pose, index, timestamp) and name it in ``entry``."""
    depth, cf, K = frame
    stem = frame_stem(table["index"][r])
    arrays = {"depth": depth, "intrinsics": K, "world_from_cam": table["world_from_cam"][r],
              "index": np.int64(table["index"][r]), "timestamp": np.float64(table["timestamp"][r])}
    if cf is not None:
        arrays["conf"] = cf
    _write_npz(out / f"{stem}.npz", arrays, compress)
    entry["file"] = f"{stem}.npz"


def _manifest(fmt: str, depth_scale: Optional[float], conf_scale: Optional[float], depth_hw: tuple, entries: list) -> dict:
    """The ``depth_scale.json`` of a depth export (``conf_scale`` None when no confidence was written)."""
    h, w = depth_hw
    with_conf = conf_scale is not None
    return {
        "format": fmt,
        "encoding": ("depth = value / depth_scale (world units); value 0 = invalid" if fmt == "png16"
                     else "float32 arrays 'depth' (world units; stored invalid values kept), 'conf', 'intrinsics', "
                          "'world_from_cam', 'index', 'timestamp'"),
        "depth_scale": depth_scale,
        "conf_scale": conf_scale,
        "conf_encoding": ("conf = value / conf_scale; saturates at 65535" if with_conf and fmt == "png16" else None),
        "units": "run world units (metres for a metric model; the gauge of the run otherwise)",
        "depth_kind": "z-depth along the camera +z axis (OpenCV camera)",
        "resolution_hw": [int(h), int(w)],
        "intrinsics_convention": "depth-grid pinhole K, OpenCV pixel centres: pixel (row v, column u) is at (u, v)",
        "pose_convention": "world_from_cam 4x4, OpenCV camera axes (+x right, +y down, +z forward)",
        "frames": entries,
    }


def _maxima(store: RunStore, rows, chunk_id, scales, with_conf: bool) -> tuple[float, float]:
    max_d = max_c = 0.0
    for batch in _batches(rows):
        d = world_depth(store, batch, chunk_id, scales)
        d = d[np.isfinite(d) & (d > 0)]
        if d.size:
            max_d = max(max_d, float(d.max()))
        if with_conf:
            c = store.conf(batch).astype(np.float32)
            c = c[np.isfinite(c)]
            if c.size:
                max_c = max(max_c, float(c.max()))
    return max_d, max_c


def _write_npz(path: Path, arrays: dict, compress: bool) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            save = np.savez_compressed if compress else np.savez
            save(f, **{k: (v.astype(np.float32) if k in ("depth", "conf") else v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- reading back


def read_depth_export(out_dir: PathLike) -> dict[int, dict[str, np.ndarray]]:
    """Read a depth export back: ``{source index: {"depth": (h, w) float32, "conf": ..., "intrinsics", "world_from_cam"}}``.

    PNG depth is decoded with the manifest's ``depth_scale`` (0 -> NaN);
    ``.npz`` arrays are returned as written.
    """
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{out / MANIFEST}: file not found") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{out / MANIFEST}: cannot read ({exc})") from None
    result = {}
    for e in manifest.get("frames", []):
        item = {"intrinsics": np.asarray(e["intrinsics"], np.float64), "world_from_cam": np.asarray(e["world_from_cam"], np.float64)}
        if manifest["format"] == "png16":
            item["depth"] = png16_to_depth(_read_png16(out / e["depth"]), manifest["depth_scale"])
            if e.get("conf"):
                item["conf"] = (_read_png16(out / e["conf"]).astype(np.float64) / manifest["conf_scale"]).astype(np.float32)
        else:
            try:
                with np.load(out / e["file"]) as z:
                    item.update({k: z[k] for k in z.files if k not in item})
            except (OSError, ValueError) as exc:
                raise ExportError(f"{out / e['file']}: cannot read ({exc})") from None
        result[int(e["index"])] = item
    return result


def _read_png16(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ExportError(f"{path}: not found or not a PNG")
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ExportError(f"{path}: expected a 16-bit greyscale PNG, got {img.dtype} {img.shape}")
    return img
