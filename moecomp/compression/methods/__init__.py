"""The table of recipe stages: one module per method, one line here to register it (:mod:`.registry`)."""

from moecomp.compression.methods.block_drop import BlockDropConfig
from moecomp.compression.methods.expert_drop import ExpertDropConfig
from moecomp.compression.methods.layer_drop import LayerDropConfig
from moecomp.compression.methods.pruning import MagnitudeConfig, SparseGPTConfig, WandaConfig
from moecomp.compression.methods.quantization import AWQConfig, FP8Config, GPTQConfig, RTNConfig
from moecomp.compression.methods.registry import register_stage

register_stage(ExpertDropConfig)
register_stage(LayerDropConfig)
register_stage(BlockDropConfig)
register_stage(GPTQConfig)
register_stage(AWQConfig)
register_stage(RTNConfig)
register_stage(FP8Config)
register_stage(MagnitudeConfig)
register_stage(WandaConfig)
register_stage(SparseGPTConfig)
