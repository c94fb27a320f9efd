"""Random streams of the simulator: every draw is seeded from ``(seed, window content, stream id)``.

A window's key hashes its source indices and depth grid, so the same window
gets the same numbers across calls, instances and processes, whatever the
call order.
"""

from __future__ import annotations

import hashlib

import numpy as np

# random stream ids (part of every seed so streams never overlap)
S_GAUGE, S_POSE, S_FOCAL, S_DEPTH, S_DESC, S_METRIC, S_DESC_BASIS, S_SHARED = range(1, 9)
# streams of the honest modes (SimParams.honest); new ids, so the streams above are unchanged
S_RAYS, S_WINDOW_BIAS, S_FAILED, S_WRONG = range(9, 13)


def window_key(idx: np.ndarray, hw: tuple) -> tuple[int, int]:
    """Two 64-bit words hashing a window's (N,) int64 source indices and its (h, w) grid."""
    h = hashlib.blake2b(idx.astype("<i8").tobytes() + np.asarray(hw, dtype="<i8").tobytes(), digest_size=16).digest()
    return int.from_bytes(h[:8], "little"), int.from_bytes(h[8:], "little")


def window_rng(seed: int, key: tuple, stream: int, *extra: int) -> np.random.Generator:
    """The generator of one stream of one window (``extra``: e.g. the frame's position in the window)."""
    return np.random.default_rng([seed, key[0], key[1], stream, *extra])
