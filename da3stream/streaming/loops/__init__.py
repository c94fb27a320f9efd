"""Loop closure, one module per step of a window's loop search.

``index/`` (the place index, numpy only) -> ``candidates`` (query it, merge hits)
-> ``verify`` (loop window, two registrations) -> ``consistency`` (agreement with
the trajectory) -> ``graph`` (pose graph of windows, outlier loops dropped);
``closer`` (:class:`~da3stream.streaming.loops.closer.LoopCloser`) holds the run's
state and ties them; ``records`` are the types it exchanges with the pipeline.
"""
