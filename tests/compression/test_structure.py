"""Applying Decisions in memory: sliced experts route like the original restricted to them, dropped MoE
sub-layers compute exactly h + Attention(...), dropped blocks renumber the stack and its KV cache."""

from __future__ import annotations

import copy
import json
from unittest import mock

import pytest
import torch

from moecomp.compression.adapters import get_adapter
from moecomp.compression.structure import (
    Decisions,
    DroppedMLP,
    ModuleLayout,
    apply_decisions,
    expert_counts,
    slice_experts,
)
from tests.compression.tiny_moe import FAMILY_CONFIGS, tiny_config, tiny_model


def test_decisions_json_round_trip_and_normalisation() -> None:
    d = Decisions(kept_experts={3: [5, 1], 0: [2, 0]}, dropped_layers=[4, 2, 2], dropped_blocks=[7])
    assert d.kept_experts == {0: [0, 2], 3: [1, 5]} and d.dropped_layers == [2, 4]
    assert Decisions.from_json(d.to_json()) == d
    assert list(d.to_json()["kept_experts"]) == ["0", "3"]
    assert d.kept_blocks(9) == [0, 1, 2, 3, 4, 5, 6, 8]


def test_merge_intersects_and_discards_removed_layers() -> None:
    a = Decisions(kept_experts={0: [0, 1, 2], 1: [0, 1]}, dropped_layers=[3])
    b = Decisions(kept_experts={0: [1, 2, 3]}, dropped_blocks=[1])
    merged = a.merge(b)
    assert merged == Decisions(kept_experts={0: [1, 2]}, dropped_layers=[3], dropped_blocks=[1])


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_layout_json_round_trip(model_type: str) -> None:
    """Remote code rebuilds the layout from JSON (nested pairs such as ``expert_indexed`` included)."""
    layout = get_adapter(tiny_config(model_type)).layout
    again = ModuleLayout.from_json(json.loads(json.dumps(layout.to_json())))
    assert again == layout and hash(again) == hash(layout)


def _router_logits(model, layer_idx: int, family, x: torch.Tensor) -> torch.Tensor:
    """The router's logits [T, E] as the MoE block calls it (MiniMax-M2's router takes the block's bias)."""
    layer = model.get_submodule(family.layout.layers)[layer_idx]
    seen = {}
    handle = layer.get_submodule(family.layout.router).register_forward_hook(
        lambda m, a, out: seen.update(z=out[family.layout.router_logits_output])
    )
    layer.get_submodule(family.layout.mlp)(x.unsqueeze(0))  # [1, T, H]
    handle.remove()
    return seen["z"]


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_sliced_experts_keep_router_rows_and_counts(model_type: str) -> None:
    model = tiny_model(model_type)
    family = get_adapter(model.config)
    layer = family.moe_layers(model.config)[-1]
    kept = [0, 2, 3]
    x = torch.randn(5, 64)
    before = _router_logits(model, layer, family, x)
    apply_decisions(model, Decisions(kept_experts={layer: kept}), family.layout)
    after = _router_logits(model, layer, family, x)
    torch.testing.assert_close(after, before[:, kept], rtol=1e-5, atol=1e-6)  # GEMM shape changes rounding
    counts = expert_counts(model, family.layout)
    assert counts[layer] == len(kept) and all(
        c == family.num_experts(model.config) for i, c in counts.items() if i != layer
    )
    assert torch.isfinite(model(torch.randint(0, 128, (2, 9))).logits).all()


def test_sliced_experts_compute_the_same_expert_outputs() -> None:
    """A token routed only to kept experts gets the same MoE output (Mixtral renormalises over the top-k)."""
    model = tiny_model("mixtral")
    family = get_adapter(model.config)
    original = copy.deepcopy(model)
    x = torch.randn(64, 64)
    _, _, idx = original.model.layers[1].mlp.gate(x)
    kept = sorted(set(idx[:8].flatten().tolist()))
    apply_decisions(model, Decisions(kept_experts={1: kept}), family.layout)
    tokens = [t for t in range(64) if set(idx[t].tolist()) <= set(kept)]
    assert tokens
    sub = x[tokens].unsqueeze(0)
    torch.testing.assert_close(model.model.layers[1].mlp(sub), original.model.layers[1].mlp(sub))


