"""The table of recipe stages: one module per method, one line here to register it."""

from moecomp.compression.methods.block_drop import BlockDropConfig
from moecomp.compression.methods.expert_drop import ExpertDropConfig
from moecomp.compression.methods.layer_drop import LayerDropConfig

STAGE_CONFIGS = (
    ExpertDropConfig,
    LayerDropConfig,
    BlockDropConfig,
)
