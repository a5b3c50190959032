"""From a slimming stage config to the llm-compressor modifiers that carry it out.

One builder per method, called by the stage's own ``llmcompressor_modifiers`` (its config module). Magnitude
pruning needs no data and no llm-compressor modifier; it is applied directly in
:mod:`moecomp.compression.slimming.llmcompressor_pass`.
"""

from __future__ import annotations

import re
from typing import Any

from llmcompressor.modifiers.modifier import Modifier
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform.awq import AWQMapping, AWQModifier
from torch import nn
from transformers import PreTrainedModel

from moecomp.compression.adapters import MoEFamily, SmoothingPair
from moecomp.compression.lazy_checkpoint import checkpoint_structure
from moecomp.compression.methods.pruning import SparseGPTConfig, WandaConfig
from moecomp.compression.methods.quantization import AWQConfig, GPTQConfig, QuantizationStage, config_groups
from moecomp.compression.slimming.llmcompressor_seam import (
    RoutedGPTQModifier,
    RoutedSparseGPTModifier,
    RoutedWandaModifier,
)
from moecomp.compression.slimming.targets import Target, pattern_of, patterns_by_in_features
from moecomp.compression.structure import decoder_layers


def split_patterns(targets: list[Target]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Target regexes by input width: (routed experts, everything else)."""
    routed = [t for t in targets if t.scope == "routed_experts"]
    return patterns_by_in_features(routed), patterns_by_in_features([t for t in targets if t not in routed])


def gptq_modifiers(config: GPTQConfig, targets: list[Target]) -> list[Modifier]:
    groups = config_groups(config, *split_patterns(targets))
    return [
        RoutedGPTQModifier(config_groups=groups, block_size=config.block_size, dampening_frac=config.dampening_frac)
    ]


def quantization_modifiers(config: QuantizationStage, targets: list[Target]) -> list[Modifier]:
    """Round-to-nearest (RTN, FP8) with the stage's schemes."""
    return [QuantizationModifier(config_groups=config_groups(config, *split_patterns(targets)))]


def awq_modifiers(config: AWQConfig, model: Any, family: MoEFamily, targets: list[Target]) -> list[Modifier]:
    # offload_device left to llm-compressor: for MoE models it caches each smoothing parent's inputs on the host
    smoothing = AWQModifier(mappings=awq_mappings(model, family, config), n_grid=config.n_grid, duo_scaling=True)
    return [smoothing, *quantization_modifiers(config, targets)]


def _sparsity_args(config: WandaConfig | SparseGPTConfig, targets: list[Target]) -> dict:
    n, m = config.n_m
    return {
        "sparsity": config.target_sparsity,
        "mask_structure": f"{n}:{m}",
        "targets": sorted({pattern_of(t.name) for t in targets}),
    }


def wanda_modifiers(config: WandaConfig, targets: list[Target]) -> list[Modifier]:
    return [RoutedWandaModifier(**_sparsity_args(config, targets))]


def sparsegpt_modifiers(config: SparseGPTConfig, targets: list[Target]) -> list[Modifier]:
    return [
        RoutedSparseGPTModifier(
            **_sparsity_args(config, targets), block_size=config.block_size, dampening_frac=config.dampening_frac
        )
    ]


def _suffix(path: str) -> str:
    return "re:.*" + re.escape(path) + "$"


def _moe_layers(model: PreTrainedModel, family: MoEFamily) -> list[int]:
    """The layers with an MoE sub-layer, less those a moecomp layer_drop removed (their config lists them)."""
    dropped = set(checkpoint_structure(model.config, family).dropped_layers)
    return [i for i in family.moe_layers(model.config) if i not in dropped]


def _shared_balance(model: PreTrainedModel, family: MoEFamily, preserve_routing: bool) -> list[str]:
    """Shared-expert linears fed by the post-attention norm: their input projections, and a shared
    gate (a shared path that is a single linear) when routing is preserved."""
    layout = family.layout
    first_moe = decoder_layers(model, layout)[_moe_layers(model, family)[0]]
    balance: list[str] = []
    for path in family.shared_experts:
        module = first_moe.get_submodule(f"{layout.mlp}.{path}")
        if hasattr(module, "weight") and not list(module.children()):
            if preserve_routing:
                balance.append(_suffix(f"{layout.mlp}.{path}"))
        else:
            balance += [_suffix(f"{layout.mlp}.{path}.gate_proj"), _suffix(f"{layout.mlp}.{path}.up_proj")]
    return balance


def awq_mappings(model: PreTrainedModel, family: MoEFamily, config: AWQConfig) -> list[AWQMapping]:
    """AWQ smoothing pairs (smoothed layer -> layers that read its output).

    The post-attention norm feeds the router, the routed experts' gate/up projections and the shared
    expert. Every one of them must absorb the scale s, or its input silently changes: with
    ``preserve_routing`` the router (and shared gate) are balance layers, so their weights become
    W * s and their logits stay exactly as before (they are not quantized: they are no targets).
    Without it this is llm-compressor's default for families it has no MoE table for (e.g. Mixtral).
    """
    layout = family.layout
    experts = rf"re:.*{re.escape(layout.experts)}\.\d+\."
    moe_balance = [_suffix(layout.router)] if config.preserve_routing else []
    moe_balance += _shared_balance(model, family, config.preserve_routing)
    moe_balance += [experts + "gate_proj$", experts + "up_proj$"]
    # Only MoE layers: a dense layer's post-attention norm feeds none of these (DeepSeek's first layers).
    moe_layers = rf"re:.*{re.escape(layout.layers)}\.({'|'.join(map(str, _moe_layers(model, family)))})\."
    mappings = [
        AWQMapping(moe_layers + re.escape(layout.post_attention_norm) + "$", moe_balance),
        AWQMapping("re:.*up_proj$", ["re:.*down_proj$"]),
    ]
    if "attention" in config.scope:
        mappings = [*_attention_mappings(model, family), *mappings]
    return mappings


def _attention_mappings(model: nn.Module, family: MoEFamily) -> list[AWQMapping]:
    """The family's attention pairs (``family.attention_smoothing``) as the first layer holding any of them has
    them; llm-compressor matches each regex in every layer and itself skips v -> o under grouped-query attention."""
    pairs: list[SmoothingPair] = []
    for layer in decoder_layers(model, family.layout):
        pairs = family.attention_pairs(layer)
        if pairs:
            break
    return [AWQMapping(_suffix(p.smoothed), [_suffix(b) for b in p.balances]) for p in pairs]
