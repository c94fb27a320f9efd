"""da3stream: streaming SLAM-style reconstruction of long videos with Depth Anything 3."""

from da3stream.errors import Da3StreamError

__version__ = "0.1.0"

__all__ = ["Da3StreamError", "__version__"]
