"""Batched AWQ's parts against llm-compressor's AWQModifier and against direct computations.

Fixture-level quality (held-out perplexity against llm-compressor's AWQ, routing preserved) is in
tests/compression/test_quantization.py; every family through the streamed pass in test_slimming_families.py.
"""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor.modifiers.transform.awq import AWQModifier
from torch import nn

from moecomp.compression.adapters import get_adapter
from moecomp.compression.methods.quantization import AWQConfig
from moecomp.compression.slimming import awq, llmcompressor_modifiers
from moecomp.compression.slimming.groups import WeightGroup
from moecomp.compression.slimming.statistics import InputStats
from moecomp.compression.structure import decoder_layers, is_moe_layer
from tests.compression.tiny_moe import FAMILY_CONFIGS, tiny_model


def test_grid_is_llm_compressors() -> None:
    for n_grid in (3, 5, 20):
        assert awq.grid(n_grid) == AWQModifier(n_grid=n_grid, duo_scaling=True)._get_grid_search_params()


@pytest.mark.parametrize("group_size", [16, None])
def test_weight_means_equal_llm_compressors_layer_means(group_size: int | None) -> None:
    """Pooled over a fused tensor's experts (a norm feeding every expert) and per expert (up -> down)."""
    weight = torch.randn(3, 24, 64, generator=torch.Generator().manual_seed(0))
    layer = nn.Module()
    layer.experts = nn.Module()
    layer.experts.down_proj = nn.Parameter(weight)
    balance = awq.Balance(WeightGroup("experts", "down_proj", "routed_experts"), True)
    sizes = {"experts.down_proj": group_size}
    args = QuantizationArgs(num_bits=4, strategy="group" if group_size else "channel", group_size=group_size)
    linears = []
    for matrix in weight:
        linear = nn.Linear(64, 24, bias=False)
        linear.weight.data.copy_(matrix)
        linear.quantization_scheme = QuantizationScheme(targets=["Linear"], weights=args)
        linears.append(linear)
    pooled = awq._weight_means(layer, [balance], sizes, batch=1)
    torch.testing.assert_close(pooled[0], AWQModifier._compute_layer_means(linears).float())
    each = awq._weight_means(layer, [balance], sizes, batch=3)
    for e, linear in enumerate(linears):
        torch.testing.assert_close(each[e], AWQModifier._compute_layer_means([linear]).float())


def test_quadratic_error_is_the_mean_squared_output_error_over_each_entrys_inputs() -> None:
    g = torch.Generator().manual_seed(1)
    weight, candidate = torch.randn(3, 8, 16, generator=g), torch.randn(3, 8, 16, generator=g)
    inputs = [torch.randn(n, 16, generator=g) for n in (5, 9, 2)]
    stats = InputStats(torch.zeros(3, 16, 16), torch.zeros(3, dtype=torch.long))
    for b, x in enumerate(inputs):
        stats.add(b, x)
    got = awq._quadratic_error(stats, weight, candidate)
    want = torch.stack([(x @ c.T - x @ w.T).pow(2).mean() for x, w, c in zip(inputs, weight, candidate, strict=True)])
    torch.testing.assert_close(got, want)


def test_scales_follow_llm_compressors_formula() -> None:
    """s = mean|x|^a / (mean|w|^(1-a) + 1e-4), clamped, over sqrt(max * min), as AWQModifier._compute_best_scale."""
    g = torch.Generator().manual_seed(2)
    x_mean, w_mean = torch.rand(2, 32, generator=g) + 0.01, torch.rand(2, 32, generator=g) + 0.01
    for ratio, duo in awq.grid(6):
        got = awq._scales(x_mean, w_mean, ratio, duo)
        for b in range(2):
            s = (x_mean[b].pow(ratio) / (w_mean[b].pow(1 - ratio) + 1e-4)) if duo else x_mean[b].pow(ratio)
            s = s.clamp(min=1e-4)
            torch.testing.assert_close(got[b], s / (s.max() * s.min()).sqrt())


@pytest.mark.parametrize("preserve_routing", [True, False])
@pytest.mark.parametrize("model_type", FAMILY_CONFIGS)
@torch.no_grad()
def test_applying_any_scales_leaves_the_model_computing_the_same(model_type: str, preserve_routing: bool) -> None:
    """Every pair of every layer, each with random s: divided out of the smoothed module, multiplied into its
    balances (the router too when routing is preserved), the model's logits stay the same; without preserving
    routing, the router sees x / s and the logits move."""
    model = tiny_model(model_type, **({"num_key_value_heads": 4} if model_type == "mixtral" else {}))  # v -> o
    family = get_adapter(model.config)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    config = AWQConfig(preserve_routing=preserve_routing)
    g = torch.Generator().manual_seed(3)
    names = set()
    for layer in decoder_layers(model, family.layout):
        for pair in awq.layer_mappings(layer, family, config, is_moe_layer(layer, family.layout)):
            batch = 1 if pair.parent is not None else pair.balances[0].group.get(layer).shape[0]
            width = pair.balances[0].group.get(layer).shape[-1]
            awq.apply(pair, layer, torch.rand(batch, width, generator=g) + 0.5)
            names.add(pair.name)
    after = model(ids).logits
    if preserve_routing:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    else:
        assert not torch.allclose(after, before, rtol=1e-3, atol=1e-3)
    assert {"input_layernorm", "post_attention_layernorm"} <= names
    # up -> down only where the down projection's input is linear in up (not gpt-oss's (up + 1) * glu)
    assert ("experts.up_proj" in names) == (family.layout.expert_activation == "act_fn")
    assert ("self_attn.v_proj" in names) == (model_type == "mixtral")


def test_llm_compressors_mappings_balance_every_reader_of_a_smoothed_norm() -> None:
    """DeepSeek-V3.2's indexer reads the input norm (wk, weights_proj) and the query latent norm (wq_b): as
    balances of llm-compressor's mappings too, or smoothing would silently change the indexer's inputs."""
    model = tiny_model("deepseek_v32")
    mappings = {m.smooth_layer: m.balance_layers for m in llmcompressor_modifiers.awq_mappings(
        model, get_adapter(model.config), AWQConfig(scope=["attention", "routed_experts"])
    )}  # fmt: skip
    norm = mappings["re:.*input_layernorm$"]
    assert {r"re:.*self_attn\.indexer\.wk$", r"re:.*self_attn\.indexer\.weights_proj$"} <= set(norm), norm
    assert not any("q_a_layernorm" in smoothed for smoothed in mappings)  # q_b_proj alone would leave wq_b out
