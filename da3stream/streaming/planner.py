"""Memory planner: chunk size from the GPU memory budget.

With a DA3 predictor the chunk size comes from the core's memory model
(``da3stream.core.memory_model.max_views_for_budget``) at the network
resolution of the source frames. A simulated or third-party predictor has no
memory model; then the planner uses :data:`DEFAULT_CHUNK_SIZE`, which is what a
12 GB budget allows DA3-Large at 504x378 with margin, and says so in the log.
"""

from __future__ import annotations

import logging

from da3stream.config import Config

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 60
"""Chunk size used when the predictor exposes no memory model."""

GIB = 1024**3


def plan_chunk_size(cfg: Config, predictor, image_hw: tuple[int, int]) -> int:
    """Frames per window: the user's ``chunk_size``, else the largest that fits ``gpu_mem_gb``."""
    if cfg.chunk_size is not None:
        return int(cfg.chunk_size)
    views = None
    preset = getattr(predictor, "preset", None)
    network_hw = getattr(predictor, "network_hw", None)
    if preset is not None and callable(network_hw):
        try:
            from da3stream.core.memory_model import max_views_for_budget

            h, w = network_hw(image_hw)
            views = max_views_for_budget(
                preset, h, w, getattr(predictor, "dtype", "float32"), getattr(predictor, "device", "cpu"),
                int(cfg.gpu_mem_gb * GIB),
            )
            log.info("memory planner: %s at %dx%d fits %d views in %.1f GiB", preset, h, w, views, cfg.gpu_mem_gb)
        except ImportError:
            views = None
    if views is None:
        views = DEFAULT_CHUNK_SIZE
        log.info("memory planner: predictor has no memory model; using chunk_size=%d", views)
    views = max(cfg.min_chunk_size, min(cfg.max_chunk_size, int(views)))
    return max(views, cfg.overlap + 1)


def shrink_chunk_size(chunk_size: int, overlap: int) -> int:
    """The next smaller chunk size to retry a window with after an out-of-memory error."""
    smaller = max(overlap + 1, (chunk_size * 2) // 3)
    return smaller if smaller < chunk_size else chunk_size


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (and MemoryError), whatever the torch version."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower() and "CUDA" in str(exc)
