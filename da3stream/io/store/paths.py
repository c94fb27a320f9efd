"""Checks of a store path before a run starts (the CLI calls them before any model is loaded).

Each problem is one :class:`~da3stream.errors.StoreError` line (exit code 5) naming the path:
an existing regular file, a directory that is not writable, an existing directory that is
not a store, a store a new run would overwrite, and ``--resume`` where no store is.
"""

from __future__ import annotations

import os
from pathlib import Path

from da3stream.errors import StoreError
from da3stream.io.store.zarr_util import LOCK_NAME

__all__ = ["check_out_path"]


def _writable(p: Path) -> bool:
    return os.access(p, os.W_OK | os.X_OK)


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _ours(p: Path) -> bool:
    """A store, or what a killed writer of one left (the lock file only): resumable or restartable by a run."""
    return (p / "zarr.json").is_file() or all(c.name == LOCK_NAME for c in p.iterdir())


def check_out_path(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise :class:`StoreError` when a run could not write its store at ``out``.

    Args:
        out: the store directory a run will create (or continue, with ``resume``).
        resume: the run continues a store: ``out`` must hold one (or what a killed creation left).
        overwrite: an existing store at ``out`` may be replaced (a directory that is no store never is).
    """
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise StoreError(f"{p}: --out is an existing file, not a store directory; choose another --out")
    if not p.exists():
        if resume:
            raise StoreError(f"{p}: no store to resume; drop --resume to start a new run")
        base = _nearest_existing(p)
        if not base.is_dir():
            raise StoreError(f"{p}: cannot create the store directory ({base} is a file)")
        if not _writable(base):
            raise StoreError(f"{p}: cannot create the store directory ({base} is not writable)")
        return
    empty = not any(p.iterdir())
    if not _ours(p):
        raise StoreError(f"{p}: exists and is not a da3stream store (no zarr.json); choose another --out")
    if resume and empty:
        raise StoreError(f"{p}: no store to resume (empty directory); drop --resume to start a new run")
    if not (resume or overwrite or empty):
        raise StoreError(f"{p}: store already exists; pass --resume to continue it or choose another --out")
    if not _writable(p):
        raise StoreError(f"{p}: the store directory is not writable")