def test_uniform_expert_count_is_written_to_the_config() -> None:
    model = tiny_model("deepseek_v3")
    family = get_adapter(model.config)
    kept = {i: [0, 1, 5, 6] for i in family.moe_layers(model.config)}
    apply_decisions(model, Decisions(kept_experts=kept), family.layout)
    assert model.config.n_routed_experts == 4 and model.config.n_group == 1 and model.config.topk_group == 1
    router = model.model.layers[1].mlp.gate
    assert router.num_experts == 4 and router.num_group == 1 and router.e_score_correction_bias.shape == (4,)
    assert torch.isfinite(model(torch.randint(0, 128, (2, 9))).logits).all()


@pytest.mark.parametrize("model_type", ["deepseek_v3", "glm4_moe", "deepseek_v2"])
def test_keeping_every_expert_leaves_group_limited_routing_alone(model_type: str) -> None:
    """Remote code reshapes every MoE layer to its listed count, trimmed or not: an untrimmed layer keeps its
    groups (resetting them would change its routing)."""
    model = tiny_model(model_type)
    family = get_adapter(model.config)
    layer = model.model.layers[family.moe_layers(model.config)[0]]
    slice_experts(layer, list(range(family.num_experts(model.config))), family.layout)
    assert (layer.mlp.gate.num_group, layer.mlp.gate.topk_group) == (2, 1)
    slice_experts(layer, [0, 1, 2, 3, 4, 5], family.layout)
    assert (layer.mlp.gate.num_group, layer.mlp.gate.topk_group) == (1, 1)


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_dropped_moe_sublayer_computes_h_plus_attention(model_type: str) -> None:
    model = tiny_model(model_type)
    family = get_adapter(model.config)
    idx = family.moe_layers(model.config)[0]
    apply_decisions(model, Decisions(dropped_layers=[idx]), family.layout)
    layer = model.model.layers[idx]
    assert isinstance(layer.get_submodule(family.layout.mlp), DroppedMLP)
    assert not any(True for _ in layer.get_submodule(family.layout.post_attention_norm).parameters())

    # the layer's token mixer: attention, or (hybrid families) the mixer its layer type has
    mixer = next(
        layer.get_submodule(p) for p in (family.layout.attention, *family.layout.token_mixers) if hasattr(layer, p)
    )
    captured = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, k: captured.update(h=a[0] if a else k["hidden_states"]), with_kwargs=True
        ),
        layer.register_forward_hook(lambda m, a, out: captured.update(out=out)),
        mixer.register_forward_hook(lambda m, a, out: captured.update(mixed=out[0] if isinstance(out, tuple) else out)),
    ]
    model(torch.randint(0, 128, (2, 9)))
    for handle in handles:
        handle.remove()
    out = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    torch.testing.assert_close(out, captured["h"] + captured["mixed"], rtol=0, atol=0)


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_dropped_blocks_renumber_attention_and_config(model_type: str) -> None:
    model = tiny_model(model_type)
    family = get_adapter(model.config)
    n = model.config.num_hidden_layers
    original = [model.model.layers[i] for i in range(n)]
    original_types = getattr(model.config, "layer_types", None)
    apply_decisions(model, Decisions(dropped_blocks=[1]), family.layout)
    assert model.config.num_hidden_layers == n - 1
    assert list(model.model.layers) == [original[i] for i in range(n) if i != 1]
    mixers = (family.layout.attention, *family.layout.token_mixers)  # hybrid layers: whichever mixer each has
    indices = [getattr(layer, p).layer_idx for layer in model.model.layers for p in mixers if hasattr(layer, p)]
    assert indices == list(range(n - 1))
    layer_types = getattr(model.config, "layer_types", None)
    assert layer_types is None or layer_types == [original_types[i] for i in range(n) if i != 1]
    ids = torch.randint(0, 128, (1, 6))
    out = model.generate(ids, max_new_tokens=3, do_sample=False)  # exercises the KV cache
    assert out.shape == (1, 9)


