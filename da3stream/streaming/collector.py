"""The garbage collector during a run: the objects alive when a run starts are frozen out of its view.

A run allocates many short-lived containers (zarr's coroutines and buffers,
window values); every so often CPython's full collection then walks every
tracked object, the ~250,000 that importing torch, zarr and scipy leaves
among them. Those outlive the run anyway, so :func:`frozen_startup_objects`
moves them to the permanent generation (``gc.freeze``) for the run and back
afterwards (``gc.unfreeze``), so that cycles among them are still collected
later. A full pass holds the GIL, so every thread of the run waits for it;
``python -m da3stream.bench engine`` reports the collector's seconds during
the run (``gc_seconds``). Results do not change: only when the collector
looks, not what it frees.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

__all__ = ["frozen_startup_objects"]


@contextmanager
def frozen_startup_objects() -> Iterator[None]:
    """Freeze the objects alive now out of the collector's full passes until the block ends."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
