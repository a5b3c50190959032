"""Qwen3.5-MoE text model (``qwen3_5_moe_text``): Qwen3-Next's hybrid layers, every layer sparse.

``layer_types`` alternates gated-DeltaNet (``linear_attn``) and full-attention (``self_attn``) layers; block
drop shortens it and renumbers both kinds of mixer. Softmax router over all experts, top-k always renormalised;
``shared_expert`` and its sigmoid ``shared_expert_gate`` are never dropped. The multimodal ``qwen3_5_moe``
checkpoint (``Qwen3_5MoeForConditionalGeneration``) is not this family.
"""

from moecomp.compression.adapters.family import MoEFamily, no_dense_layers
from moecomp.compression.adapters.qwen3_next import LLMCOMPRESSOR_AWQ_REFUSED
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="qwen3_5_moe_text",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=("shared_expert", "shared_expert_gate"),
    dense_layers=no_dense_layers,
    layout=ModuleLayout(
        token_mixers=("linear_attn",),
        norm_weight_offset=1.0,  # Qwen3NextRMSNorm: x_hat * (1 + weight)
        num_experts_key="num_experts",
        config_layer_lists=("layer_types",),
    ),
    refused=(("awq:llmcompressor", LLMCOMPRESSOR_AWQ_REFUSED),),
)
