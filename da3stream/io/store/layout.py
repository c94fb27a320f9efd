"""The format-1 layout of the run store: which arrays exist, their dtypes, chunking and codecs,
and the conversion of a window's record into rows of those arrays (with validation).

Kept apart from :mod:`da3stream.io.store.writing` (the commit protocol) and
:mod:`da3stream.io.store.reading` so that docs/STORE.md can be checked against one table: :func:`build_layout`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import zarr

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import ShapeError, StoreError, check_shape
from da3stream.io.store import zarr_util as zu

FORMAT_NAME = "da3stream.run"
FORMAT_VERSION = 1
COUNTERS = ("n_read", "n_frames", "n_chunks", "n_loops", "n_candidates", "n_points", "n_overlap")
"""The row counters of the commit record; every array is bounded by one of them."""
F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ArraySpec:
    """One array of the layout."""

    path: str
    counter: str
    dtype: str
    row_shape: tuple
    chunk_rows: int
    codec: str  # num | pix | rgb | str
    fill: Any
    slot: bool = False  # double-buffered: stored as path_0 / path_1


def build_layout(depth_hw, descriptor_dim, save_rgb, save_conf, frames_per_chunk) -> list[ArraySpec]:
    """The arrays of a format-1 store."""
    h, w = depth_hw
    nan = float("nan")
    small = lambda row_bytes: zu.chunk_rows(row_bytes, 1 << 16, 256)  # noqa: E731 - ~64 KiB chunks
    S = []

    def add(path, counter, dtype, row_shape=(), codec="num", fill=None, slot=False, rows=None):
        itemsize = np.dtype(dtype).itemsize if dtype != "str" else 16
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * itemsize if row_shape else itemsize
        if fill is None:
            fill = {"f": nan, "i": -1, "u": 0, "b": False}.get(np.dtype(dtype).kind, "") if dtype != "str" else ""
        S.append(ArraySpec(path, counter, dtype, tuple(row_shape), rows or small(row_bytes), codec, fill, slot))

    add("source/index", "n_read", "int64")
    add("source/timestamp", "n_read", "float64")
    add("source/kept", "n_read", "bool")
    add("source/skipped_reason", "n_read", "int8")
    add("frames/index", "n_frames", "int64")
    add("frames/timestamp", "n_frames", "float64")
    add("frames/chunk_id", "n_frames", "int32")
    add("frames/chunk_from_cam", "n_frames", "float64", (4, 4))
    add("frames/world_from_cam", "n_frames", "float64", (4, 4), slot=True)
    add("frames/intrinsics", "n_frames", "float64", (3, 3))
    add("frames/depth", "n_frames", "float16", (h, w), "pix", rows=frames_per_chunk)
    if save_conf:
        add("frames/conf", "n_frames", "float16", (h, w), "pix", rows=frames_per_chunk)
    if save_rgb:
        add("frames/rgb", "n_frames", "uint8", (h, w, 3), "rgb", rows=frames_per_chunk)
    if descriptor_dim:
        add("frames/descriptor", "n_frames", "float32", (int(descriptor_dim),))
    for name, dt in [("frame_start", "int64"), ("frame_stop", "int64"), ("n_new", "int32"),
                     ("point_start", "int64"), ("point_stop", "int64")]:
        add(f"chunks/{name}", "n_chunks", dt)
    add("chunks/world_from_chunk", "n_chunks", "float64", (8,), slot=True)
    add("chunks/chunk_from_prev", "n_chunks", "float64", (8,))
    for name in ("inlier_ratio", "residual", "scale", "pose_disagreement"):
        add(f"chunks/{name}", "n_chunks", "float64")
    add("chunks/status", "n_chunks", "int8")
    add("chunks/flag_reason", "n_chunks", "str", codec="str")
    add("chunks/segment", "n_chunks", "int32")
    add("overlap/row", "n_overlap", "int64")
    add("overlap/chunk_id", "n_overlap", "int32")
    add("overlap/chunk_from_cam", "n_overlap", "float64", (4, 4))
    for grp, counter in (("loops", "n_loops"), ("loop_candidates", "n_candidates")):
        add(f"{grp}/chunk_i", counter, "int32")
        add(f"{grp}/chunk_j", counter, "int32")
        add(f"{grp}/frame_i", counter, "int64")
        add(f"{grp}/frame_j", counter, "int64")
        add(f"{grp}/i_from_j", counter, "float64", (8,))
        for name in ("similarity", "inlier_ratio", "residual"):
            add(f"{grp}/{name}", counter, "float64")
        add(f"{grp}/commit", counter, "int64")
    add("loop_candidates/accepted", "n_candidates", "bool")
    add("loop_candidates/reason", "n_candidates", "str", codec="str")
    add("map/xyz", "n_points", "float32", (3,), rows=1 << 16)
    add("map/rgb", "n_points", "uint8", (3,), rows=1 << 16)
    add("map/chunk_id", "n_points", "int32", rows=1 << 16)
    add("map/conf", "n_points", "float16", rows=1 << 16)
    return S


def sim3_row(value: Any, name: str) -> np.ndarray:
    """(8,) float64 [s, quat_xyzw, t] from a Sim3, an (8,) array or None (NaN row)."""
    if value is None:
        return np.full(8, np.nan)
    if isinstance(value, Sim3):
        return value.to_array()
    a = np.asarray(value, dtype=np.float64)
    check_shape(name, a, (8,), "f")
    return a


def to_f16(x: np.ndarray) -> np.ndarray:
    """float16 copy, values beyond the float16 range clipped to +-65504 (NaN kept).

    Converted first and clipped only when the result has an infinity: whatever
    rounds into the float16 range converts exactly as the clipped value would, so
    the common case costs one pass over the output instead of two range scans.
    """
    out = _f16(x)
    if out.size and _has_inf16(out):
        out = _f16(np.clip(x, -F16_MAX, F16_MAX))
    return out


def _has_inf16(a: np.ndarray) -> bool:
    """Any +-inf in a float16 array, on its bits (numpy's float16 ufuncs convert element by element)."""
    return bool(np.any((a.view(np.uint16) & 0x7FFF) == 0x7C00))


def _f16(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32 and x.size >= 1 << 16:
        try:  # torch's vectorised conversion: ~10x faster than numpy's, bit-identical (round to nearest even)
            import torch

            return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float16).numpy()
        except ImportError:
            pass
    with np.errstate(over="ignore"):  # an overflow becomes inf, which to_f16 then clips
        return x.astype(np.float16)


def str_array(a: np.ndarray) -> np.ndarray:
    """A fixed-width numpy ``str`` array from zarr's variable-length strings."""
    return np.array([str(v) for v in a.tolist()], dtype=str)


def create_array(zstore, name: str, s: ArraySpec, level: int, pixel_cname: str, rgb_cname: str) -> None:
    """Create one empty array (0 rows) of the layout.

    Codecs: depth/conf (``pix``) Blosc ``pixel_cname`` + bitshuffle (float16
    compresses best and fastest bit-shuffled); rgb Blosc ``rgb_cname`` without
    shuffle; small numeric tables Blosc zstd + byte shuffle; strings zarr's
    variable-length UTF-8 codec.
    """
    if s.codec == "str":
        zarr.create_array(zstore, name=name, shape=(0,), chunks=(s.chunk_rows,), dtype=str, fill_value="",
                          zarr_format=3, config=zu.ARRAY_CONFIG)
        return
    dt = np.dtype(s.dtype)
    if s.codec == "pix":
        comp = zu.blosc(pixel_cname, level, "bitshuffle", dt.itemsize)
    elif s.codec == "rgb":
        comp = zu.blosc(rgb_cname, level, "noshuffle", 1)
    else:
        comp = zu.blosc("zstd", level, "shuffle" if dt.itemsize > 1 else "noshuffle", dt.itemsize)
    zarr.create_array(zstore, name=name, shape=(0,) + s.row_shape, chunks=(s.chunk_rows,) + s.row_shape, dtype=dt,
                      fill_value=s.fill, compressors=comp, zarr_format=3, config=zu.ARRAY_CONFIG)


def read_root_attrs(p: Path) -> dict:
    meta = p / "zarr.json"
    if not meta.is_file():
        raise StoreError(f"{p}: not a da3stream store (no zarr.json)")
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{p}: store metadata is corrupt (zarr.json: {exc})") from None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{p}: not a da3stream store (zarr.json has no {FORMAT_NAME!r} format attribute)")
    version = attrs.get("format_version")
    if not isinstance(version, int):
        raise StoreError(f"{p}: store metadata is corrupt (format_version missing; creation was interrupted?)")
    if version > FORMAT_VERSION:
        raise StoreError(f"{p}: written by a newer da3stream (format {version} > {FORMAT_VERSION}); upgrade da3stream")
    commit = attrs.get("commit")
    if not isinstance(commit, dict) or any(k not in commit for k in COUNTERS + ("id", "pose_slot", "pose_epoch")):
        raise StoreError(f"{p}: store metadata is corrupt (commit record missing or incomplete)")
    if not isinstance(attrs.get("arrays"), dict):
        raise StoreError(f"{p}: store metadata is corrupt (array list missing)")
    problem = _attrs_problem(attrs)
    if problem:
        raise StoreError(f"{p}: store metadata is corrupt ({problem})")
    return attrs


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _attrs_problem(attrs: dict) -> str:
    """The first root attribute whose type or value a writer never produces ('' when all are plausible)."""
    commit = attrs["commit"]
    for k in COUNTERS + ("id", "pose_epoch"):
        if not _is_count(commit[k]):
            return f"commit {k} is {commit[k]!r}"
    if commit["pose_slot"] not in (0, 1) or isinstance(commit["pose_slot"], bool):
        return f"commit pose_slot is {commit['pose_slot']!r}"
    state = commit.get("state")
    if state is not None:
        if (not isinstance(state, dict) or state.get("slot") not in (0, 1) or isinstance(state.get("slot"), bool)
                or not isinstance(state.get("names"), list)
                or not all(isinstance(n, str) and n.isidentifier() for n in state["names"])
                or not isinstance(state.get("meta", {}), (dict, type(None)))):
            return "commit resume state record is malformed"
    for path, spec in attrs["arrays"].items():
        if (not isinstance(spec, dict) or spec.get("counter") not in COUNTERS
                or not isinstance(spec.get("slot"), bool) or not path or path.startswith("/")):
            return f"array entry {path!r} is malformed"
    for key in ("image_hw", "depth_hw"):
        hw = attrs.get(key)
        if not (isinstance(hw, list) and len(hw) == 2 and all(_is_count(v) and v > 0 for v in hw)):
            return f"{key} is {hw!r}"
    for key in ("config", "source", "model"):
        if not isinstance(attrs.get(key), dict):
            return f"{key} is not a mapping"
    for key in ("run", "extra"):
        if not isinstance(attrs.get(key, {}), dict):
            return f"{key} is not a mapping"
    if not isinstance(attrs.get("status"), str):
        return "status is not a string"
    dim = attrs.get("descriptor_dim")
    if dim is not None and not (_is_count(dim) and dim > 0):
        return f"descriptor_dim is {dim!r}"
    if not (isinstance(attrs.get("save_rgb"), bool) and isinstance(attrs.get("save_conf"), bool)):
        return "save_rgb / save_conf are not booleans"
    comp = attrs.get("compression")
    if not (isinstance(comp, dict) and _is_count(comp.get("level")) and comp["level"] <= 9):
        return "compression record is malformed"
    expected = build_layout(attrs["depth_hw"], dim, attrs["save_rgb"], attrs["save_conf"], 1)
    want = {a.path: (a.counter, a.slot) for a in expected}
    got = {path: (spec["counter"], spec["slot"]) for path, spec in attrs["arrays"].items()}
    if got != want:
        diff = sorted(set(want.items()) ^ set(got.items()))
        return f"array list does not match the format-{FORMAT_VERSION} layout (first difference: {diff[0][0]!r})"
    return ""


