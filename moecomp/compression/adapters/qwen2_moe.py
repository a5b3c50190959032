"""Qwen2-MoE: softmax router, fused experts, plus a shared expert gated by ``shared_expert_gate`` (never dropped).

Dense layers: ``mlp_only_layers`` and layers off the ``decoder_sparse_step`` grid.
"""

from moecomp.compression.adapters.family import MoEFamily, qwen_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="qwen2_moe",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=("shared_expert", "shared_expert_gate"),
    dense_layers=qwen_dense_layers,
    layout=ModuleLayout(
        num_experts_key="num_experts",
        config_layer_lists=("layer_types",),
        config_dense_layers_key="mlp_only_layers",
        config_sparse_step_key="decoder_sparse_step",
    ),
)
