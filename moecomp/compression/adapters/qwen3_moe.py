"""Qwen3-MoE: softmax router, fused experts, no shared expert; dense layers as in Qwen2-MoE."""

from moecomp.compression.adapters.family import MoEFamily, qwen_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="qwen3_moe",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=(),
    dense_layers=qwen_dense_layers,
    layout=ModuleLayout(
        num_experts_key="num_experts",
        config_layer_lists=("layer_types",),
        config_dense_layers_key="mlp_only_layers",
        config_sparse_step_key="decoder_sparse_step",
    ),
)
