"""Live web viewer of a run store (viser), and the colourised previews shared with the HTML report.

```python
from da3stream.viewer import LiveViewer, ViewerOptions, serve
serve("RUN.zarr", ViewerOptions(port=8080))           # blocks; follows a running store
with LiveViewer("RUN.zarr", ViewerOptions(port=0)) as v:
    print(v.url)
```

Importing this package does not import viser; :class:`LiveViewer` does, when started.
"""

from da3stream.viewer.decimate import ChunkCloud, PointBudget
from da3stream.viewer.follow import FollowOptions, LatestFrame, StoreFollower, StoreUpdate
from da3stream.io.export.colormap import colorize_conf, colorize_depth
from da3stream.viewer.server import LiveViewer, ViewerOptions, serve

__all__ = [
    "ChunkCloud", "FollowOptions", "LatestFrame", "LiveViewer", "PointBudget", "StoreFollower", "StoreUpdate",
    "ViewerOptions", "colorize_conf", "colorize_depth", "serve",
]
