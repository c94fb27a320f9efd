"""The keyframe filter: drop frames that barely differ from the last kept one.

The test is deliberately cheap (well under a millisecond per frame): each frame
becomes a ``thumb_size x thumb_size`` grayscale thumbnail (area averaging, so
sensor noise is smoothed away; the aspect ratio is not kept), and the motion
score is the mean absolute difference to the thumbnail of the last KEPT frame,
in 0..1 (255 grey levels = 1). Comparing against the last kept frame, not the
previous one, means slow drift accumulates until it counts.

A frame is kept when it is the first one, when the score exceeds
``min_change``, or when ``max_skip`` frames in a row have been dropped before
it. :attr:`KeyframeFilter.last_change` keeps the latest score (the pipeline
compares it with ``cut_threshold`` to detect scene cuts). The filter is deterministic; its state can be saved and restored so a
resumed run makes the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from da3stream.errors import ConfigError, ShapeError, check_shape


@dataclass(frozen=True)
class KeyframeState:
    """What the filter remembers between frames."""

    thumb: Optional[np.ndarray]
    """(thumb_size, thumb_size) float32 thumbnail of the last kept frame, 0..1; None before the first frame."""
    dropped: int
    """Frames dropped in a row since the last kept frame."""


class KeyframeFilter:
    """Motion test on grayscale thumbnails; field names as in :class:`da3stream.config.KeyframeConfig`."""

    def __init__(self, thumb_size: int = 32, min_change: float = 0.015, max_skip: int = 30) -> None:
        if not isinstance(thumb_size, int) or thumb_size < 1:
            raise ConfigError(f"keyframes.thumb_size must be an integer >= 1, got {thumb_size!r}")
        if not (isinstance(min_change, (int, float)) and 0.0 <= min_change <= 1.0):
            raise ConfigError(f"keyframes.min_change must be a number in [0, 1], got {min_change!r}")
        if not isinstance(max_skip, int) or max_skip < 0:
            raise ConfigError(f"keyframes.max_skip must be an integer >= 0, got {max_skip!r}")
        self.thumb_size = thumb_size
        self.min_change = float(min_change)
        self.max_skip = max_skip
        self._state = KeyframeState(None, 0)
        self.last_change: float = 0.0
        """Motion score of the most recent frame passed to :meth:`accept` (0.0 for the first one)."""

    @classmethod
    def from_config(cls, cfg) -> "KeyframeFilter":
        """Build from a ``KeyframeConfig`` (its ``enabled`` flag is the caller's business)."""
        return cls(thumb_size=cfg.thumb_size, min_change=cfg.min_change, max_skip=cfg.max_skip)

    def thumbnail(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB -> ``(thumb_size, thumb_size) float32`` grayscale in 0..1."""
        import cv2

        check_shape("keyframe image", image, (None, None, 3), "u")
        if image.dtype != np.uint8:
            raise ShapeError(f"keyframe image: expected dtype uint8, got {image.dtype}")
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        small = cv2.resize(gray, (self.thumb_size, self.thumb_size), interpolation=cv2.INTER_AREA)
        return small.astype(np.float32) / np.float32(255.0)

    def score(self, image: np.ndarray) -> Optional[float]:
        """Motion score of ``image`` against the last kept frame (None before the first); no state change."""
        if self._state.thumb is None:
            return None
        return float(np.mean(np.abs(self.thumbnail(image) - self._state.thumb)))

    def accept(self, frame: Union[np.ndarray, "object"]) -> bool:
        """Decide on one frame (a :class:`~da3stream.io.sources.frames.Frame` or an ``(H, W, 3) uint8`` image)."""
        image = getattr(frame, "image", frame)
        thumb = self.thumbnail(image)
        previous = self._state
        if previous.thumb is None:
            self.last_change = 0.0
            keep = True
        else:
            self.last_change = float(np.mean(np.abs(thumb - previous.thumb)))
            keep = self.last_change > self.min_change or previous.dropped >= self.max_skip
        self._state = KeyframeState(thumb, 0) if keep else KeyframeState(previous.thumb, previous.dropped + 1)
        return keep

    def prime(self, image: np.ndarray) -> None:
        """Treat ``image`` as the last kept frame (e.g. after a resume) without deciding on it."""
        self._state = KeyframeState(self.thumbnail(image), 0)

    @property
    def state(self) -> KeyframeState:
        """The current state (an immutable value)."""
        return self._state

    def restore(self, state: KeyframeState) -> None:
        """Continue from a state saved with :attr:`state`."""
        if state.thumb is not None:
            check_shape("KeyframeState.thumb", state.thumb, (self.thumb_size, self.thumb_size), "f")
        if state.dropped < 0:
            raise ConfigError(f"KeyframeState.dropped must be >= 0, got {state.dropped}")
        self._state = KeyframeState(None if state.thumb is None else np.array(state.thumb, np.float32), int(state.dropped))

    def reset(self) -> None:
        """Forget everything; the next frame is kept."""
        self._state = KeyframeState(None, 0)
        self.last_change = 0.0


CUT_HIST_BINS = (8, 4, 4)
"""Hue x saturation x value bins of the scene-cut colour histogram (value keeps grey video testable)."""


def colour_change(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance (0 same .. 1 disjoint) between the HSV histograms of two ``(H, W, 3) uint8`` RGB images.

    Motion inside one scene moves pixels but keeps their colours; a hard cut replaces them.
    """
    import cv2

    hists = [cv2.calcHist([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2HSV)], [0, 1, 2], None,
                          list(CUT_HIST_BINS), [0, 180, 0, 256, 0, 256]) for im in (a, b)]
    return float(cv2.compareHist(hists[0], hists[1], cv2.HISTCMP_BHATTACHARYYA))


class KeyframeStage:
    """Keyframe decision and scene-cut test per source frame (``keyframes`` config; all kept when disabled).

    A kept frame is a scene cut when its motion score exceeds ``cut_threshold``
    AND its colour histogram differs from the last kept frame's by more than
    ``cut_colour_threshold`` (fast motion alone moves pixels, not colours).
    """

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.filter = KeyframeFilter.from_config(cfg) if cfg.enabled else None
        self._last_kept: Optional[np.ndarray] = None

    def prime(self, image: np.ndarray) -> None:
        """Treat ``image`` as the last kept frame (a carry frame re-read on resume)."""
        if self.filter is not None:
            self.filter.prime(image)
            self._last_kept = image

    def offer(self, image: np.ndarray, any_kept: bool) -> tuple[bool, bool]:
        """``(keep, cut)`` for the next source image; ``any_kept``: a keyframe was kept before in this run."""
        if self.filter is None:
            return True, False
        keep = self.filter.accept(image)
        cut = (keep and self.filter.last_change > self.cfg.cut_threshold and any_kept
               and self._last_kept is not None
               and colour_change(self._last_kept, image) > self.cfg.cut_colour_threshold)
        if keep:
            self._last_kept = image
        return keep, cut
