"""The table of recipe stages: one module per method, one line here to register it."""

from moecomp.compression.methods.block_drop import BlockDropConfig
from moecomp.compression.methods.expert_drop import ExpertDropConfig
from moecomp.compression.methods.layer_drop import LayerDropConfig
from moecomp.compression.methods.pruning import MagnitudeConfig, SparseGPTConfig, WandaConfig
from moecomp.compression.methods.quantization import AWQConfig, FP8Config, GPTQConfig, RTNConfig

STAGE_CONFIGS = (
    ExpertDropConfig,
    LayerDropConfig,
    BlockDropConfig,
    GPTQConfig,
    AWQConfig,
    RTNConfig,
    FP8Config,
    MagnitudeConfig,
    WandaConfig,
    SparseGPTConfig,
)
