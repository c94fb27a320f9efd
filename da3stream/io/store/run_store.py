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

The store is split by concern: :mod:`~da3stream.io.store.records` (the values
written and read), :mod:`~da3stream.io.store.layout` (arrays, dtypes, chunking,
record validation), :mod:`~da3stream.io.store.create` (a new store),
:mod:`~da3stream.io.store.writing` (appends, pose rewrites, the commit),
:mod:`~da3stream.io.store.reading` (tables, pixels, map points, snapshots),
:mod:`~da3stream.io.store.resume_state` (the resume state); this module opens
and closes a store and holds its attributes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import zarr

from da3stream.errors import StoreError
from da3stream.io.store import create as _create
from da3stream.io.store import zarr_util as zu
from da3stream.io.store.layout import FORMAT_NAME, FORMAT_VERSION, build_layout, parse_hw, read_root_attrs
from da3stream.io.store.reading import StoreReader
from da3stream.io.store.records import ChunkRecord, ChunkStatus, LoopEdge, PointBlock, SkipReason, SourceRows
from da3stream.io.store.resume_state import StoreResumeState
from da3stream.io.store.writing import StoreWriter

log = logging.getLogger(__name__)

__all__ = [
    "ChunkRecord", "ChunkStatus", "LoopEdge", "PointBlock", "RunStore", "SkipReason", "SourceRows",
    "FORMAT_NAME", "FORMAT_VERSION",
]


class RunStore(StoreReader, StoreWriter, StoreResumeState):
    """A run store opened for reading (``mode="r"``) or as the single writer (``create`` / ``mode="a"``).

    Readers re-read the commit record at every table read, so a store that
    another process is writing can be followed live. Row arguments (``rows``)
    are an int, a slice or an int array of ``frames/`` rows below ``n_frames``.
    The reading, writing and resume-state methods come from
    :class:`~da3stream.io.store.reading.StoreReader`,
    :class:`~da3stream.io.store.writing.StoreWriter` and
    :class:`~da3stream.io.store.resume_state.StoreResumeState`.
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
        self._state_slots: dict[int, tuple] = {}  # resume-state slot -> (layout, arrays), see write_state
        self._root: Optional[zarr.Group] = None
        self._specs = {s: dict(v) for s, v in attrs["arrays"].items()}
        self._pose_cache: Optional[dict[str, np.ndarray]] = None  # set on snapshot views

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls, path: str | Path, *, config: Mapping[str, Any], model: Mapping[str, Any], source: Mapping[str, Any],
        image_hw: tuple, depth_hw: tuple, descriptor_dim: Optional[int], save_rgb: bool, save_conf: bool,
        compression_level: int = 3, overwrite: bool = False, frames_per_chunk: int = 8,
        pixel_cname: str = "zstd", rgb_cname: str = "lz4", attrs: Optional[Mapping[str, Any]] = None,
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
        config = _create.config_dict(config)
        ihw, dhw = parse_hw("image_hw", image_hw), parse_hw("depth_hw", depth_hw)
        _create.check_create_args(descriptor_dim, compression_level, frames_per_chunk, pixel_cname, rgb_cname)
        layout = build_layout(dhw, descriptor_dim, save_rgb, save_conf, int(frames_per_chunk))
        commit = _create.empty_commit()
        compression = {"level": int(compression_level), "pixel_cname": pixel_cname, "rgb_cname": rgb_cname,
                       "frames_per_chunk": int(frames_per_chunk)}
        root_attrs = _create.root_attributes(
            layout, config=config, model=model, source=source, image_hw=ihw, depth_hw=dhw,
            descriptor_dim=descriptor_dim, save_rgb=save_rgb, save_conf=save_conf, compression=compression, attrs=attrs,
        )
        root_attrs["commit"] = commit
        _create.prepare_directory(p, overwrite)
        lock = zu.WriterLock(p)
        if not lock.acquire():
            raise StoreError(f"{p}: another process is writing this store")
        _create.write_empty_store(p, layout, root_attrs, lock)
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
                    store._write_attrs({"status": "interrupted", "status_time": zu.utc_now()})
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
        config = _create.config_dict(config)
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
