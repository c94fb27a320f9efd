"""The run store's resume state: named arrays plus JSON metadata, double-buffered, landing with a commit.

:meth:`StoreResumeState.write_state` writes the arrays into the inactive
``state/{0,1}`` slot (one zarr chunk per array); the next commit record names
that slot, so a kill before the commit leaves the previous state live.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import zarr
from zarr.core.sync import sync

from da3stream.errors import ShapeError, StoreError
from da3stream.io.store import zarr_util as zu
from da3stream.io.store.layout import read_root_attrs
from da3stream.io.store.reading import READ_RETRIES

__all__ = ["STATE_CNAME", "StoreResumeState"]

STATE_CNAME = None
"""Codec of the resume state: none. It is rewritten on every commit and read once, its size is fixed
(two slots of the last window's overlap predictions, not growing with the run), and its float32
depth and confidence barely compress, so compressing it only cost CPU on the writer's critical path."""


class StoreResumeState:
    """Resume-state reading and staging (mixed into :class:`~da3stream.io.store.run_store.RunStore`)."""

    def write_state(self, arrays: Mapping[str, np.ndarray], meta: Optional[Mapping[str, Any]] = None) -> None:
        """Stage resume state; it becomes readable atomically with the NEXT commit.

        Args:
            arrays: name -> numeric array (any shape; float16/32/64, ints, bool).
            meta: JSON-able dict stored in the commit record.

        The arrays of a slot are created once and overwritten in place while the
        names, shapes and dtypes stay the same (the usual case: one overlap's worth
        of frames each window); the slot written is never the live one, so a kill
        mid-write leaves the committed state intact.
        """
        self._require_writer()
        live = (self._commit.get("state") or {}).get("slot")
        slot = 0 if live is None else 1 - int(live)
        checked = _checked_state(arrays)
        layout = tuple((name, a.shape, a.dtype.str) for name, a in checked.items())
        try:
            cached = self._state_slots.get(slot)
            if cached is None or cached[0] != layout:
                self._state_slots.pop(slot, None)
                cached = (layout, self._create_state_slot(f"state/{slot}", checked))
                self._state_slots[slot] = cached
            zu.write_whole([(cached[1][name], a) for name, a in checked.items() if a.size])
        except OSError as exc:
            self._state_slots.pop(slot, None)
            raise StoreError(f"{self.path}: cannot write the resume state ({zu.os_reason(exc)})") from None
        self._pending_state = {"slot": slot, "meta": zu.jsonable(dict(meta or {})), "names": list(checked)}

    def _create_state_slot(self, prefix: str, checked: dict[str, np.ndarray]) -> dict[str, zarr.Array]:
        """(Re)create the arrays of one state slot, one chunk each; returns them by name."""
        sync(self._zstore.delete_dir(prefix))
        zarr.create_group(self._zstore, path=prefix, zarr_format=3, overwrite=True)
        return {name: zarr.create_array(self._zstore, name=f"{prefix}/{name}", shape=a.shape, dtype=a.dtype,
                                        chunks=tuple(max(1, n) for n in a.shape), compressors=STATE_CNAME,
                                        zarr_format=3, config=zu.ARRAY_CONFIG)
                for name, a in checked.items()}

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



def _checked_state(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` as contiguous numeric arrays, names checked (before anything is written)."""
    out = {}
    for name, value in arrays.items():
        if not str(name).isidentifier():
            raise StoreError(f"write_state: array name {name!r} must be an identifier")
        a = np.ascontiguousarray(value)
        if a.dtype.kind not in "biuf":
            raise ShapeError(f"write_state({name}): expected a numeric array, got dtype {a.dtype}")
        out[str(name)] = a
    return out
