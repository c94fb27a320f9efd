"""Memory planner: chunk size from the GPU memory budget.

With a DA3 predictor the chunk size comes from the core's memory model
(``da3stream.core.memory_model.max_views_for_budget``) at the network
resolution of the source frames. A simulated or third-party predictor has no
memory model; then the planner uses :data:`DEFAULT_CHUNK_SIZE`, which is what a
12 GB budget allows DA3-Large at 504x378 with margin, and says so in the log.
When the budget cannot hold ``min_chunk_size`` views at the predictor's
resolution, :func:`plan_window` also lowers the resolution (down to
``min_process_res``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from da3stream.config import Config
from da3stream.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 60
"""Chunk size used when the predictor exposes no memory model."""

GIB = 1024**3
PATCH = 14
"""Network patch size: resolutions step by this many pixels."""


def plan_chunk_size(cfg: Config, predictor, image_hw: tuple[int, int]) -> int:
    """Frames per window: the user's ``chunk_size``, else the largest that fits ``gpu_mem_gb``."""
    if cfg.chunk_size is not None:
        return int(cfg.chunk_size)
    views = None
    preset = getattr(predictor, "preset", None)
    network_hw = getattr(predictor, "network_hw", None)
    if preset is not None and callable(network_hw):
        try:
            from da3stream.core.memory_model import max_views_for_budget, planning_constants_for

            h, w = network_hw(image_hw)
            device = getattr(predictor, "device", "cpu")
            views = max_views_for_budget(
                preset, h, w, getattr(predictor, "dtype", "float32"), device,
                int(cfg.gpu_mem_gb * GIB), constants=planning_constants_for(device),
            )
            log.info("memory planner: %s at %dx%d fits %d views in %.1f GiB", preset, h, w, views, cfg.gpu_mem_gb)
        except ImportError:
            views = None
    if views is None:
        views = DEFAULT_CHUNK_SIZE
        log.info("memory planner: predictor has no memory model; using chunk_size=%d", views)
    views = max(cfg.min_chunk_size, min(cfg.max_chunk_size, int(views)))
    return max(views, cfg.overlap + 1)


@dataclass(frozen=True)
class WindowPlan:
    """What the memory planner decided for a run."""

    chunk_size: int
    """Frames per window."""
    process_res: Optional[int]
    """Network resolution (longest side) to run at, or None to keep the predictor's."""
    views_at_res: Optional[int]
    """Views the memory model fits in the budget at that resolution (None without a memory model)."""


def plan_window(cfg: Config, predictor, image_hw: tuple[int, int]) -> WindowPlan:
    """Chunk size and, when needed, a lower network resolution from the GPU memory budget.

    When ``gpu_mem_gb`` cannot hold ``min_chunk_size`` views at the predictor's
    ``process_res``, the resolution is lowered in steps of one patch (14 px) until it
    can, but not below ``min_process_res`` (then the windows stay at
    ``min_chunk_size`` and an out-of-memory error shrinks them further at run time).
    A user-set ``chunk_size`` is kept as it is, and so is the resolution.
    """
    if cfg.chunk_size is not None:
        return WindowPlan(int(cfg.chunk_size), None, None)
    res = getattr(predictor, "process_res", None)
    views = _views_for(cfg, predictor, image_hw, res)
    if views is None or res is None or views >= cfg.min_chunk_size:
        return WindowPlan(plan_chunk_size(cfg, predictor, image_hw), None, views)
    new_res = int(res)
    while views < cfg.min_chunk_size and new_res - PATCH >= cfg.min_process_res:
        new_res -= PATCH
        views = _views_for(cfg, predictor, image_hw, new_res)
    log.warning("memory planner: %.1f GiB holds fewer than %d views at process_res %d; using process_res %d "
                "(%d views fit)", cfg.gpu_mem_gb, cfg.min_chunk_size, res, new_res, views)
    chunk = max(cfg.min_chunk_size, min(cfg.max_chunk_size, int(views)))
    return WindowPlan(max(chunk, cfg.overlap + 1), new_res if new_res != res else None, views)


def _views_for(cfg: Config, predictor, image_hw: tuple[int, int], process_res: Optional[int]) -> Optional[int]:
    """Views of ``predictor``'s preset that fit ``gpu_mem_gb`` at ``process_res`` (None without a memory model)."""
    preset = getattr(predictor, "preset", None)
    if preset is None or process_res is None or not callable(getattr(predictor, "network_hw", None)):
        return None
    try:
        from da3stream.core.memory_model import max_views_for_budget, planning_constants_for
        from da3stream.core.preprocess import network_hw
    except ImportError:
        return None
    method = getattr(predictor, "process_res_method", "upper_bound_resize")
    h, w = network_hw(image_hw, int(process_res), method)
    device = getattr(predictor, "device", "cpu")
    return max_views_for_budget(preset, h, w, getattr(predictor, "dtype", "float32"), device,
                                int(cfg.gpu_mem_gb * GIB), constants=planning_constants_for(device))


def set_process_res(predictor, process_res: int) -> None:
    """Run ``predictor`` (or the predictor it wraps) at network resolution ``process_res``."""
    target = getattr(predictor, "inner", predictor)
    if not hasattr(target, "process_res"):
        raise ConfigError(f"the predictor {type(target).__name__} has no process_res to lower")
    target.process_res = int(process_res)


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
