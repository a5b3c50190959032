"""Qwen3-Next (``qwen3_next``): hybrid gated-DeltaNet / full attention, softmax router, a gated shared expert.

Each decoder layer mixes tokens with ``linear_attn`` (gated DeltaNet) or ``self_attn`` (full attention), as
``layer_types`` says (every ``full_attention_interval``-th layer is full); block drop shortens ``layer_types``
and renumbers both kinds of mixer (their ``layer_idx`` indexes the hybrid cache). The router is Qwen's softmax
over all experts, top-k renormalised when ``norm_topk_prob``; ``shared_expert`` and its sigmoid
``shared_expert_gate`` are never dropped. Dense layers: ``mlp_only_layers`` and the ``decoder_sparse_step`` grid.
"""

from moecomp.compression.adapters.family import MoEFamily, qwen_dense_layers
from moecomp.compression.structure import ModuleLayout

LLMCOMPRESSOR_AWQ_REFUSED = (
    "llm-compressor's AWQ divides a norm's weight by its scales, but this family's norms scale by (1 + weight), so "
    "the result would not be the model; use the default backend (moecomp), which folds the scales into 1 + weight"
)

FAMILY = MoEFamily(
    model_type="qwen3_next",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=("shared_expert", "shared_expert_gate"),
    dense_layers=qwen_dense_layers,
    layout=ModuleLayout(
        token_mixers=("linear_attn",),
        norm_weight_offset=1.0,  # Qwen3NextRMSNorm: x_hat * (1 + weight)
        num_experts_key="num_experts",
        config_layer_lists=("layer_types",),
        config_dense_layers_key="mlp_only_layers",
        config_sparse_step_key="decoder_sparse_step",
    ),
    refused=(("awq:llmcompressor", LLMCOMPRESSOR_AWQ_REFUSED),),
)