def as_array(name: str, value: Any, shape: tuple, kind: str, dtype: Any) -> np.ndarray:
    """``value`` as an array of ``dtype`` after checking its shape and dtype kind (ShapeError names ``name``)."""
    a = np.asarray(value)
    check_shape(name, a, shape, kind)
    return a.astype(dtype, copy=False)


def source_rows(index, timestamp, kept, skipped) -> dict[str, np.ndarray]:
    """``source/`` rows; all None means no rows. ``skipped`` None means all :attr:`SkipReason.NONE`."""
    if index is None:
        if timestamp is not None or kept is not None:
            raise ShapeError("source rows: source_index is required with source_timestamp / source_kept")
        index, timestamp, kept = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
    if timestamp is None or kept is None:
        raise ShapeError("source rows: source_timestamp and source_kept are required with source_index")
    idx = as_array("source_index", index, ("S",), "iu", np.int64)
    n = idx.shape[0]
    return {
        "source/index": idx,
        "source/timestamp": as_array("source_timestamp", timestamp, (n,), "fiu", np.float64),
        "source/kept": as_array("source_kept", kept, (n,), "bui", bool),
        "source/skipped_reason": as_array("source_skipped", np.zeros(n, np.int8) if skipped is None else skipped, (n,), "iu", np.int8),
    }


