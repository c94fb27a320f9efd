"""The Zarr v3 run store: append-only per window, readable while written, resumable after a kill.

One store is one directory (``RUN.zarr``) holding everything a run produced:
per-frame depth/confidence/RGB in the frame of the window that predicted it,
the chunk table with each window's ``world_from_chunk`` Sim(3), loop edges, the
fused point map (in chunk frames), the source log and a small resume state.
docs/STORE.md documents every array (units, shapes, dtypes, frames).

Commit protocol (what makes it crash-safe):

1. every array touched by a commit is resized to its new row count, then the
   new rows are written (all arrays concurrently);
2. the COMMIT record (row counts of every table, live pose slot, resume-state
   slot) is written last, into the root ``zarr.json``.

Every key is replaced atomically (temporary file + rename, see
:mod:`da3stream.io.store.zarr_util`), so a kill at any moment leaves the previous
commit intact; readers trust only rows below the committed counts. Derived
poses (``world_from_cam``, ``world_from_chunk``) exist in two slots: a
loop-closure rewrite fills the inactive slot completely and then flips the
commit's ``pose_slot``. The resume state is double-buffered the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import zarr
from zarr.core.sync import sync

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import ShapeError, StoreError, check_shape
from da3stream.io.store import zarr_util as zu
from da3stream.io.store.layout import (
    COUNTERS, FORMAT_NAME, FORMAT_VERSION, build_layout, create_array, record_rows, loop_rows, parse_hw,
    read_root_attrs, source_rows, str_array,
)
from da3stream.alignment.voxel import voxel_downsample

log = logging.getLogger(__name__)

__all__ = [
    "ChunkRecord", "ChunkStatus", "LoopEdge", "PointBlock", "RunStore", "SkipReason", "SourceRows",
    "FORMAT_NAME", "FORMAT_VERSION",
]

STATUSES = ("running", "complete", "failed", "interrupted")
BLOSC_CNAMES = ("zstd", "lz4", "lz4hc", "blosclz", "zlib")
STATE_CNAME = "lz4"
"""Blosc codec of the resume state (rewritten every commit, read once: speed over size)."""
READ_RETRIES = 20
"""Times a reader retries a read of double-buffered data (poses, state) that a concurrent rewrite overtook."""


class ChunkStatus(IntEnum):
    """``chunks/status`` codes."""

    OK = 0
    GATED = 1  # alignment failed a quality gate; a fallback estimate was used
    FIRST = 2  # the run's first window
    NEW_SEGMENT = 3  # no usable alignment to the previous window: a new segment starts


class SkipReason(IntEnum):
    """``source/skipped_reason`` codes (``kept`` says whether the frame became a keyframe)."""

    NONE = 0  # read fine (kept, or dropped by the keyframe filter)
    DECODE_ERROR = 1
    INVALID = 2  # wrong size, empty or otherwise unusable image
    SUBSAMPLED = 3  # dropped by stride / fps subsampling
    PREDICTION_REJECTED = 4  # read fine, but its window's prediction was unusable (NaN/inf cameras) and dropped


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SourceRows:
    """Frames read from the source since the last commit."""

    index: np.ndarray
    """(S,) int64 frame index in the source (decode order, before subsampling)."""
    timestamp: np.ndarray
    """(S,) float64 seconds."""
    kept: np.ndarray
    """(S,) bool: the frame became a keyframe."""
    skipped_reason: np.ndarray
    """(S,) int8 :class:`SkipReason` codes."""


@dataclass(frozen=True)
class LoopEdge:
    """A loop-closure candidate between two stored frames, verified or not.

    Every edge becomes a ``loop_candidates/`` row; accepted edges also become a
    ``loops/`` row. Any object with these attribute names is accepted in its place.
    """

    chunk_i: int
    """Chunk of the earlier frame."""
    chunk_j: int
    """Chunk of the later (query) frame."""
    frame_i: int
    """``frames/`` row of the earlier frame."""
    frame_j: int
    """``frames/`` row of the later frame."""
    i_from_j: Optional[Any] = None
    """Sim3 or (8,) [s, quat_xyzw, t] mapping chunk j's frame to chunk i's frame; None if unverified."""
    similarity: float = math.nan
    """Descriptor cosine similarity."""
    inlier_ratio: float = math.nan
    """Verification inlier ratio."""
    residual: float = math.nan
    """Verification median depth-relative residual."""
    scale: float = math.nan
    """Scale of ``i_from_j`` (not stored separately; filled on read)."""
    accepted: bool = True
    """Passed verification (becomes a pose-graph edge)."""
    reason: str = ""
    """Why it was rejected ('' when accepted)."""


@dataclass(frozen=True)
class ChunkRecord:
    """Everything one window commits. F new frames of depth grid (h, w), P map points.

    Fill it from plain numpy arrays; floats are converted to the stored dtypes
    (depth/conf to float16, clipped to +-65504). ``frame_stop`` and ``n_new``
    may be left None (derived); when given they are checked.
    """

    chunk_id: int
    """Window number; must equal the store's committed ``n_chunks``."""
    frame_start: int
    """First ``frames/`` row the window covers, overlap frames included."""
    frame_index: np.ndarray
    """(F,) int64 source index of each new frame."""
    frame_timestamp: np.ndarray
    """(F,) float64 seconds."""
    chunk_from_cam: np.ndarray
    """(F, 4, 4) float64 rigid camera poses in this window's chunk frame."""
    world_from_cam: np.ndarray
    """(F, 4, 4) float64 camera poses in the world frame (derived)."""
    intrinsics: np.ndarray
    """(F, 3, 3) float64 pinhole intrinsics at the ORIGINAL image resolution."""
    depth: np.ndarray
    """(F, h, w) float z-depth in chunk units, on the depth grid."""
    world_from_chunk: Any
    """Sim3 or (8,) [s, quat_xyzw, t]: this window's frame in the world (derived)."""
    conf: Optional[np.ndarray] = None
    """(F, h, w) float confidence (required when the store keeps conf)."""
    rgb: Optional[np.ndarray] = None
    """(F, h, w, 3) uint8 colour on the depth grid (required when the store keeps rgb)."""
    descriptors: Optional[np.ndarray] = None
    """(F, D) float32 global descriptors (required when the store was created with descriptor_dim)."""
    frame_stop: Optional[int] = None
    """One past the last ``frames/`` row (= committed n_frames + F)."""
    n_new: Optional[int] = None
    """F."""
    chunk_from_prev: Optional[Any] = None
    """Sim3 or (8,): the sequential alignment measurement; None/NaN when there is none."""
    carry_rows: Optional[np.ndarray] = None
    """(K,) int64 ``frames/`` rows of the overlap frames this window re-predicted."""
    carry_chunk_from_cam: Optional[np.ndarray] = None
    """(K, 4, 4) float64 poses of those overlap frames in THIS window's chunk frame."""
    inlier_ratio: float = math.nan
    residual: float = math.nan
    scale: float = math.nan
    pose_disagreement: float = math.nan
    status: int = ChunkStatus.OK
    """:class:`ChunkStatus` code."""
    flag_reason: str = ""
    """Short reason when gated / a new segment ('' when fine)."""
    segment: int = 0
    """Trajectory segment (increments after a window that could not be aligned)."""
    points_xyz: Optional[np.ndarray] = None
    """(P, 3) float32 fused points in this window's chunk frame."""
    points_rgb: Optional[np.ndarray] = None
    """(P, 3) uint8 colours (required with points_xyz)."""
    points_conf: Optional[np.ndarray] = None
    """(P,) float confidence (NaN when None)."""
    source_index: Optional[np.ndarray] = None
    """(S,) int64 source rows read since the last commit (see :class:`SourceRows`)."""
    source_timestamp: Optional[np.ndarray] = None
    """(S,) float64."""
    source_kept: Optional[np.ndarray] = None
    """(S,) bool."""
    source_skipped: Optional[np.ndarray] = None
    """(S,) int :class:`SkipReason` codes."""
    loop_edges: Sequence[Any] = ()
    """:class:`LoopEdge`-like objects considered while processing this window."""
    state: Optional[Mapping[str, np.ndarray]] = None
    """Resume state that lands with this commit (as :meth:`RunStore.write_state`)."""
    state_meta: Optional[Mapping[str, Any]] = None
    """JSON-able metadata of ``state``."""


