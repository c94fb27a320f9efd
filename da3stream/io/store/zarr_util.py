"""Small Zarr v3 helpers for the run store: codecs, batched row writes, the writer lock, OS error text.

Everything that knows how zarr-python is driven lives here so that
:mod:`da3stream.io.store.run_store` reads as a description of the layout.

Crash safety rests on one property of ``zarr.storage.LocalStore``: every key
(an array's ``zarr.json`` or one chunk file) is written to a temporary
``*.partial`` file and renamed over the target, so a reader or a process killed
at any moment sees either the old or the new bytes of a key, never a torn one.
A kill can leave ``*.partial`` files behind; :func:`remove_partial_files`
deletes them when a writer reopens the store.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync

log = logging.getLogger(__name__)

LOCK_NAME = ".da3stream-writer.lock"
"""File in the store directory that a writer holds an exclusive ``flock`` on."""

#: Runtime array config for every array the store opens: a chunk that happens to
#: equal the fill value is still written (the all-fill test costs ~40% of the
#: write time of large chunks, and an explicit chunk keeps crash reasoning simple).
ARRAY_CONFIG = {"write_empty_chunks": True}


def blosc(cname: str, clevel: int, shuffle: str, typesize: int) -> BloscCodec:
    """A Blosc compressor for one array (``shuffle``: noshuffle, shuffle or bitshuffle)."""
    return BloscCodec(cname=cname, clevel=int(clevel), shuffle=shuffle, typesize=int(typesize))


def open_array(store: zarr.storage.StoreLike, path: str, mode: str) -> zarr.Array:
    """Open one existing array with :data:`ARRAY_CONFIG` (raises zarr's errors when absent)."""
    arr = zarr.open_array(store=store, path=path, mode=mode, zarr_format=3)
    return arr.with_config(ARRAY_CONFIG)


def resize_rows(arrays: Sequence[tuple[zarr.Array, int]]) -> list[zarr.Array]:
    """Set the leading dimension of each array to the given row count, concurrently.

    Only the arrays' ``zarr.json`` files are rewritten (shrinking also deletes
    chunks that fall entirely outside the new shape). Returns the arrays with
    their updated metadata.
    """

    async def one(arr: zarr.Array, rows: int) -> None:
        a = arr.async_array
        if a.metadata.shape[0] != rows:
            await a.resize((rows,) + tuple(a.metadata.shape[1:]))

    todo = [(a, n) for a, n in arrays]
    _run_all([one(a, n) for a, n in todo])
    return [a for a, _ in todo]


def write_rows(items: Iterable[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write ``data`` at rows ``[start, start + len(data))`` of each array, all concurrently.

    The arrays must already be at least that long (see :func:`resize_rows`).
    Gathering every array's chunk writes into one event-loop call lets Blosc
    compress chunks of different arrays in parallel threads.
    """
    coros = []
    for arr, start, data in items:
        if len(data) == 0:
            continue
        coros.append(arr.async_array.setitem(slice(start, start + len(data)), data))
    _run_all(coros)


def write_whole(items: Iterable[tuple[zarr.Array, np.ndarray]]) -> None:
    """Overwrite each array with ``data`` of its own shape, all concurrently (one event-loop call)."""
    _run_all([arr.async_array.setitem(Ellipsis, data) for arr, data in items])


def _run_all(coros: list) -> None:
    """Run coroutines concurrently on zarr's event loop; the first exception propagates."""

    async def gather() -> None:
        await asyncio.gather(*coros)

    if coros:
        sync(gather())


def read_rows(arr: zarr.Array, rows: Any) -> np.ndarray:
    """Rows of ``arr`` selected by a slice or an integer index array (sorted or not)."""
    if isinstance(rows, slice):
        return np.asarray(arr[rows])
    idx = np.asarray(rows, dtype=np.int64)
    if idx.size == 0:
        return np.zeros((0,) + tuple(arr.shape[1:]), dtype=arr.dtype)
    uniq, inverse = np.unique(idx, return_inverse=True)
    if uniq[-1] - uniq[0] + 1 == uniq.size:  # a run of rows (a loop's verification window): a basic slice read
        block = np.asarray(arr[int(uniq[0]) : int(uniq[-1]) + 1])
    else:
        block = np.asarray(arr.get_orthogonal_selection((uniq,)))
    return block if uniq.size == idx.size and np.array_equal(uniq, idx) else block[inverse]


def chunk_rows(row_bytes: int, target_bytes: int, minimum: int = 1, maximum: int = 1 << 20) -> int:
    """Rows per zarr chunk so that one chunk holds about ``target_bytes`` (a power of two)."""
    rows = max(1, target_bytes // max(1, row_bytes))
    rows = 1 << int(math.floor(math.log2(rows)))
    return int(min(max(rows, minimum), maximum))


def remove_partial_files(root: Path) -> int:
    """Delete ``*.partial`` temporaries that a killed writer left; return how many."""
    n = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".partial"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
                except FileNotFoundError:
                    pass
    return n


class WriterLock:
    """An exclusive, non-blocking ``flock`` on a file in the store directory.

    The kernel drops the lock when its process dies (SIGKILL included), so a
    stale lock never blocks a resume. Where ``fcntl`` is unavailable the lock is
    a no-op.
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:  # the file may have been unlinked by a writer that finished meanwhile: then it is not the lock
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            return self.acquire()
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file (still holding the lock, so no other writer holds it), then drop the lock.

        A finished store keeps no lock file (zarr would warn about the stray file on open);
        a killed writer leaves it behind, and the next writer takes it over.
        """
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value`` (numpy scalars and arrays, tuples, paths -> plain types).

    Non-finite floats become None (JSON has no NaN).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (str, type(None))):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def first_difference(stored: Any, given: Any, prefix: str = "") -> str | None:
    """Dotted path of the first key where two JSON-like trees differ, else None."""
    stored, given = jsonable(stored), jsonable(given)
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in sorted(set(stored) | set(given)):
            path = f"{prefix}.{key}" if prefix else key
            if key not in stored or key not in given:
                return path
            sub = first_difference(stored[key], given[key], path)
            if sub is not None:
                return sub
        return None
    return None if stored == given else (prefix or "<root>")


def lookup(tree: Any, dotted: str) -> Any:
    """``tree['a']['b']`` for ``'a.b'``; a missing key gives the string ``'<missing>'``."""
    cur = tree
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return "<missing>"
        cur = cur[part]
    return cur


def os_reason(exc: OSError) -> str:
    """The one-line reason of an OS error; a full disk or quota says so first."""
    text = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"disk full: {text}"
    return text


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (the store's ``created`` / ``status_time``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
