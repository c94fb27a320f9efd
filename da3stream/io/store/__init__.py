"""The Zarr run store: layout, crash-safe appends, resume state.

``from da3stream.io.store import RunStore, ChunkRecord, LoopEdge`` is the public
entry; the modules below split it by concern (see :mod:`da3stream.io.store.run_store`).
"""

from da3stream.io.store.layout import FORMAT_NAME, FORMAT_VERSION
from da3stream.io.store.records import ChunkRecord, ChunkStatus, LoopEdge, PointBlock, SkipReason, SourceRows
from da3stream.io.store.run_store import RunStore

__all__ = [
    "ChunkRecord", "ChunkStatus", "FORMAT_NAME", "FORMAT_VERSION", "LoopEdge", "PointBlock", "RunStore",
    "SkipReason", "SourceRows",
]