def parse_hw(name: str, hw: Any) -> tuple[int, int]:
    """``(H, W)`` as two positive ints."""
    try:
        out = tuple(int(v) for v in hw)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 2 or min(out) < 1:
        raise ShapeError(f"RunStore.create({name}): expected (H, W) with positive sizes, got {hw!r}")
    return out


def loop_rows(edges: Sequence[Any], commit_id: int, n_frames: int, n_chunks: int) -> dict[str, np.ndarray]:
    """``loops/`` (accepted) and ``loop_candidates/`` (all) rows of LoopEdge-like objects."""
    cols: dict[str, list] = {k: [] for k in ("chunk_i", "chunk_j", "frame_i", "frame_j", "i_from_j", "similarity",
                                              "inlier_ratio", "residual", "accepted", "reason")}
    for k, e in enumerate(edges):
        try:
            row = {
                "chunk_i": int(e.chunk_i), "chunk_j": int(e.chunk_j), "frame_i": int(e.frame_i), "frame_j": int(e.frame_j),
                "i_from_j": sim3_row(getattr(e, "i_from_j", None), f"loop_edges[{k}].i_from_j"),
                "similarity": float(getattr(e, "similarity", math.nan)),
                "inlier_ratio": float(getattr(e, "inlier_ratio", math.nan)),
                "residual": float(getattr(e, "residual", math.nan)),
                "accepted": bool(getattr(e, "accepted", True)),
                "reason": str(getattr(e, "reason", "") or ""),
            }
        except (AttributeError, TypeError, ValueError) as exc:
            raise ShapeError(f"loop_edges[{k}]: not a loop edge ({exc})") from None
        if not (0 <= row["frame_i"] < n_frames and 0 <= row["frame_j"] < n_frames):
            raise StoreError(f"loop_edges[{k}]: frame rows ({row['frame_i']}, {row['frame_j']}) not in [0, {n_frames})")
        if not (0 <= row["chunk_i"] < n_chunks and 0 <= row["chunk_j"] < n_chunks):
            raise StoreError(f"loop_edges[{k}]: chunks ({row['chunk_i']}, {row['chunk_j']}) not in [0, {n_chunks})")
        for key, v in row.items():
            cols[key].append(v)
    acc = np.array(cols["accepted"], bool)
    dtypes = {"chunk_i": np.int32, "chunk_j": np.int32, "frame_i": np.int64, "frame_j": np.int64}
    out: dict[str, np.ndarray] = {}
    for key in ("chunk_i", "chunk_j", "frame_i", "frame_j", "similarity", "inlier_ratio", "residual"):
        out[f"loop_candidates/{key}"] = np.array(cols[key], dtypes.get(key, np.float64))
    out["loop_candidates/i_from_j"] = np.array(cols["i_from_j"], np.float64).reshape(-1, 8)
    out["loop_candidates/commit"] = np.full(len(edges), commit_id, np.int64)
    out["loop_candidates/accepted"] = acc
    out["loop_candidates/reason"] = np.array(cols["reason"], dtype=object).astype(str) if edges else np.zeros(0, str)
    for key in ("chunk_i", "chunk_j", "frame_i", "frame_j", "similarity", "inlier_ratio", "residual", "i_from_j", "commit"):
        out[f"loops/{key}"] = out[f"loop_candidates/{key}"][acc]
    if np.isnan(out["loops/i_from_j"]).any():
        raise StoreError("loop_edges: an accepted edge has no i_from_j transform")
    return out


