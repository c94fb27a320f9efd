"""Architecture presets of the Depth Anything 3 networks.

One :class:`PresetSpec` per released architecture. The numbers mirror the
official ``configs/da3*.yaml`` files (see ``docs`` and the architecture notes):
a ViT backbone (DINOv2 layout), a dense head (``DualDPT`` for the any-view
models, ``DPT`` with a sky branch for the mono/metric models) and, for the
any-view models, a camera encoder/decoder pair.

Official ``config.json`` ``model_name`` values map to our keys with
:func:`preset_from_model_name`; the ``-1.1`` releases share the architecture
of their ``-1.0`` counterparts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from da3stream.errors import CheckpointError

PATCH_SIZE = 14
"""Side of one ViT patch in network-input pixels."""

POS_EMBED_GRID = 37
"""Side of the learnt position-embedding grid (518 px / 14)."""


@dataclass(frozen=True)
class BackboneSpec:
    """A DINOv2-style ViT with DA3's alternating local/global attention."""

    embed_dim: int
    """Token width C."""
    depth: int
    """Number of transformer blocks."""
    num_heads: int
    """Attention heads per block (head_dim = embed_dim / num_heads = 64)."""
    ffn: str
    """"mlp" (fc1/GELU/fc2, 4x) or "swiglu" (w12/SiLU-gate/w3, giant)."""
    out_layers: tuple[int, ...]
    """Blocks whose outputs feed the heads (4 of them)."""
    alt_start: int = -1
    """First block of the multi-view part (camera token, odd blocks global); -1 = single-view ViT."""
    qknorm_start: int = -1
    """First block with LayerNorm on q and k; -1 = none."""
    rope_start: int = -1
    """First block with 2-D rotary position embedding; -1 = none."""
    cat_token: bool = True
    """Out-layer features are [last local output, block output] (width 2C) when True."""
    rope_frequency: float = 100.0
    """Base frequency of the 2-D RoPE."""
    interpolate_offset: float = 0.1
    """Offset added to the patch grid size when resizing the position embedding."""

    @property
    def mlp_ratio(self) -> float:
        return 4.0

    @property
    def out_dim(self) -> int:
        """Width of one out-layer feature token."""
        return 2 * self.embed_dim if self.cat_token else self.embed_dim

    @property
    def multi_view(self) -> bool:
        return self.alt_start != -1


@dataclass(frozen=True)
class HeadSpec:
    """A DPT-style dense head."""

    kind: str
    """"dualdpt" (depth + ray branches) or "dpt" (depth + sky branches)."""
    dim_in: int
    """Width of the out-layer feature tokens."""
    features: int
    """Fusion width."""
    out_channels: tuple[int, int, int, int]
    """Per-level projection widths."""


@dataclass(frozen=True)
class PresetSpec:
    """One released DA3 architecture."""

    key: str
    """Our preset key ("small", ..., "nested-giant-large")."""
    model_name: str
    """The official ``config.json`` ``model_name`` (e.g. "da3-small")."""
    backbone: Optional[BackboneSpec] = None
    head: Optional[HeadSpec] = None
    camera_dim: Optional[int] = None
    """Camera-encoder token width (= backbone C); the decoder reads 2C. None: no camera heads."""
    gs_head: bool = False
    """The checkpoint carries the (unused here) 3-D Gaussian head ``gs_head.*``."""
    nested: tuple[str, str] = ()
    """For the nested model: (any-view preset key, metric preset key)."""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    """Other official names with the same architecture."""

    @property
    def is_nested(self) -> bool:
        return bool(self.nested)


