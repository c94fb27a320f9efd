"""Reading a run store: the committed tables, pixels, loop edges, map points and pinned snapshots.

:class:`StoreReader` is the reading half of :class:`~da3stream.io.store.run_store.RunStore`.
A reader trusts only rows below the committed counts and re-reads the commit
record at every table read, so a store another process is writing can be
followed live; double-buffered pose tables are re-read when a concurrent
rewrite flipped their slot meanwhile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import zarr

from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.voxel import voxel_downsample
from da3stream.errors import ShapeError, StoreError
from da3stream.io.store import zarr_util as zu
from da3stream.io.store.layout import read_root_attrs, str_array
from da3stream.io.store.records import LoopEdge, PointBlock

__all__ = ["READ_RETRIES", "StoreReader"]

READ_RETRIES = 20
"""Times a reader retries a read of double-buffered data (poses, state) that a concurrent rewrite overtook."""


class StoreReader:
    """The reading API of a run store (mixed into :class:`~da3stream.io.store.run_store.RunStore`).

    Row arguments (``rows``) are an int, a slice or an int array of
    ``frames/`` rows below ``n_frames``.
    """

    # Set by RunStore.__init__.
    path: Path
    mode: str
    _zstore: zarr.storage.LocalStore
    _attrs: dict
    _commit: dict
    _arrays: dict[str, zarr.Array]
    _specs: dict[str, dict]
    _pose_cache: Optional[dict[str, np.ndarray]]

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
            out["world_from_cam"] = self._read_slot("frames/world_from_cam", c, sel)
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

    def snapshot(self) -> "StoreReader":
        """A read-only view pinned at the current commit: all its tables describe one commit.

        Pose tables are read into memory now; every other committed row is
        immutable, so the view stays valid while the writer goes on.
        """
        c, cache = self._consistent(lambda c: (c, {
            "frames/world_from_cam": self._read_slot("frames/world_from_cam", c),
            "chunks/world_from_chunk": self._read_slot("chunks/world_from_chunk", c),
        }))
        view = type(self)(self.path, "r", json.loads(json.dumps(self._attrs)), None)
        view._commit = dict(c)
        view._pose_cache = cache
        return view

    # ------------------------------------------------------------------ internals
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

    def _read_slot(self, name: str, c: dict, rows: Any = None) -> np.ndarray:
        """``rows`` (all committed for None) of the live slot of a double-buffered pose array
        (``frames/world_from_cam`` or ``chunks/world_from_chunk``); only those rows are read."""
        counter = self._specs[name]["counter"]
        sel = slice(0, int(c[counter])) if rows is None else rows
        if self._pose_cache is not None:
            return self._pose_cache[name][: int(c[counter])][sel]
        return self._read(f"{name}_{int(c['pose_slot'])}", sel, c, counter)

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
            raise StoreError(f"{self.path}: cannot read {path} ({zu.os_reason(exc)})") from None
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

