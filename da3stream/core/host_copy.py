"""Device-to-host copies of a network's outputs: pinned buffers, asynchronous copies, one wait.

A forward's outputs (depth, confidence, rays, ...) come back to the host as
float32 numpy arrays. Copying them one by one with ``.to("cpu")`` waits for
each copy in turn and goes through pageable memory (a staging copy inside the
driver). :func:`batch_to_host` instead casts each output on the device, starts
all copies at once into page-locked (pinned) host buffers with
``non_blocking=True`` and waits once, on an event recorded after the last copy.
The numpy arrays it returns are views of those pinned buffers; torch's caching
host allocator recycles a buffer when its array is garbage-collected, so a
steady stream of equal-sized windows reuses the same few buffers.

On the CPU nothing changes: each tensor goes through exactly the
``t[index].detach().to("cpu", dtype=torch.float32).numpy()`` of a plain copy.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["batch_to_host"]


def batch_to_host(tensors: Sequence[Optional[Any]], index: Optional[int] = 0) -> Callable[[Optional[Any]], Optional[np.ndarray]]:
    """Start copies of ``tensors`` (``tensor[index]`` of each, as float32) to the host; return a lookup.

    Args:
        tensors: torch tensors (any device, any float dtype) or None.
        index: the batch element to copy (None copies the whole tensor).

    Returns:
        ``to_numpy(t)``: the float32 numpy copy of ``t[index]`` for a tensor in
        ``tensors`` (waiting once, on the first call, for every copy), None for
        None; any other tensor is copied synchronously.
    """
    import torch

    def plain(t):
        if t is None:
            return None
        x = t if index is None else t[index]
        return x.detach().to("cpu", dtype=torch.float32).numpy()

    cuda = [t for t in tensors if t is not None and t.device.type == "cuda"]
    if not cuda:
        return plain
    pinned: dict[int, torch.Tensor] = {}
    for t in cuda:
        x = (t if index is None else t[index]).detach().to(dtype=torch.float32)
        buf = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        buf.copy_(x, non_blocking=True)
        pinned[id(t)] = buf
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(cuda[0].device))
    state = {"waited": False}

    def to_numpy(t):
        if t is None:
            return None
        buf = pinned.get(id(t))
        if buf is None:
            return plain(t)
        if not state["waited"]:
            done.synchronize()
            state["waited"] = True
        return buf.numpy()

    return to_numpy
