"""The stages a :class:`~da3stream.streaming.window.Window` passes through, in data-flow order.

predict (:mod:`.predict`, cameras in :mod:`.cameras`) -> align (:mod:`.align`)
-> loops (:mod:`.loops`) -> map (:mod:`.fuse`) -> store (:mod:`.commit`).
Each stage takes a window (and what it needs of the run state) and returns a
new window; only the store stage writes.
"""
