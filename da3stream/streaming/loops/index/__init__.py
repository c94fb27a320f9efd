"""The place index: a growing descriptor index searched online (exact and IVF), numpy only.

Its modules import numpy and :mod:`da3stream.errors`, and each other, nothing else:
:mod:`.descriptor_index` (the index), :mod:`.blocked_rows` (append-only block storage),
:mod:`.selection` (exclusion, best-k, NMS), :mod:`.kmeans` (IVF centroids).
"""

from da3stream.streaming.loops.index.descriptor_index import STORAGE_DTYPES, Candidates, DescriptorIndex

__all__ = ["STORAGE_DTYPES", "Candidates", "DescriptorIndex"]