def test_block_drop_keeps_dense_bookkeeping() -> None:
    qwen = tiny_model("qwen2_moe")  # dense layer 1
    apply_decisions(qwen, Decisions(dropped_blocks=[0]), get_adapter(qwen.config).layout)
    assert qwen.config.mlp_only_layers == [0] and qwen.config.decoder_sparse_step == 1
    deepseek = tiny_model("deepseek_v3")  # dense layer 0
    apply_decisions(deepseek, Decisions(dropped_blocks=[0], dropped_layers=[2]), get_adapter(deepseek.config).layout)
    assert deepseek.config.first_k_dense_replace == 0
    ernie = tiny_model("ernie4_5_moe")  # dense layer 0, MoE layers 1..3
    apply_decisions(ernie, Decisions(dropped_blocks=[0, 2], dropped_layers=[3]), get_adapter(ernie.config).layout)
    config = ernie.config
    assert (config.moe_layer_start_index, config.moe_layer_end_index, config.moe_layer_interval) == (0, 1, 1)


def test_block_drop_that_no_moe_range_can_express_is_refused() -> None:
    """ERNIE with MoE every other layer: dropping one dense block leaves MoE layers no interval describes."""
    ernie = tiny_model("ernie4_5_moe", num_hidden_layers=6, moe_layer_start_index=0, moe_layer_interval=2)
    layout = get_adapter(ernie.config).layout
    assert get_adapter(ernie.config).moe_layers(ernie.config) == [1, 3, 5]
    with pytest.raises(ValueError, match=r"MoE layers \[0, 2, 3\] cannot be written as moe_layer_start_index"):
        apply_decisions(copy.deepcopy(ernie), Decisions(dropped_blocks=[0, 4]), layout)
    apply_decisions(ernie, Decisions(dropped_blocks=[0, 1]), layout)  # evenly spaced still: 1, 3
    assert (ernie.config.moe_layer_start_index, ernie.config.moe_layer_interval) == (1, 2)