def record_rows(r: Any, c: dict, specs: dict, depth_hw: tuple, descriptor_dim: Optional[int]) -> dict[str, np.ndarray]:
    """Validate a ChunkRecord against the committed state and turn it into per-array rows.

    Checks run in a fixed order (frames, pixels, map points, chunk row, overlap,
    source rows, loop edges), so the first problem of a record is the one reported.
    """
    nf, nc, npts = int(c["n_frames"]), int(c["n_chunks"]), int(c["n_points"])
    if int(r.chunk_id) != nc:
        raise StoreError(f"append_chunk: chunk_id {r.chunk_id} is not the next chunk ({nc})")
    rows = _frame_rows(r, nf, nc, depth_hw)
    F = rows["frames/index"].shape[0]
    rows.update(_pixel_rows(r, specs, F, depth_hw, descriptor_dim))
    rows.update(_point_rows(r, nc))
    rows.update(_chunk_row(r, nf, F, npts, rows["map/xyz"].shape[0]))
    rows.update(_overlap_rows(r, nf, nc))
    rows.update(source_rows(r.source_index, r.source_timestamp, r.source_kept, r.source_skipped))
    rows.update(loop_rows(list(r.loop_edges or ()), int(c["id"]) + 1, nf + F, nc + 1))
    return rows


