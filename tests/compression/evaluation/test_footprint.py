from __future__ import annotations

from moecomp.compression.evaluation.footprint import active_params, disk_bytes, footprint


def test_active_params_count_top_k_of_the_routed_experts(mixtral32, tiny_mixtral_dir):
    model, config = mixtral32.model, mixtral32.model.config
    total = sum(p.numel() for p in model.parameters())
    # Per expert: w1, w3 [I, H] and w2 [H, I]; 8 experts per layer, 2 of them run per token.
    per_expert = 3 * config.hidden_size * config.intermediate_size
    idle = config.num_hidden_layers * per_expert * (config.num_local_experts - config.num_experts_per_tok)
    assert active_params(model) == total - idle

    fp = footprint(model, tiny_mixtral_dir, context=256)
    assert fp["params_total"] == total == 8_792_192  # the fixture's training.json
    assert fp["disk_bytes"] == disk_bytes(tiny_mixtral_dir) > 17_000_000
    embedding = config.vocab_size * config.hidden_size
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_hidden_layers * 256 * heads * head_dim
    assert fp["flops_per_token"] == 2 * (total - idle - embedding) + attention


def test_shared_experts_always_count(tiny_qwen2_moe_dir):
    from moecomp.compression.evaluation.loading import load_checkpoint

    model = load_checkpoint(tiny_qwen2_moe_dir).model
    c = model.config
    routed = c.num_hidden_layers * c.num_experts * 3 * c.hidden_size * c.moe_intermediate_size
    idle = routed * (1 - c.num_experts_per_tok / c.num_experts)
    assert active_params(model) == sum(p.numel() for p in model.parameters()) - int(idle)


def test_a_packed_quantized_weight_counts_as_the_dense_weight_it_encodes():
    import torch
    from torch import nn

    from moecomp.compression.evaluation.footprint import param_count

    packed = nn.Module()  # compressed-tensors' layout of a 4-bit [64, 128] weight, group size 64
    packed.weight_packed = nn.Parameter(torch.zeros(64, 16, dtype=torch.int32), requires_grad=False)
    packed.weight_scale = nn.Parameter(torch.ones(64, 2))
    packed.weight_shape = nn.Parameter(torch.tensor([64, 128]), requires_grad=False)
    model = nn.Sequential(packed, nn.Linear(128, 10, bias=False))
    assert param_count(model) == 64 * 128 + 1280
