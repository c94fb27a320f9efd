"""Configuration: a frozen dataclass tree, loaded from YAML or nested dicts.

Every field has a one-line docstring (the string literal under it). Unknown keys
are rejected with a suggestion. The resolved config is written into the store.
Other tools set ``chunk_size``, ``overlap``, ``gpu_mem_gb``, ``loop.enabled`` and
``keyframes.enabled``; keep those names.

Besides the run's tree under :class:`Config` (YAML, ``--set``, stored, checked on
resume), :data:`COMPONENT_CONFIGS` holds the DA3 network's fixed thresholds (official
defaults), passed by code and kept out of :class:`Config` so stored configs are
unchanged. The simulator's :class:`~da3stream.synthetic.predictor.SimParams` follows
the same conventions beside the simulator (the real network path imports this
module) and loads through :func:`build_dataclass`. This package imports only
:mod:`da3stream.errors`, so ``core`` may import it.
"""


from da3stream.config.components import PoseConditioning, SkyParams, MetricAlignParams, COMPONENT_CONFIGS
from da3stream.config.loading import to_dict, build_dataclass, load_config, field_docs
from da3stream.config.tree import SourceConfig, KeyframeConfig, ModelConfig, AlignConfig, LoopConfig, FusionConfig, StoreConfig, ScaleoutConfig, Config

__all__ = ["AlignConfig", "COMPONENT_CONFIGS", "Config", "FusionConfig", "KeyframeConfig", "LoopConfig", "MetricAlignParams", "ModelConfig", "PoseConditioning", "ScaleoutConfig", "SkyParams", "SourceConfig", "StoreConfig", "build_dataclass", "field_docs", "load_config", "to_dict"]
