"""Frame sources: PyAV video, image folders, ROS bags, calibration, pose priors, and open_source.

``from da3stream.io.sources import Frame, open_source, source_options`` is the
public entry; :mod:`~da3stream.io.sources.frames` states the reading policies.
"""

from da3stream.io.sources.dispatch import declared_frame_count, open_source, source_options
from da3stream.io.sources.frames import Frame, FrameSource

__all__ = ["Frame", "FrameSource", "declared_frame_count", "open_source", "source_options"]
