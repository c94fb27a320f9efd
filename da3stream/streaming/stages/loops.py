"""Loop stage: the window's sequential edge into the pose graph, then loop search on its new frames.

Glue around :class:`~da3stream.streaming.loops.closer.LoopCloser`, which does
the candidate search, verification and pose-graph optimisation. The closer is
made with the first window's prediction (without descriptors it proposes
candidates from the trajectory alone; with ``loop.candidates_from_trajectory``
off too, loop closure is off for the run) or restored from the store on resume.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from da3stream.config import AlignConfig, LoopConfig
from da3stream.core.types import Prediction, Predictor
from da3stream.streaming.window import Window, is_fallback

log = logging.getLogger(__name__)

__all__ = ["LoopStage"]


class LoopStage:
    """``stage(window, world_from_chunk, fetch) -> window`` with ``loop_edges`` and ``loop_world_from_chunk``.

    Args:
        loop_cfg: the ``loop`` config (``enabled`` False makes the stage a no-op).
        align_cfg: the ``align`` config (verification registers like the sequential alignment).
        predictor: the network (verification predicts loop windows).
        seed: the run's seed.
    """

    def __init__(self, loop_cfg: LoopConfig, align_cfg: AlignConfig, predictor: Predictor, *, seed: int) -> None:
        self.loop_cfg = loop_cfg
        self.align_cfg = align_cfg
        self.predictor = predictor
        self.seed = seed
        self.closer = None
        self.disabled_reason: Optional[str] = None

    def _make(self) -> None:
        from da3stream.streaming.loops.closer import LoopCloser

        self.closer = LoopCloser(self.loop_cfg, self.align_cfg, self.predictor, seed=self.seed)

    def start(self, pred: Prediction) -> None:
        """Make the loop closer for a new run from its first prediction."""
        if not self.loop_cfg.enabled or self.closer is not None:
            return
        if pred.descriptors is None and not self.loop_cfg.candidates_from_trajectory:
            self.disabled_reason = "predictor gives no descriptors"
            log.info("loop closure disabled: the predictor gives no descriptors")
            return
        self._make()

    def restore(self, *, chunk_rows: dict, frame_rows: dict, loops: list, world_from_chunk: list,
                n_verified: int = 0) -> None:
        """Rebuild the loop closer from what the store holds (resume)."""
        self._make()
        self.closer.restore(chunk_rows=chunk_rows, frame_rows=frame_rows, loops=loops,
                            world_from_chunk=list(world_from_chunk), n_verified=n_verified)

    def __call__(self, window: Window, world_from_chunk: list, fetch: Callable, prev_chunk_id: int,
                 rows: np.ndarray) -> Window:
        """Loops of ``window``; ``world_from_chunk`` holds every window's, this one's last.

        ``prev_chunk_id`` is the window ``window`` was aligned to, ``rows`` the store rows of its new frames,
        ``fetch(rows)`` returns stored frame data for verification.
        """
        if self.closer is None:
            return window
        lc, q = self.closer, window.quality
        if window.chunk_id == 0 or window.prev_from_cur is None:
            lc.add_node(window.chunk_id, world_from_chunk[window.chunk_id])
        else:
            lc.add_sequential_edge(
                prev_chunk_id, window.chunk_id, window.prev_from_cur, inlier_ratio=float(q.inlier_ratio),
                residual=float(q.residual) if np.isfinite(q.residual) else 1.0, gated=is_fallback(q.status, q.reason),
            )
        if not window.n_new:
            return window
        from da3stream.streaming.loops.closer import WindowContext

        pred, new = window.prediction, window.new
        ctx = WindowContext(
            chunk_id=window.chunk_id, rows=rows, indices=window.new_indices(), timestamps=window.new_timestamps(),
            descriptors=None if pred.descriptors is None else pred.descriptors[new],
            world_from_cam=window.world_from_cam_new, images=window.rgb_new, prediction=pred.subset(new),
            fetch=fetch, world_from_chunk=list(world_from_chunk),
        )
        update = lc.on_window(ctx)
        return window.replace(loop_edges=tuple(update.edges), loop_world_from_chunk=update.world_from_chunk)
