"""The window scheduler: overlapping windows cut from the keyframe buffer.

The buffer holds the previous window's ``n_carry`` overlap frames first, then
keyframes not yet in a window. A window is the first ``chunk_size`` frames of
it (at least one new frame); after it the buffer keeps its last ``overlap``
frames as the next carry, then everything read after it. ``chunk_size`` comes
from the memory planner (or the store on resume) and only shrinks, after an
out-of-memory error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from da3stream.errors import PredictionError
from da3stream.streaming.planner import shrink_chunk_size

log = logging.getLogger(__name__)

__all__ = ["WindowScheduler"]


@dataclass
class WindowScheduler:
    """Cuts windows from the buffer (see the module docstring)."""

    chunk_size: int
    """Frames per window; 0 until the memory planner has run."""
    overlap: int
    """Frames shared by consecutive windows."""

    def full(self, buffer: list, n_carry: int) -> bool:
        """True when ``buffer`` holds a whole window with at least one new frame."""
        return len(buffer) >= self.chunk_size and len(buffer) > n_carry

    def cut(self, buffer: list, n_carry: int) -> list:
        """The next window of ``buffer`` (carry first)."""
        return buffer[: max(self.chunk_size, n_carry + 1)]

    def after(self, window: list, buffer: list) -> tuple[list, int]:
        """The buffer and its carry count once ``window`` (cut from ``buffer``) is committed."""
        rest = buffer[len(window):]
        k = min(self.overlap, len(window))
        carry = window[len(window) - k:] if k else []
        return carry + rest, len(carry)

    def shrink_after_oom(self, n_window: int) -> int:
        """Lower ``chunk_size`` after a window of ``n_window`` frames ran out of memory; raise when it cannot."""
        smaller = shrink_chunk_size(self.chunk_size, self.overlap)
        if smaller >= self.chunk_size:
            raise PredictionError(
                f"out of memory with a window of {n_window} frames, the smallest this overlap "
                f"({self.overlap}) allows; lower overlap, model.process_res or use a smaller model"
            ) from None
        log.warning("out of memory with %d frames; retrying with chunk_size=%d", self.chunk_size, smaller)
        self.chunk_size = smaller
        return smaller
