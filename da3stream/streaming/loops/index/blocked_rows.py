"""Append-only arrays in fixed-size blocks: memory grows by exactly the rows appended.

General storage (numpy only); the place index keeps its descriptors and per-entry columns in it.
"""

from __future__ import annotations

import numpy as np

from da3stream.errors import ConfigError, check_shape

__all__ = ["BlockedRows"]


class BlockedRows:
    """An append-only array stored in fixed-size blocks (rows never move once written).

    A growing numpy array that doubles its capacity copies everything at each
    doubling and leaves freed buffers of ever larger sizes behind; over an
    hour-long run that churn fragments the heap and makes the resident memory
    creep. Blocks of ``block_rows`` rows are allocated once each (``np.empty``:
    a block's pages become resident only as rows are written) and never copied,
    so memory grows by exactly the rows appended.

    Args:
        dtype: element type.
        row_shape: shape of one row (``()`` for a scalar column).
        block_rows: rows per block.
    """

    def __init__(self, dtype, row_shape: tuple = (), block_rows: int = 8192) -> None:
        if block_rows < 1:
            raise ConfigError(f"BlockedRows: block_rows must be >= 1, got {block_rows}")
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.block_rows = int(block_rows)
        self._blocks: list[np.ndarray] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple:
        return (self._n,) + self.row_shape

    @property
    def nbytes_allocated(self) -> int:
        """Bytes of all blocks (resident once written)."""
        return sum(b.nbytes for b in self._blocks)

    def append(self, values: np.ndarray) -> None:
        """Append ``values`` (n,) + row_shape, cast to :attr:`dtype`."""
        v = np.asarray(values)
        check_shape("BlockedRows.append(values)", v, ("n",) + self.row_shape)
        pos = 0
        while pos < v.shape[0]:
            blk, off = divmod(self._n, self.block_rows)
            if blk == len(self._blocks):
                self._blocks.append(np.empty((self.block_rows,) + self.row_shape, self.dtype))
            take = min(self.block_rows - off, v.shape[0] - pos)
            self._blocks[blk][off:off + take] = v[pos:pos + take]
            self._n += take
            pos += take

    def blocks(self, start: int = 0, stop: int | None = None):
        """Yield ``(first_row, view)`` over rows ``[start, stop)`` block by block (views, not copies)."""
        stop = self._n if stop is None else min(int(stop), self._n)
        a = max(0, int(start))
        while a < stop:
            blk, off = divmod(a, self.block_rows)
            b = min(stop, (blk + 1) * self.block_rows)
            yield a, self._blocks[blk][off:off + (b - a)]
            a = b

    def __getitem__(self, key):
        """Rows by int, slice or integer array (a copy; an int gives one row)."""
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._n if key < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(f"BlockedRows: row {int(key)} out of range for {self._n} rows")
            blk, off = divmod(i, self.block_rows)
            return self._blocks[blk][off]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._n)
            if step == 1:
                return self._joined(start, stop, view_ok=False)
            key = np.arange(start, stop, step, dtype=np.int64)
        idx = np.asarray(key, dtype=np.int64)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"BlockedRows: index out of range for {self._n} rows")
        idx = np.where(idx < 0, idx + self._n, idx)
        out = np.empty(idx.shape + self.row_shape, self.dtype)
        blk, off = np.divmod(idx, self.block_rows)
        for b in np.flatnonzero(np.bincount(blk.ravel(), minlength=len(self._blocks))):
            m = blk == b
            out[m] = self._blocks[int(b)][off[m]]
        return out

    def span(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``: a read-only view when they lie in one block, else a copy."""
        return self._joined(start, stop, view_ok=True)

    def _joined(self, start: int, stop: int, *, view_ok: bool) -> np.ndarray:
        parts = [v for _, v in self.blocks(start, stop)]
        if not parts:
            return np.empty((0,) + self.row_shape, self.dtype)
        if len(parts) > 1:
            return np.concatenate(parts)
        if not view_ok:
            return parts[0].copy()
        v = parts[0].view()
        v.setflags(write=False)
        return v

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)