class PointBlock(NamedTuple):
    """A block of fused map points (consecutive chunks)."""

    xyz: np.ndarray  # (P, 3) float32, world frame or chunk frame
    rgb: np.ndarray  # (P, 3) uint8
    conf: np.ndarray  # (P,) float16
    chunk_id: np.ndarray  # (P,) int32


def _prepare_directory(p: Path, overwrite: bool) -> None:
    """Make ``p`` an empty directory; an existing non-empty one only with ``overwrite``, and only a store."""
    if p.exists() and not p.is_dir():
        raise StoreError(f"{p}: exists and is not a directory")
    if p.exists() and any(p.iterdir()):
        if not overwrite:
            raise StoreError(f"{p}: already exists and is not empty (pass overwrite=True to replace it)")
        if not (p / "zarr.json").is_file():
            raise StoreError(f"{p}: refusing to overwrite a non-empty directory that is not a Zarr store")
        probe = zu.WriterLock(p)
        if not probe.acquire():
            raise StoreError(f"{p}: cannot overwrite, another process is writing this store")
        probe.release()
        shutil.rmtree(p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{p}: cannot create the store directory ({_os_reason(exc)})") from None


def _os_reason(exc: OSError) -> str:
    """The one-line reason of an OS error; a full disk or quota says so first."""
    import errno

    text = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"disk full: {text}"
    return text


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the store


class RunStore:
    """A run store opened for reading (``mode="r"``) or as the single writer (``create`` / ``mode="a"``).

    Readers re-read the commit record at every table read, so a store that
    another process is writing can be followed live. Row arguments (``rows``)
    are an int, a slice or an int array of ``frames/`` rows below ``n_frames``.
    """

    FORMAT_VERSION: int = FORMAT_VERSION

    def __init__(self, path: Path, mode: str, attrs: dict, lock: Optional[zu.WriterLock]) -> None:
        self.path = Path(path)
        self.mode = mode
        self._zstore = zarr.storage.LocalStore(self.path, read_only=(mode == "r"))
        self._attrs = attrs
        self._commit = dict(attrs["commit"])
        self._lock = lock
        self._arrays: dict[str, zarr.Array] = {}
        self._pending_state: Optional[dict] = None
        self._root: Optional[zarr.Group] = None
        self._specs = {s: dict(v) for s, v in attrs["arrays"].items()}
        self._pose_cache: Optional[dict[str, np.ndarray]] = None  # set on snapshot views

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        config: Mapping[str, Any],
        model: Mapping[str, Any],
        source: Mapping[str, Any],
        image_hw: tuple,
        depth_hw: tuple,
        descriptor_dim: Optional[int],
        save_rgb: bool,
        save_conf: bool,
        compression_level: int = 3,
        overwrite: bool = False,
        frames_per_chunk: int = 8,
        pixel_cname: str = "zstd",
        rgb_cname: str = "lz4",
        attrs: Optional[Mapping[str, Any]] = None,
    ) -> "RunStore":
        """Create an empty store and open it as its writer.

        Args:
            path: the store directory; must not exist or be empty unless ``overwrite``.
            config: the resolved config (nested dict or config dataclass).
            model: ``id``, ``weights_sha256``, ``weights_random`` (+ anything JSON-able).
            source: description of the source (path, frame count, fps, ...).
            image_hw: original image size (H, W).
            depth_hw: depth grid size (h, w).
            descriptor_dim: D of ``frames/descriptor``, or None to store none.
            save_rgb, save_conf: keep ``frames/rgb`` / ``frames/conf``.
            compression_level: Blosc clevel (0-9) of every compressed array.
            frames_per_chunk: frames per zarr chunk of depth/conf/rgb.
            pixel_cname: Blosc codec of ``frames/depth`` and ``frames/conf`` (zstd or
                lz4; lz4 is ~3x faster at ~10% larger files, see docs/STORE.md).
            rgb_cname: Blosc codec of ``frames/rgb`` (lz4 is ~3x faster than zstd
                on images; see docs/STORE.md for the measurement).
            attrs: extra JSON-able root attributes (readable with :meth:`attrs_get`).
        """
        p = Path(path)
        if dataclasses.is_dataclass(config):
            from da3stream.config import to_dict

            config = to_dict(config)
        ihw, dhw = parse_hw("image_hw", image_hw), parse_hw("depth_hw", depth_hw)
        if descriptor_dim is not None and int(descriptor_dim) < 1:
            raise StoreError(f"RunStore.create: descriptor_dim must be None or >= 1, got {descriptor_dim}")
        if not 0 <= int(compression_level) <= 9:
            raise StoreError(f"RunStore.create: compression_level must be 0..9, got {compression_level}")
        if int(frames_per_chunk) < 1:
            raise StoreError(f"RunStore.create: frames_per_chunk must be >= 1, got {frames_per_chunk}")
        for what, cname in (("pixel_cname", pixel_cname), ("rgb_cname", rgb_cname)):
            if cname not in BLOSC_CNAMES:
                raise StoreError(f"RunStore.create: {what} must be one of {', '.join(BLOSC_CNAMES)}, got {cname!r}")
        layout = build_layout(dhw, descriptor_dim, save_rgb, save_conf, int(frames_per_chunk))
        model_d = {"id": None, "weights_sha256": None, "weights_random": False}
        model_d.update(zu.jsonable(dict(model)))
        commit = {k: 0 for k in COUNTERS}
        commit.update(id=0, time=time.time(), pose_slot=0, pose_epoch=0, state=None)
        root_attrs = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": _now(),
            "status": "running",
            "status_time": _now(),
            "config": zu.jsonable(dict(config)),
            "model": model_d,
            "source": zu.jsonable(dict(source)),
            "image_hw": list(ihw),
            "depth_hw": list(dhw),
            "descriptor_dim": int(descriptor_dim) if descriptor_dim else None,
            "save_rgb": bool(save_rgb),
            "save_conf": bool(save_conf),
            "compression": {"level": int(compression_level), "pixel_cname": pixel_cname, "rgb_cname": rgb_cname,
                            "frames_per_chunk": int(frames_per_chunk)},
            "codes": {"chunk_status": {c.name.lower(): int(c) for c in ChunkStatus},
                      "skipped_reason": {c.name.lower(): int(c) for c in SkipReason}},
            "arrays": {s.path: {"counter": s.counter, "slot": s.slot} for s in layout},
            "run": {},
            "extra": zu.jsonable(dict(attrs or {})),
        }
        _prepare_directory(p, overwrite)
        lock = zu.WriterLock(p)
        if not lock.acquire():
            raise StoreError(f"{p}: another process is writing this store")
        try:
            zstore = zarr.storage.LocalStore(p)
            root = zarr.create_group(zstore, zarr_format=3, attributes={"format": FORMAT_NAME})
            for grp in sorted({s.path.split("/")[0] for s in layout} | {"state"}):
                root.create_group(grp)
            root["state"].create_group("0")
            root["state"].create_group("1")
            lvl = int(compression_level)
            for s in layout:
                names = [f"{s.path}_0", f"{s.path}_1"] if s.slot else [s.path]
                for name in names:
                    create_array(zstore, name, s, lvl, pixel_cname, rgb_cname)
            root_attrs["commit"] = commit
            root.update_attributes(root_attrs)  # written last: the store is valid from here on
        except OSError as exc:
            lock.release()
            raise StoreError(f"{p}: cannot create the store ({_os_reason(exc)})") from None
        store = cls(p, "a", json.loads(json.dumps(root_attrs)), lock)
        store._root = zarr.open_group(store._zstore, mode="r+", zarr_format=3)
        log.info("created store %s (depth %dx%d, format %d)", p, dhw[0], dhw[1], FORMAT_VERSION)
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "RunStore":
        """Open an existing store for reading (``"r"``) or as its writer (``"a"``).

        ``"a"`` takes the writer lock, truncates every array to its committed
        row count (dropping what a killed writer left uncommitted) and marks a
        run that was left ``running`` as ``interrupted``.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"RunStore.open: mode must be 'r' or 'a', got {mode!r}")
        p = Path(path)
        if not p.exists():
            raise StoreError(f"{p}: store not found")
        attrs = read_root_attrs(p)
        lock = None
        if mode == "a":
            lock = zu.WriterLock(p)
            if not lock.acquire():
                raise StoreError(f"{p}: another process is writing this store")
        try:
            store = cls(p, mode, attrs, lock)
            store._open_arrays()
            if mode == "a":
                store._root = zarr.open_group(store._zstore, mode="r+", zarr_format=3)
                store._truncate_uncommitted()
                if attrs.get("status") == "running":
                    store._write_attrs({"status": "interrupted", "status_time": _now()})
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    def close(self) -> None:
        """Release the writer lock (a reader holds nothing)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self._commit
        return f"RunStore({str(self.path)!r}, mode={self.mode!r}, frames={c['n_frames']}, chunks={c['n_chunks']})"

    # ------------------------------------------------------------------ attributes
    @property
    def committed(self) -> dict:
        """A copy of the current COMMIT record (re-read from disk for readers)."""
        return dict(self._current())

    @property
    def n_frames(self) -> int:
        return int(self._current()["n_frames"])

    @property
    def n_chunks(self) -> int:
        return int(self._current()["n_chunks"])

    @property
    def n_points(self) -> int:
        return int(self._current()["n_points"])

    @property
    def config(self) -> dict:
        return json.loads(json.dumps(self._attrs["config"]))

    @property
    def model(self) -> dict:
        return dict(self._attrs["model"])

    @property
    def source(self) -> dict:
        return json.loads(json.dumps(self._attrs["source"]))

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self._attrs["image_hw"])

    @property
    def depth_hw(self) -> tuple[int, int]:
        return tuple(self._attrs["depth_hw"])

    @property
    def status(self) -> str:
        if self.mode == "r":
            self._attrs = read_root_attrs(self.path)
        return str(self._attrs["status"])

    @property
    def has_rgb(self) -> bool:
        return "frames/rgb" in self._specs

    @property
    def has_conf(self) -> bool:
        return "frames/conf" in self._specs

    @property
    def has_descriptors(self) -> bool:
        return "frames/descriptor" in self._specs

    def attrs_get(self, key: str, default: Any = None) -> Any:
        """A root attribute, or an ``extra`` attribute given to :meth:`create`, or ``default``."""
        if key in self._attrs:
            return self._attrs[key]
        return self._attrs.get("extra", {}).get(key, default)

    def check_resume_compatible(self, config: Any, source: Mapping[str, Any], ignore: Sequence[str] = ("source.prefetch",)) -> None:
        """Raise :class:`StoreError` naming the first config or source key that differs from the store's.

        ``ignore`` lists dotted config keys that do not affect results.
        """
        if dataclasses.is_dataclass(config):
            from da3stream.config import to_dict

            config = to_dict(config)
        stored, given = zu.jsonable(self._attrs["config"]), zu.jsonable(dict(config))
        for key in ignore:
            for tree in (stored, given):
                parent = zu.lookup(tree, key.rsplit(".", 1)[0]) if "." in key else tree
                if isinstance(parent, dict):
                    parent.pop(key.rsplit(".", 1)[-1], None)
        for what, a, b in (("config", stored, given), ("source", self._attrs["source"], dict(source))):
            key = zu.first_difference(a, b)
            if key is not None:
                raise StoreError(
                    f"{self.path}: cannot resume: {what} key {key!r} differs "
                    f"(store has {zu.lookup(zu.jsonable(a), key)!r}, given {zu.lookup(zu.jsonable(b), key)!r})"
                )

    # ------------------------------------------------------------------ writing
    def append_chunk(self, chunk: ChunkRecord) -> None:
        """Append one window (frames, chunk row, map points, source rows, loop edges, state) and commit."""
        self._require_writer()
        c = self._commit
        nf, nc = int(c["n_frames"]), int(c["n_chunks"])
        rows = record_rows(chunk, c, self._specs, self.depth_hw, self._attrs.get("descriptor_dim"))
        if chunk.state is not None:
            self.write_state(chunk.state, chunk.state_meta or {})
        new = dict(c)
        for counter, path in (("n_frames", "frames/index"), ("n_chunks", "chunks/frame_start"), ("n_read", "source/index"),
                              ("n_points", "map/xyz"), ("n_overlap", "overlap/row"), ("n_loops", "loops/chunk_i"),
                              ("n_candidates", "loop_candidates/chunk_i")):
            new[counter] = int(c[counter]) + len(rows[path])
        self._commit_rows(rows, {}, new, f"window {chunk.chunk_id}")
        log.debug("committed window %d: frames %d..%d, chunk %d", chunk.chunk_id, nf, new["n_frames"], nc)

    def append_source_rows(self, rows: SourceRows | Sequence[tuple]) -> None:
        """Commit source rows read after the last window (e.g. at the end of the stream).

        ``rows``: a :class:`SourceRows`, or a sequence of ``(index, timestamp, kept, skipped_reason)``.
        """
        self._require_writer()
        if not isinstance(rows, SourceRows):
            seq = list(rows)
            rows = SourceRows(
                index=np.array([r[0] for r in seq], np.int64), timestamp=np.array([r[1] for r in seq], np.float64),
                kept=np.array([r[2] for r in seq], bool), skipped_reason=np.array([r[3] for r in seq], np.int8),
            )
        data = source_rows(rows.index, rows.timestamp, rows.kept, rows.skipped_reason)
        new = dict(self._commit)
        new["n_read"] += len(data["source/index"])
        self._commit_rows(data, {}, new, "source rows")

    def rewrite_poses(self, world_from_chunk: np.ndarray, world_from_cam: np.ndarray, loops: Optional[Sequence[Any]] = None) -> None:
        """Replace every committed chunk's ``world_from_chunk`` and frame's ``world_from_cam`` atomically.

        Args:
            world_from_chunk: (C, 8) float64 [s, quat_xyzw, t] for all C committed chunks (or a list of Sim3).
            world_from_cam: (F, 4, 4) float64 for all F committed frames.
            loops: loop edges to append in the same commit (:class:`LoopEdge`-like).

        The inactive pose slot is written completely, then the commit flips
        ``pose_slot``; a kill before the flip leaves the previous poses live.
        """
        self._require_writer()
        c = self._commit
        if isinstance(world_from_chunk, (list, tuple)) and world_from_chunk and isinstance(world_from_chunk[0], Sim3):
            world_from_chunk = np.stack([s.to_array() for s in world_from_chunk])
        wfc = np.asarray(world_from_chunk, dtype=np.float64)
        wcam = np.asarray(world_from_cam, dtype=np.float64)
        check_shape("rewrite_poses(world_from_chunk)", wfc, (int(c["n_chunks"]), 8), "f")
        check_shape("rewrite_poses(world_from_cam)", wcam, (int(c["n_frames"]), 4, 4), "f")
        if not (np.all(np.isfinite(wfc)) and np.all(np.isfinite(wcam))):
            raise StoreError("rewrite_poses: poses contain NaN or inf")
        rows = loop_rows(list(loops or ()), int(c["id"]) + 1, int(c["n_frames"]), int(c["n_chunks"]))
        slot = 1 - int(c["pose_slot"])
        new = dict(c)
        new.update(pose_slot=slot, pose_epoch=int(c["pose_epoch"]) + 1)
        new["n_loops"] += len(rows["loops/chunk_i"])
        new["n_candidates"] += len(rows["loop_candidates/chunk_i"])
        full = {f"chunks/world_from_chunk_{slot}": wfc, f"frames/world_from_cam_{slot}": wcam}
        self._commit_rows(rows, full, new, "pose rewrite")

    def write_state(self, arrays: Mapping[str, np.ndarray], meta: Optional[Mapping[str, Any]] = None) -> None:
        """Stage resume state; it becomes readable atomically with the NEXT commit.

        Args:
            arrays: name -> numeric array (any shape; float16/32/64, ints, bool).
            meta: JSON-able dict stored in the commit record.
        """
        self._require_writer()
        live = (self._commit.get("state") or {}).get("slot")
        slot = 0 if live is None else 1 - int(live)
        prefix = f"state/{slot}"
        lvl = int(self._attrs["compression"]["level"])
        names: list[str] = []
        try:
            sync(self._zstore.delete_dir(prefix))
            zarr.create_group(self._zstore, path=prefix, zarr_format=3, overwrite=True)
            for name, value in arrays.items():
                if not str(name).isidentifier():
                    raise StoreError(f"write_state: array name {name!r} must be an identifier")
                a = np.ascontiguousarray(value)
                if a.dtype.kind not in "biuf":
                    raise ShapeError(f"write_state({name}): expected a numeric array, got dtype {a.dtype}")
                arr = zarr.create_array(
                    self._zstore, name=f"{prefix}/{name}", shape=a.shape, dtype=a.dtype,
                    chunks=tuple(max(1, n) for n in a.shape),
                    compressors=zu.blosc(STATE_CNAME, lvl, "shuffle", a.dtype.itemsize), zarr_format=3,
                    config=zu.ARRAY_CONFIG,
                )
                if a.size:
                    arr[...] = a
                names.append(str(name))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the resume state ({_os_reason(exc)})") from None
        self._pending_state = {"slot": slot, "meta": zu.jsonable(dict(meta or {})), "names": names}

    def set_status(self, status: str, **extra: Any) -> None:
        """Set the run status (running / complete / failed / interrupted) and merge ``extra`` into ``run``."""
        self._require_writer()
        if status not in STATUSES:
            raise StoreError(f"set_status: status must be one of {', '.join(STATUSES)}, got {status!r}")
        run = dict(self._attrs.get("run", {}))
        run.update(zu.jsonable(extra))
        try:
            self._write_attrs({"status": status, "status_time": _now(), "run": run})
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the run status ({_os_reason(exc)})") from None

    # ------------------------------------------------------------------ reading
    def frames_table(self, rows: Any = None, descriptors: bool = False) -> dict[str, np.ndarray]:
        """Committed frame rows: ``index`` (F,) int64, ``timestamp`` (F,) float64 s, ``chunk_id`` (F,) int32,
        ``chunk_from_cam`` / ``world_from_cam`` (F, 4, 4) float64, ``intrinsics`` (F, 3, 3) float64
        (original resolution), and ``descriptor`` (F, D) float32 when ``descriptors`` and stored.

        ``rows``: only these rows (slice or int array), e.g. for loop verification on a long run.
        """

        def read(c: dict) -> dict:
            sel = self._rows(rows, c, "frames_table")
            out = {name: self._read(f"frames/{name}", sel, c) for name in
                   ("index", "timestamp", "chunk_id", "chunk_from_cam", "intrinsics")}
            out["world_from_cam"] = self._read_slot("frames/world_from_cam", c)[sel]
            if descriptors and self.has_descriptors:
                out["descriptor"] = self._read("frames/descriptor", sel, c)
            return out

        return self._consistent(read)

    def depth(self, rows: Any) -> np.ndarray:
        """(N, h, w) float16 depth (chunk units) of ``rows`` ((h, w) for an int)."""
        return self._frame_pixels("frames/depth", rows)

    def conf(self, rows: Any) -> np.ndarray:
        """(N, h, w) float16 confidence of ``rows``."""
        if not self.has_conf:
            raise StoreError(f"{self.path}: the store keeps no confidence (save_conf was false)")
        return self._frame_pixels("frames/conf", rows)

    def rgb(self, rows: Any) -> np.ndarray:
        """(N, h, w, 3) uint8 colour on the depth grid of ``rows``."""
        if not self.has_rgb:
            raise StoreError(f"{self.path}: the store keeps no rgb (save_rgb was false)")
        return self._frame_pixels("frames/rgb", rows)

    def descriptors(self, rows: Any = None) -> np.ndarray:
        """(N, D) float32 global descriptors of ``rows`` (all committed frames for None)."""
        if not self.has_descriptors:
            raise StoreError(f"{self.path}: the store keeps no descriptors")
        return self._frame_pixels("frames/descriptor", slice(None) if rows is None else rows)

    def chunks_table(self) -> dict[str, np.ndarray]:
        """Committed chunk rows (C,): ``frame_start``, ``frame_stop``, ``n_new``, ``point_start``,
        ``point_stop``, ``world_from_chunk`` (C, 8), ``chunk_from_prev`` (C, 8), ``inlier_ratio``,
        ``residual``, ``scale``, ``pose_disagreement``, ``status`` (int8), ``flag_reason`` (str), ``segment``."""

        def read(c: dict) -> dict:
            n = int(c["n_chunks"])
            out = {}
            for path in self._specs:
                if path.startswith("chunks/") and not self._specs[path]["slot"]:
                    out[path.split("/", 1)[1]] = self._read(path, slice(0, n), c)
            out["world_from_chunk"] = self._read_slot("chunks/world_from_chunk", c)
            out["flag_reason"] = str_array(out["flag_reason"])
            return out

        return self._consistent(read)

    def source_table(self) -> dict[str, np.ndarray]:
        """Every committed source row (S,): ``index``, ``timestamp``, ``kept``, ``skipped_reason``."""
        return self._group_table("source")

    def loops_table(self) -> dict[str, np.ndarray]:
        """Verified loop edges (L,): ``chunk_i``, ``chunk_j``, ``frame_i``, ``frame_j``, ``i_from_j`` (L, 8),
        ``similarity``, ``inlier_ratio``, ``residual``, ``commit``."""
        return self._group_table("loops")

    def candidates_table(self) -> dict[str, np.ndarray]:
        """Every loop candidate (M,): the ``loops`` columns plus ``accepted`` (bool) and ``reason`` (str)."""
        out = self._group_table("loop_candidates")
        out["reason"] = str_array(out["reason"])
        return out

    def overlap_table(self) -> dict[str, np.ndarray]:
        """Overlap re-predictions (K,): ``row`` (frames/ row), ``chunk_id`` (the later window),
        ``chunk_from_cam`` (K, 4, 4) in that later window's frame."""
        return self._group_table("overlap")

    def carry_poses(self, chunk_id: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """``(rows (K,), chunk_from_cam (K, 4, 4))`` of the overlap frames window ``chunk_id`` re-predicted, or None."""
        t = self.overlap_table()
        sel = t["chunk_id"] == int(chunk_id)
        if not sel.any():
            return None
        return t["row"][sel], t["chunk_from_cam"][sel]

    def loop_edges(self, accepted_only: bool = True) -> list[LoopEdge]:
        """Loop edges as :class:`LoopEdge` values (verified ones, or every candidate)."""
        t = self.loops_table() if accepted_only else self.candidates_table()
        out = []
        for k in range(t["chunk_i"].shape[0]):
            ij = t["i_from_j"][k]
            out.append(LoopEdge(
                chunk_i=int(t["chunk_i"][k]), chunk_j=int(t["chunk_j"][k]), frame_i=int(t["frame_i"][k]),
                frame_j=int(t["frame_j"][k]), i_from_j=None if np.isnan(ij).any() else Sim3.from_array(ij),
                similarity=float(t["similarity"][k]), inlier_ratio=float(t["inlier_ratio"][k]),
                residual=float(t["residual"][k]), scale=float(ij[0]), accepted=bool(t["accepted"][k]) if "accepted" in t else True,
                reason=str(t["reason"][k]) if "reason" in t else "",
            ))
        return out

    def world_from_chunk(self) -> list[Sim3]:
        """The live ``world_from_chunk`` of every committed chunk."""
        return [Sim3.from_array(a) for a in self.chunks_table()["world_from_chunk"]]

    def iter_map_points(self, world: bool = True, max_points: int = 1 << 21, n_chunks: Optional[int] = None) -> Iterator[PointBlock]:
        """Fused map points in blocks of whole chunks (about ``max_points`` each; memory stays flat).

        ``world``: compose each chunk's points with its live ``world_from_chunk``;
        otherwise points stay in their chunk's frame. ``n_chunks``: only the
        first that many chunks (default: all committed when the iteration starts).
        """
        c, wfc = self._consistent(lambda c: (c, self._read_slot("chunks/world_from_chunk", c)))
        nc = int(c["n_chunks"]) if n_chunks is None else int(n_chunks)
        if nc > int(c["n_chunks"]) or nc < 0:
            raise StoreError(f"{self.path}: n_chunks {nc} not in [0, {c['n_chunks']}]")
        if nc == 0:
            return
        start = self._read("chunks/point_start", slice(0, nc), c)
        stop = self._read("chunks/point_stop", slice(0, nc), c)
        k = 0
        while k < nc:
            k1 = k + 1
            while k1 < nc and stop[k1] - start[k] <= max_points:
                k1 += 1
            p0, p1 = int(start[k]), int(stop[k1 - 1])
            sl = slice(p0, p1)
            xyz = self._read("map/xyz", sl, c)
            if world:
                xyz = xyz.copy()
                for j in range(k, k1):
                    a, b = int(start[j]) - p0, int(stop[j]) - p0
                    if b > a:
                        xyz[a:b] = Sim3.from_array(wfc[j]).apply(xyz[a:b].astype(np.float64)).astype(np.float32)
            yield PointBlock(xyz, self._read("map/rgb", sl, c), self._read("map/conf", sl, c), self._read("map/chunk_id", sl, c))
            k = k1

    def map_points(self, world: bool = True, voxel: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
        """All fused points ``(xyz (P, 3) float32, rgb (P, 3) uint8)``, world frame unless ``world=False``.

        ``voxel``: downsample to one point per voxel of this edge (world units) after composing.
        """
        blocks = list(self.iter_map_points(world=world))
        if not blocks:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        xyz = np.concatenate([b.xyz for b in blocks])
        rgb = np.concatenate([b.rgb for b in blocks])
        if voxel is not None:
            xyz, rgb = voxel_downsample(xyz, rgb, float(voxel))
        return xyz, rgb

    def read_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, meta)`` of the committed resume state; ``({}, {})`` when none was committed."""
        for _ in range(READ_RETRIES):
            st = self._current().get("state")
            if not st:
                return {}, {}
            try:
                arrays = {name: self._state_array(f"state/{st['slot']}/{name}") for name in st["names"]}
                error = None
            except Exception as exc:  # noqa: BLE001 - zarr raises several types for missing/corrupt keys
                arrays, error = {}, exc
            if self.mode == "a":
                if error is not None:
                    raise StoreError(f"{self.path}: resume state is missing or corrupt ({type(error).__name__}: {error})")
                return arrays, dict(st.get("meta") or {})
            live = (read_root_attrs(self.path)["commit"].get("state") or {}).get("commit")
            if live == st["commit"] and error is None:
                return arrays, dict(st.get("meta") or {})
            if self._pose_cache is not None:
                raise StoreError(f"{self.path}: snapshot is out of date (the resume state was replaced); take a new snapshot")
            if live == st["commit"]:
                raise StoreError(f"{self.path}: resume state is missing or corrupt ({type(error).__name__}: {error})")
        raise StoreError(f"{self.path}: the resume state changed {READ_RETRIES} times during one read")

    def _state_array(self, path: str) -> np.ndarray:
        """One resume-state array; :meth:`write_state` writes each as a single chunk, so any other shape is damage
        (and reading a damaged, huge shape would take forever)."""
        arr = zu.open_array(self._zstore, path, "r")
        if tuple(arr.chunks) != tuple(max(1, int(n)) for n in arr.shape):
            raise ValueError(f"{path}: shape {arr.shape} does not match its single chunk {arr.chunks}")
        return np.asarray(arr[...])

    def snapshot(self) -> "RunStore":
        """A read-only view pinned at the current commit: all its tables describe one commit.

        Pose tables are read into memory now; every other committed row is
        immutable, so the view stays valid while the writer goes on.
        """
        c, cache = self._consistent(lambda c: (c, {
            "frames/world_from_cam": self._read_slot("frames/world_from_cam", c),
            "chunks/world_from_chunk": self._read_slot("chunks/world_from_chunk", c),
        }))
        view = RunStore(self.path, "r", json.loads(json.dumps(self._attrs)), None)
        view._commit = dict(c)
        view._pose_cache = cache
        return view

    # ------------------------------------------------------------------ internals
    def _require_writer(self) -> None:
        if self.mode != "a" or self._lock is None:
            raise StoreError(f"{self.path}: store is open read-only (use RunStore.open(path, mode='a'))")

    def _current(self) -> dict:
        if self.mode == "r" and self._pose_cache is None:
            self._attrs = read_root_attrs(self.path)
            self._commit = dict(self._attrs["commit"])
        return self._commit

    def _consistent(self, fn):
        """Run ``fn(commit)``; for readers, retry when a pose rewrite flipped slots meanwhile."""
        for _ in range(READ_RETRIES):
            c = dict(self._current())
            out = fn(c)
            if self.mode != "r" or self._pose_cache is not None or int(self._current()["pose_epoch"]) == int(c["pose_epoch"]):
                return out
        raise StoreError(f"{self.path}: poses were rewritten {READ_RETRIES} times during one read")

    def _read_slot(self, name: str, c: dict) -> np.ndarray:
        """The live slot of a double-buffered pose array (``frames/world_from_cam`` or ``chunks/world_from_chunk``)."""
        counter = self._specs[name]["counter"]
        if self._pose_cache is not None:
            return self._pose_cache[name][: int(c[counter])]
        return self._read(f"{name}_{int(c['pose_slot'])}", slice(0, int(c[counter])), c, counter)

    def _group_table(self, group: str) -> dict[str, np.ndarray]:
        c = dict(self._current())
        out = {}
        for path, spec in self._specs.items():
            if path.startswith(group + "/"):
                out[path.split("/", 1)[1]] = self._read(path, slice(0, int(c[spec["counter"]])), c)
        return out

    def _frame_pixels(self, path: str, rows: Any) -> np.ndarray:
        c = dict(self._current())
        if isinstance(rows, (int, np.integer)):
            return self._read(path, self._rows(np.array([rows]), c, path), c)[0]
        return self._read(path, self._rows(rows, c, path), c)

    def _rows(self, rows: Any, c: dict, what: str) -> Any:
        """A slice (step 1) or a 1-D int64 array of ``frames/`` rows below the committed count."""
        n = int(c["n_frames"])
        if rows is None:
            return slice(0, n)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            return slice(start, max(start, stop)) if step == 1 else np.arange(start, stop, step)
        idx = np.asarray(rows)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise ShapeError(f"{what} rows: expected an int, a slice or a 1-D int array, got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
            raise StoreError(f"{self.path}: {what} row {bad} out of range [0, {n})")
        return idx.astype(np.int64)

    def _read(self, path: str, rows: Any, c: dict, counter: Optional[str] = None) -> np.ndarray:
        """Read rows of one array, reopening it when a writer has grown it since we opened it."""
        arr = self._array(path, int(c[counter or self._specs[path]["counter"]]))
        try:
            return zu.read_rows(arr, rows)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read {path} ({_os_reason(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - codec errors of a damaged chunk file
            raise StoreError(f"{self.path}: {path} is corrupt ({type(exc).__name__}: {exc})") from None

    def _array(self, path: str, need_rows: int = 0) -> zarr.Array:
        arr = self._arrays.get(path)
        if arr is None or arr.shape[0] < need_rows:
            try:
                arr = zu.open_array(self._zstore, path, "r" if self.mode == "r" else "r+")
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"{self.path}: array {path} is missing or corrupt ({type(exc).__name__})") from None
            if arr.shape[0] < need_rows:
                raise StoreError(f"{self.path}: array {path} has {arr.shape[0]} rows, fewer than the committed {need_rows}")
            self._arrays[path] = arr
        return arr

    def _physical_paths(self) -> list[tuple[str, str, bool]]:
        """(physical path, counter, is live-or-plain) for every array."""
        out = []
        slot = int(self._commit["pose_slot"])
        for path, spec in self._specs.items():
            if spec["slot"]:
                out.append((f"{path}_{slot}", spec["counter"], True))
                out.append((f"{path}_{1 - slot}", spec["counter"], False))
            else:
                out.append((path, spec["counter"], True))
        return out

    def _open_arrays(self) -> None:
        c = self._commit
        for path, counter, live in self._physical_paths():
            self._array(path, int(c[counter]) if live else 0)

    def _truncate_uncommitted(self) -> None:
        c = self._commit
        todo = [(self._arrays[p], int(c[counter])) for p, counter, live in self._physical_paths() if live]
        todo = [(a, n) for a, n in todo if a.shape[0] != n]
        n_partial = zu.remove_partial_files(self.path)
        try:
            zu.resize_rows(todo)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot truncate uncommitted rows ({_os_reason(exc)})") from None
        if todo or n_partial:
            log.info("%s: dropped uncommitted rows of %d arrays and %d temporary files", self.path, len(todo), n_partial)

    def _write_attrs(self, update: dict) -> None:
        """Write root attributes (atomic replace of the root zarr.json); keeps memory in sync only on success."""
        try:
            self._root.update_attributes(update)
        except BaseException:
            self._root = zarr.open_group(self._zstore, mode="r+", zarr_format=3)
            raise
        self._attrs.update(json.loads(json.dumps(zu.jsonable(update))))

    def _commit_rows(self, appends: dict[str, np.ndarray], full: dict[str, np.ndarray], new: dict, what: str) -> None:
        """Write ``appends`` after the committed rows and ``full`` arrays from row 0, then the commit record."""
        c = self._commit
        slot = int(c["pose_slot"])
        items = []
        for path, data in appends.items():
            spec = self._specs.get(path)
            if spec is None:
                if len(data):
                    log.debug("%s: no array %s in this store; %d rows dropped", self.path, path, len(data))
                continue
            phys = f"{path}_{slot}" if spec["slot"] else path
            items.append((self._array(phys), int(c[spec["counter"]]), data))
        for phys, data in full.items():
            items.append((self._array(phys), 0, data))
        new = dict(new)
        new["id"] = int(c["id"]) + 1
        new["time"] = time.time()
        if self._pending_state is not None:
            new["state"] = dict(self._pending_state, commit=new["id"])
        try:
            zu.resize_rows([(a, start + len(d)) for a, start, d in items])
            zu.write_rows(items)
            self._write_attrs({"commit": new})
        except OSError as exc:
            raise StoreError(
                f"{self.path}: writing {what} failed ({_os_reason(exc)}); "
                f"the store is unchanged at commit {c['id']}"
            ) from None
        self._commit = new
        self._pending_state = None
