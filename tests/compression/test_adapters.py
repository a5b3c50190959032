"""Every supported family builds from a tiny config and its adapter finds the parts trimming touches."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from moecomp.compression.adapters import FAMILIES, UnsupportedModel, get_adapter
from moecomp.compression.structure import decoder_layers, is_moe_layer
from tests.compression.tiny_moe import FAMILY_CONFIGS, tiny_model


def test_every_family_has_a_tiny_config() -> None:
    assert set(FAMILY_CONFIGS) == set(FAMILIES)


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
        layer.get_submodule(layout.attention)
        layer.get_submodule(layout.post_attention_norm)
    for path in (family.embed_tokens, family.rotary_emb, family.final_norm, family.lm_head, family.base_model):
        model.get_submodule(path)


def test_dense_layers_follow_the_config() -> None:
    qwen = tiny_model("qwen2_moe")
    assert FAMILIES["qwen2_moe"].dense_layers(qwen.config) == {1}
    deepseek = tiny_model("deepseek_v3")
    assert FAMILIES["deepseek_v3"].dense_layers(deepseek.config) == {0}


def test_routing_kinds() -> None:
    assert FAMILIES["deepseek_v3"].routing == "sigmoid"
    assert {f.routing for name, f in FAMILIES.items() if name != "deepseek_v3"} == {"softmax"}


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
