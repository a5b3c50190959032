"""Every supported family builds from a tiny config and its adapter finds the parts trimming touches."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from moecomp.compression.adapters import FAMILIES, RefusedMethod, UnsupportedModel, get_adapter
from moecomp.compression.stored_quantization import FORMATS
from moecomp.compression.structure import decoder_layers, is_moe_layer
from tests.compression.tiny_moe import FAMILY_CONFIGS, tiny_config, tiny_model

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_family_of_the_table_and_no_other() -> None:
    """The README's families table (one row per family, its model_type in backquotes) is the adapter table's."""
    rows = re.findall(r"^\| [^|`]+\(`(\w+)`\) \|", README.read_text(), flags=re.MULTILINE)
    assert sorted(rows) == sorted(FAMILIES)


def test_every_family_has_a_tiny_config() -> None:
    assert set(FAMILY_CONFIGS) == set(FAMILIES)


def test_every_format_a_family_reads_dequantized_has_a_decoder() -> None:
    """A quant_method in ``dequantize_on_read`` without a decoder would be refused as an unreadable checkpoint."""
    assert all(set(f.dequantize_on_read) <= set(FORMATS) for f in FAMILIES.values())
    assert not set(FAMILIES["gpt_oss"].dequantize_on_read) & set(dict(FAMILIES["gpt_oss"].refused_quantizations))


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_adapter_finds_the_parts(model_type: str) -> None:
    model = tiny_model(model_type)
    family = get_adapter(model.config)
    layout = family.layout
    n_experts, top_k, hidden = family.num_experts(model.config), family.top_k(model.config), 64
    layers = decoder_layers(model, layout)
    assert len(layers) == model.config.num_hidden_layers
    moe = family.moe_layers(model.config)
    assert moe and [i for i, layer in enumerate(layers) if is_moe_layer(layer, layout)] == moe
    for i in moe:
        layer = layers[i]
        router = layer.get_submodule(layout.router)
        experts = layer.get_submodule(layout.experts)
        assert router.weight.shape == (n_experts, hidden)
        assert router.top_k == top_k
        for name in layout.expert_tensors:
            assert getattr(experts, name).shape[0] == n_experts
        for name in layout.router_tensors:
            assert getattr(router, name).shape[0] == n_experts
        for path in family.shared_experts:
            assert layer.get_submodule(layout.mlp).get_submodule(path) is not None
        mixers = [p for p in (layout.attention, *layout.token_mixers) if hasattr(layer, p.split(".")[0])]
        assert len(mixers) == 1  # full attention, or (hybrid families) the layer type's other mixer
        layer.get_submodule(mixers[0])
        layer.get_submodule(layout.post_attention_norm)
    for path in (family.embed_tokens, family.rotary_emb, family.final_norm, family.lm_head, family.base_model):
        model.get_submodule(path)


def test_dense_layers_follow_the_config() -> None:
    qwen = tiny_model("qwen2_moe")
    assert FAMILIES["qwen2_moe"].dense_layers(qwen.config) == {1}
    for model_type in ("deepseek_v3", "deepseek_v2", "deepseek_v32", "glm4_moe", "ernie4_5_moe"):
        assert FAMILIES[model_type].dense_layers(tiny_model(model_type).config) == {0}
    # DeepSeek-V3.2: mlp_layer_types, derived from first_k_dense_replace when not given
    v32 = tiny_config("deepseek_v32", mlp_layer_types=["sparse", "dense", "sparse", "sparse"])
    assert FAMILIES["deepseek_v32"].dense_layers(v32) == {1}
    # Llama 4: the config's moe_layers (from interleave_moe_layer_step, or given)
    assert FAMILIES["llama4_text"].moe_layers(tiny_config("llama4_text")) == [1, 3]
    llama4 = tiny_config("llama4_text", num_hidden_layers=6, interleave_moe_layer_step=3)
    assert FAMILIES["llama4_text"].moe_layers(llama4) == [2, 5]
    assert FAMILIES["llama4_text"].moe_layers(tiny_config("llama4_text", moe_layers=[0, 2])) == [0, 2]
    # ERNIE: MoE layers are start <= i <= end on the (i + 1) % interval grid
    ernie = tiny_config("ernie4_5_moe", num_hidden_layers=8, moe_layer_end_index=6, moe_layer_interval=2)
    assert FAMILIES["ernie4_5_moe"].moe_layers(ernie) == [1, 3, 5]


def test_routing_kinds() -> None:
    sigmoid = {"deepseek_v3", "deepseek_v32", "glm4_moe", "minimax_m2"}  # sigmoid affinities, correction bias
    assert {name for name, f in FAMILIES.items() if f.routing == "sigmoid"} == sigmoid
    assert {name for name, f in FAMILIES.items() if f.routing == "top1_sigmoid"} == {"llama4_text"}
    assert {f.routing for name, f in FAMILIES.items() if name not in sigmoid | {"llama4_text"}} == {"softmax"}


def test_unsupported_model_is_refused_with_the_supported_list() -> None:
    with pytest.raises(UnsupportedModel) as info:
        get_adapter(LlamaConfig())
    message = str(info.value)
    assert "'llama'" in message
    for name in FAMILIES:
        assert name in message
    assert isinstance(info.value, ValueError)


def test_forward_runs_for_every_family() -> None:
    for model_type in FAMILY_CONFIGS:
        logits = tiny_model(model_type)(torch.randint(0, 128, (2, 7))).logits
        assert logits.shape == (2, 7, 128) and torch.isfinite(logits).all()


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_gate_weights_are_the_routing_kinds_affinity_of_the_chosen_experts(model_type: str) -> None:
    """The family's routing kind (what expert_drop scores: softmax or sigmoid of the router logits) is what the
    stock router weighs its top-k experts by, up to one factor per token (renormalisation, routed scaling)."""
    model = tiny_model(model_type)
    family = get_adapter(model.config)
    layer = decoder_layers(model, family.layout)[family.moe_layers(model.config)[0]]
    seen = {}
    layer.get_submodule(family.layout.router).register_forward_hook(lambda m, a, out: seen.update(out=out))
    with torch.no_grad():
        layer.get_submodule(family.layout.mlp)(torch.randn(1, 32, 64, generator=torch.Generator().manual_seed(0)))
    out = seen["out"]
    z = out[family.layout.router_logits_output].float()  # [T, E]
    if len(out) == 3:  # (logits, top-k weights [T, k], top-k indices [T, k])
        weights, index = out[1].float(), out[2]
    else:  # Llama 4: (scores [T, E], zero off the chosen experts, logits)
        index = out[0].float().topk(family.top_k(model.config), dim=-1).indices
        weights = out[0].float().gather(1, index)
    affinity = (z.softmax(-1) if family.routing == "softmax" else z.sigmoid()).gather(1, index)  # [T, k]
    ratio = weights / affinity
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    if family.routing == "top1_sigmoid":  # no normalisation at all: the weight is the affinity itself
        torch.testing.assert_close(ratio, torch.ones_like(ratio))


def test_a_method_on_one_backend_can_be_refused() -> None:
    """Qwen3-Next's norms scale by (1 + weight): llm-compressor's AWQ (norm weight / s) is refused, moecomp's runs."""
    from moecomp.compression.methods.quantization import AWQConfig, GPTQConfig

    family = FAMILIES["qwen3_next"]
    with pytest.raises(RefusedMethod, match=r"awq is not supported on qwen3_next: llm-compressor's AWQ divides"):
        family.check_methods([GPTQConfig(), AWQConfig(backend="llmcompressor")])
    family.check_methods([AWQConfig(), GPTQConfig(backend="llmcompressor")])