def _frame_rows(r: Any, nf: int, nc: int, depth_hw: tuple) -> dict[str, np.ndarray]:
    """``frames/`` rows of the F new frames (index, time, chunk, poses, intrinsics, depth)."""
    idx = as_array("ChunkRecord.frame_index", r.frame_index, ("F",), "iu", np.int64)
    F = idx.shape[0]
    h, w = depth_hw
    if r.n_new is not None and int(r.n_new) != F:
        raise ShapeError(f"ChunkRecord.n_new: {r.n_new} but frame_index has {F} rows")
    if r.frame_stop is not None and int(r.frame_stop) != nf + F:
        raise StoreError(f"append_chunk: frame_stop {r.frame_stop} != committed frames {nf} + {F} new")
    if not 0 <= int(r.frame_start) <= nf:
        raise StoreError(f"append_chunk: frame_start {r.frame_start} not in [0, {nf}]")
    return {
        "frames/index": idx,
        "frames/timestamp": as_array("ChunkRecord.frame_timestamp", r.frame_timestamp, (F,), "fiu", np.float64),
        "frames/chunk_id": np.full(F, nc, np.int32),
        "frames/chunk_from_cam": as_array("ChunkRecord.chunk_from_cam", r.chunk_from_cam, (F, 4, 4), "f", np.float64),
        "frames/world_from_cam": as_array("ChunkRecord.world_from_cam", r.world_from_cam, (F, 4, 4), "f", np.float64),
        "frames/intrinsics": as_array("ChunkRecord.intrinsics", r.intrinsics, (F, 3, 3), "f", np.float64),
        "frames/depth": to_f16(as_array("ChunkRecord.depth", r.depth, (F, h, w), "f", np.float32)),
    }


def _pixel_rows(r: Any, specs: dict, F: int, depth_hw: tuple, descriptor_dim: Optional[int]) -> dict[str, np.ndarray]:
    """The optional per-frame arrays the store keeps: ``frames/conf``, ``frames/rgb``, ``frames/descriptor``."""
    h, w = depth_hw
    rows: dict[str, np.ndarray] = {}
    if "frames/conf" in specs:
        if r.conf is None:
            raise ShapeError("ChunkRecord.conf: required, the store keeps confidence")
        rows["frames/conf"] = to_f16(as_array("ChunkRecord.conf", r.conf, (F, h, w), "f", np.float32))
    if "frames/rgb" in specs:
        if r.rgb is None:
            raise ShapeError("ChunkRecord.rgb: required, the store keeps rgb")
        check_shape("ChunkRecord.rgb", r.rgb, (F, h, w, 3))
        if np.asarray(r.rgb).dtype != np.uint8:
            raise ShapeError(f"ChunkRecord.rgb: expected dtype uint8, got {np.asarray(r.rgb).dtype}")
        rows["frames/rgb"] = np.asarray(r.rgb)
    if "frames/descriptor" in specs:
        if r.descriptors is None:
            raise ShapeError("ChunkRecord.descriptors: required, the store was created with descriptor_dim")
        rows["frames/descriptor"] = as_array("ChunkRecord.descriptors", r.descriptors, (F, int(descriptor_dim)), "f", np.float32)
    return rows


