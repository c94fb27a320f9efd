"""Streaming: sources, keyframes, scheduling, memory planning and the pipeline.

``reconstruct(source, out, *, predictor=None, config=None, resume=False)`` is
the entry point other tools use.
"""

from da3stream.streaming.pipeline import RunSummary, reconstruct

__all__ = ["RunSummary", "reconstruct"]
