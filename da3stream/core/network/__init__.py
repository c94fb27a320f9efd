"""The Depth Anything 3 network, re-implemented for lean streaming inference.

```python
from da3stream.core.network import build_network, PRESETS, NetworkOutput
net = build_network("small")           # random init, eval mode, official state_dict keys
out = net(images)                      # images (B, S, 3, H, W), ImageNet-normalised
out.depth, out.cam_from_world, out.descriptors
```

Numerically equal to the official ``DepthAnything3Net`` (tests/test_network_parity.py).
"""

from __future__ import annotations

from da3stream.core.network.model import (
    DEFAULT_HEAD_CHUNK,
    DepthAnything3Network,
    MetricAlignParams,
    NestedDepthAnything3Network,
    NetworkOutput,
    SkyParams,
    build_network,
)
from da3stream.core.network.presets import (
    PATCH_SIZE,
    PRESETS,
    BackboneSpec,
    HeadSpec,
    PresetSpec,
    get_preset,
    preset_from_model_name,
)

__all__ = [
    "DEFAULT_HEAD_CHUNK",
    "PATCH_SIZE",
    "PRESETS",
    "BackboneSpec",
    "DepthAnything3Network",
    "HeadSpec",
    "MetricAlignParams",
    "NestedDepthAnything3Network",
    "NetworkOutput",
    "PresetSpec",
    "SkyParams",
    "build_network",
    "get_preset",
    "preset_from_model_name",
]