_SMALL_BB = BackboneSpec(384, 12, 6, "mlp", (5, 7, 9, 11), 4, 4, 4, True)
_BASE_BB = BackboneSpec(768, 12, 12, "mlp", (5, 7, 9, 11), 4, 4, 4, True)
_LARGE_BB = BackboneSpec(1024, 24, 16, "mlp", (11, 15, 19, 23), 8, 8, 8, True)
_GIANT_BB = BackboneSpec(1536, 40, 24, "swiglu", (19, 27, 33, 39), 13, 13, 13, True)
_MONO_BB = BackboneSpec(1024, 24, 16, "mlp", (4, 11, 17, 23), -1, -1, -1, False)
_BIG_CHANNELS = (256, 512, 1024, 1024)

PRESETS: dict[str, PresetSpec] = {
    "small": PresetSpec(
        "small", "da3-small", _SMALL_BB, HeadSpec("dualdpt", 768, 64, (48, 96, 192, 384)), 384
    ),
    "base": PresetSpec(
        "base", "da3-base", _BASE_BB, HeadSpec("dualdpt", 1536, 128, (96, 192, 384, 768)), 768
    ),
    "large": PresetSpec(
        "large", "da3-large", _LARGE_BB, HeadSpec("dualdpt", 2048, 256, _BIG_CHANNELS), 1024,
        aliases=("da3-large-1.1",),
    ),
    "giant": PresetSpec(
        "giant", "da3-giant", _GIANT_BB, HeadSpec("dualdpt", 3072, 256, _BIG_CHANNELS), 1536,
        gs_head=True, aliases=("da3-giant-1.1",),
    ),
    "mono-large": PresetSpec(
        "mono-large", "da3mono-large", _MONO_BB, HeadSpec("dpt", 1024, 256, _BIG_CHANNELS)
    ),
    "metric-large": PresetSpec(
        "metric-large", "da3metric-large", _MONO_BB, HeadSpec("dpt", 1024, 256, _BIG_CHANNELS)
    ),
    "nested-giant-large": PresetSpec(
        "nested-giant-large", "da3nested-giant-large", nested=("giant", "metric-large"),
        aliases=("da3nested-giant-large-1.1",),
    ),
}
"""Our preset key -> architecture."""

OFFICIAL_NAMES: dict[str, str] = {key: spec.model_name for key, spec in PRESETS.items()}
"""Our preset key -> the official ``model_name`` (derived from :data:`PRESETS`: the one table of official names)."""

_HUB_PREFIXES = ("depth-anything/",)


def official_model_name(preset: str) -> str:
    """The official ``model_name`` of our preset key; any other name (already official) is returned as given."""
    return OFFICIAL_NAMES.get(preset, preset)


def _name_table() -> dict[str, str]:
    table = {}
    for key, spec in PRESETS.items():
        for name in (key, spec.model_name, *spec.aliases):
            table[name.lower()] = key
    return table


def preset_from_model_name(name: str) -> str:
    """Map an official ``model_name`` (or hub repo id, or our key) to our preset key.

    Accepts e.g. "da3-large", "da3-large-1.1", "DA3NESTED-GIANT-LARGE-1.1",
    "depth-anything/DA3-SMALL" and "small". Raises :class:`CheckpointError` if unknown.
    """
    if not isinstance(name, str) or not name.strip():
        raise CheckpointError(f"model_name: expected a non-empty string, got {name!r}")
    norm = name.strip().lower()
    for prefix in _HUB_PREFIXES:
        if norm.startswith(prefix):
            norm = norm[len(prefix):]
    table = _name_table()
    if norm in table:
        return table[norm]
    for suffix in ("-1.1", "-1.0"):
        if norm.endswith(suffix) and norm[: -len(suffix)] in table:
            return table[norm[: -len(suffix)]]
    known = ", ".join(sorted(spec.model_name for spec in PRESETS.values()))
    raise CheckpointError(f"model_name: unknown DA3 architecture {name!r} (known: {known})")


def get_preset(preset: str) -> PresetSpec:
    """The :class:`PresetSpec` of ``preset`` (our key or any official name)."""
    if isinstance(preset, PresetSpec):
        return preset
    return PRESETS[preset_from_model_name(preset)]