def test_block_drop_keeps_llama4_per_layer_lists_consistent() -> None:
    """Llama 4: moe_layers, no_rope_layers and layer_types follow the kept blocks, so the stock model built from
    the trimmed config is the trimmed model (same tensors, same logits; NoPE layers have no qk_norm)."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama4_text")  # MoE 1, 3; NoPE/full attention 1, 3; chunked rope 0, 2
    apply_decisions(model, Decisions(dropped_blocks=[0]), get_adapter(model.config).layout)
    config = model.config
    assert config.num_hidden_layers == 3 and config.moe_layers == [0, 2]
    assert config.no_rope_layers == [0, 1, 0]
    assert config.layer_types == ["full_attention", "chunked_attention", "full_attention"]
    stock = AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
    stock.load_state_dict(model.state_dict(), strict=True)
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(0))  # > attention_chunk_size
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5_moe_text", "deepseek_v32", "gpt_oss"])
def test_block_drop_is_what_the_stock_config_describes_on_per_layer_families(model_type: str) -> None:
    """Per-layer lists (layer_types, mlp_layer_types) and cache indices (hybrid mixers, V3.2's indexer) follow the
    kept blocks: the stock model built from the trimmed config is the trimmed model, with and without a cache."""
    from transformers import AutoModelForCausalLM

    model = tiny_model(model_type)
    family = get_adapter(model.config)
    types = {key: list(getattr(model.config, key)) for key in family.layout.config_layer_lists}
    apply_decisions(model, Decisions(dropped_blocks=[0]), family.layout)
    assert {key: getattr(model.config, key) for key in types} == {key: v[1:] for key, v in types.items()}
    for i, layer in enumerate(model.model.layers):
        for path in (family.layout.attention, *family.layout.token_mixers, *family.layout.layer_indexed):
            if hasattr(layer, path.split(".")[0]):
                assert layer.get_submodule(path).layer_idx == i
    stock = AutoModelForCausalLM.from_config(copy.deepcopy(model.config)).eval()
    stock.load_state_dict(model.state_dict(), strict=True)
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, model(ids).logits, rtol=0, atol=0)
    generated = stock.generate(ids, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(generated, model.generate(ids, max_new_tokens=4, do_sample=False))


def test_a_dropped_moe_that_returned_a_pair_still_returns_one() -> None:
    """Llama 4's decoder layer unpacks (hidden, router_logits) from its MoE: the dropped MoE adds exactly 0."""
    model = tiny_model("llama4_text")
    layer = model.model.layers[1]
    h = torch.randn(2, 5, 64)
    kwargs = {"position_embeddings": model.model.rotary_emb(h, torch.arange(5)[None]), "attention_mask": None}
    attention_only = h + layer.self_attn(layer.input_layernorm(h), **kwargs)[0]
    apply_decisions(model, Decisions(dropped_layers=[1]), get_adapter(model.config).layout)
    with torch.no_grad():
        torch.testing.assert_close(layer(h, **kwargs), attention_only, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ["qwen2_moe", "deepseek_v3", "ernie4_5_moe", "minimax_m2", "llama4_text"])
def test_trimmed_config_plus_renumbered_decisions_rebuild_the_same_shapes(model_type: str) -> None:
    """What remote code does: build from the trimmed config on meta, apply the renumbered decisions."""
    from transformers import AutoModelForCausalLM

    model = tiny_model(model_type)
    family = get_adapter(model.config)
    n = model.config.num_hidden_layers
    moe = family.moe_layers(model.config)
    decisions = Decisions(
        kept_experts={moe[-1]: [0, 2, 3], moe[0]: [1, 2, 4]}, dropped_layers=[moe[1]], dropped_blocks=[0]
    )
    apply_decisions(model, decisions, family.layout)
    with torch.device("meta"):
        rebuilt = AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    apply_decisions(rebuilt, decisions.for_trimmed_model(n), family.layout)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == expected


def _mask_router_logits(router: torch.nn.Module, dropped: list[int]) -> None:
    """Make the stock router see -inf logits for ``dropped``: its one ``F.linear`` (the logits) is masked."""
    forward, linear = router.forward, torch.nn.functional.linear

    def masked_linear(*args: object, **kwargs: object) -> torch.Tensor:
        logits = linear(*args, **kwargs)  # [T, E]
        return logits.index_fill(-1, torch.tensor(dropped), float("-inf"))

    def masked_forward(*args: object, **kwargs: object) -> object:
        with mock.patch.object(torch.nn.functional, "linear", masked_linear):
            return forward(*args, **kwargs)

    router.forward = masked_forward


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_dropped_experts_equal_the_original_with_their_router_logits_masked(model_type: str) -> None:
    """fp32, every routing kind: slicing experts away is the stock model never routing to them. Group-limited
    routers run with one group here: a trimmed one routes plain top-k over the kept experts (see the adapters)."""
    family = get_adapter(tiny_config(model_type))
    model = tiny_model(model_type, **dict.fromkeys(family.layout.config_group_keys, 1))
    masked = copy.deepcopy(model)
    n, moe = family.num_experts(model.config), family.moe_layers(model.config)
    kept = {layer: [e for e in range(n) if (e + layer) % 3 != 0] for layer in moe}
    apply_decisions(model, Decisions(kept_experts=kept), family.layout)
    for layer in moe:
        router = masked.get_submodule(family.layout.layers)[layer].get_submodule(family.layout.router)
        _mask_router_logits(router, [e for e in range(n) if e not in kept[layer]])
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked(ids).logits, rtol=1e-5, atol=1e-5)