def _point_rows(r: Any, nc: int) -> dict[str, np.ndarray]:
    """``map/`` rows of the window's P fused points (none when ``points_xyz`` is None)."""
    if r.points_xyz is None:
        return {"map/xyz": np.zeros((0, 3), np.float32), "map/rgb": np.zeros((0, 3), np.uint8),
                "map/chunk_id": np.zeros(0, np.int32), "map/conf": np.zeros(0, np.float16)}
    xyz = as_array("ChunkRecord.points_xyz", r.points_xyz, ("P", 3), "f", np.float32)
    P = xyz.shape[0]
    if r.points_rgb is None:
        raise ShapeError("ChunkRecord.points_rgb: required with points_xyz")
    check_shape("ChunkRecord.points_rgb", r.points_rgb, (P, 3))
    if np.asarray(r.points_rgb).dtype != np.uint8:
        raise ShapeError(f"ChunkRecord.points_rgb: expected dtype uint8, got {np.asarray(r.points_rgb).dtype}")
    pconf = np.full(P, np.nan, np.float32) if r.points_conf is None else as_array(
        "ChunkRecord.points_conf", r.points_conf, (P,), "f", np.float32)
    return {"map/xyz": xyz, "map/rgb": np.asarray(r.points_rgb), "map/chunk_id": np.full(P, nc, np.int32),
            "map/conf": to_f16(pconf)}


def _chunk_row(r: Any, nf: int, F: int, npts: int, P: int) -> dict[str, np.ndarray]:
    """The one ``chunks/`` row of the window (frame and point ranges, Sim(3)s, quality, status)."""
    one = lambda v, dt: np.array([v], dt)  # noqa: E731
    rows = {
        "chunks/frame_start": one(int(r.frame_start), np.int64),
        "chunks/frame_stop": one(nf + F, np.int64),
        "chunks/n_new": one(F, np.int32),
        "chunks/point_start": one(npts, np.int64),
        "chunks/point_stop": one(npts + P, np.int64),
        "chunks/world_from_chunk": sim3_row(r.world_from_chunk, "ChunkRecord.world_from_chunk")[None],
        "chunks/chunk_from_prev": sim3_row(r.chunk_from_prev, "ChunkRecord.chunk_from_prev")[None],
        "chunks/inlier_ratio": one(r.inlier_ratio, np.float64),
        "chunks/residual": one(r.residual, np.float64),
        "chunks/scale": one(r.scale, np.float64),
        "chunks/pose_disagreement": one(r.pose_disagreement, np.float64),
        "chunks/status": one(int(r.status), np.int8),
        "chunks/flag_reason": np.array([str(r.flag_reason or "")], dtype=str),
        "chunks/segment": one(int(r.segment), np.int32),
    }
    if not np.all(np.isfinite(rows["chunks/world_from_chunk"])):
        raise StoreError("ChunkRecord.world_from_chunk: must be finite")
    return rows


def _overlap_rows(r: Any, nf: int, nc: int) -> dict[str, np.ndarray]:
    """``overlap/`` rows: the K committed overlap frames this window re-predicted, in its chunk frame."""
    crow = np.zeros(0, np.int64) if r.carry_rows is None else as_array("ChunkRecord.carry_rows", r.carry_rows, ("K",), "iu", np.int64)
    K = crow.shape[0]
    ccam = np.zeros((0, 4, 4)) if r.carry_chunk_from_cam is None else np.asarray(r.carry_chunk_from_cam, np.float64)
    if ccam.shape[0] == 0 or K == 0:
        crow, ccam, K = np.zeros(0, np.int64), np.zeros((0, 4, 4)), 0
    check_shape("ChunkRecord.carry_chunk_from_cam", ccam, (K, 4, 4), "f")
    if K and (crow.min() < 0 or crow.max() >= nf):
        raise StoreError(f"ChunkRecord.carry_rows: rows must be committed frames [0, {nf})")
    return {"overlap/row": crow, "overlap/chunk_id": np.full(K, nc, np.int32), "overlap/chunk_from_cam": ccam}
