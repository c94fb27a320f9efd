"""Streaming: the run, source frames to the store, one window at a time.

keyframes (``keyframes.py``) -> windows (``windows.py``, sized by ``planner.py``)
-> the stages a :class:`~da3stream.streaming.window.Window` passes through
(``stages/``: predict, cameras, align, loops, fuse, commit; loop closure
itself in ``loops/``), run by ``pipeline.py``, with ``state.py`` the run
state, ``resume.py`` its rebuild from the store, ``overlap.py`` the
predict-ahead thread and ``writer.py`` the async store writer.

``reconstruct(source, out, *, predictor=None, config=None, resume=False)`` is
the entry point other tools use.
"""

__all__ = ["RunSummary", "reconstruct"]


def __getattr__(name: str):
    """``reconstruct`` and ``RunSummary`` load the pipeline on first use, so importing a
    lower piece (the place index, a stage) does not import the whole run."""
    if name in __all__:
        from da3stream.streaming import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
