"""Tiny random configs of every supported MoE family, shared by the compression tests."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from moecomp.compression.adapters import FAMILIES

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)

FAMILY_CONFIGS: dict[str, dict] = {
    "mixtral": dict(num_hidden_layers=3, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=6,
        num_experts_per_tok=2,
        mlp_only_layers=[1],
    ),
    "qwen3_moe": dict(
        num_hidden_layers=3,
        intermediate_size=48,
        moe_intermediate_size=32,
        num_experts=6,
        num_experts_per_tok=2,
        head_dim=16,
    ),
    "olmoe": dict(num_hidden_layers=3, intermediate_size=32, num_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        num_key_value_heads=4,
    ),
    "deepseek_v2": dict(
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        topk_method="group_limited_greedy",
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=None,  # V2-Lite: no query compression
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        num_key_value_heads=4,
    ),
    "glm4_moe": dict(
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        head_dim=16,
        use_qk_norm=True,
    ),
    "minimax_m2": dict(
        num_hidden_layers=3,
        intermediate_size=32,
        num_local_experts=6,
        num_experts_per_tok=2,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "partial_rotary_factor": 0.5},
    ),
    "ernie4_5_moe": dict(
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=32,
        moe_num_experts=6,
        moe_k=2,
        moe_num_shared_experts=1,
        moe_layer_start_index=1,
    ),
    "llama4_text": dict(
        num_hidden_layers=4,
        intermediate_size=32,
        intermediate_size_mlp=48,
        num_local_experts=6,
        num_experts_per_tok=1,
        interleave_moe_layer_step=2,  # MoE layers 1 and 3
        no_rope_layer_interval=2,  # NoPE (full attention) layers 1 and 3, chunked rope layers 0 and 2
        attention_chunk_size=8,
        floor_scale=4,  # NoPE attention temperature tuning within these short sequences
        head_dim=16,
    ),
    "qwen3_next": dict(
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=6,
        num_experts_per_tok=2,
        mlp_only_layers=[2],
        full_attention_interval=2,  # gated DeltaNet layers 0 and 2, full attention 1 and 3
        head_dim=16,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    ),
    "deepseek_v32": dict(
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        head_dim=8,
        num_key_value_heads=4,
        index_topk=8,  # below the sequence length: the indexer's choice of keys matters
        index_head_dim=16,
        index_n_heads=2,
    ),
    "gpt_oss": dict(
        num_hidden_layers=4,
        intermediate_size=32,
        num_local_experts=6,
        num_experts_per_tok=2,
        head_dim=16,
        sliding_window=8,  # layer_types alternate sliding (window 8) and full attention
        rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
    ),
    "qwen3_5_moe_text": dict(
        num_hidden_layers=4,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=6,
        num_experts_per_tok=2,
        full_attention_interval=2,
        head_dim=16,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    ),
}

# the families that refuse llm-compressor's backend for slimming (moecomp's own passes run there; the refusal is
# tested in test_slimming_families.py)
LLMCOMPRESSOR_REFUSED = sorted(t for t in FAMILY_CONFIGS if "slimming:llmcompressor" in dict(FAMILIES[t].refused))


def tiny_config(model_type: str, **overrides: object) -> PretrainedConfig:
    kwargs = {**COMMON, **FAMILY_CONFIGS[model_type], **overrides}
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = FAMILIES[config.model_type].attn_implementation
    return config


def tiny_model(
    model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: object
) -> PreTrainedModel:
    """A random model; router and correction bias get non-trivial values so routing is not degenerate."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=dtype)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            tensor.normal_(0.0, 0.02 if "norm" not in name else 0.1).add_(1.0 if "norm" in name else 0.0)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0.0, 0.05)
        for name, tensor in model.named_parameters():
            if name.endswith("e_score_correction_bias"):  # ERNIE keeps its correction bias as a parameter
                tensor.normal_(0.0, 0.05)
    return model.eval()
