"""Which linear layers of a linearized MoE model a slimming stage may touch.

After llm-compressor's ``linearize_moe`` every routed expert is a small module of three
``nn.Linear`` (``mlp.experts.<e>.{gate,up,down}_proj``). Each linear of a decoder layer falls in one
scope:

- ``routed_experts``: under the layer's experts module (the adapter's ``layout.experts``);
- ``shared_experts``: strictly under one of the family's shared-expert paths;
- ``attention``: under ``layout.attention``;
- ``None``: everything else, above all the router (``mlp.gate``) and a shared-expert gate (a
  shared path that is itself a single linear, e.g. Qwen2-MoE's ``shared_expert_gate``). Those are
  never slimmed: routing must stay bit-identical.

Targets are handed to llm-compressor as anchored regexes, one per layer-agnostic name pattern
(``model.layers.\\d+.mlp.experts.\\d+.down_proj``), so the saved ``quantization_config`` stays small.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, cast

from torch import nn

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.structure import decoder_layers

Scope = Literal["routed_experts", "shared_experts", "attention"]
SCOPES: tuple[Scope, ...] = ("routed_experts", "shared_experts", "attention")

_EXPERT_NAME = re.compile(r"\.(\d+)\.(?:[^.]+)$")


@dataclass(frozen=True)
class Target:
    name: str  # full module name in the model
    scope: Scope
    layer: int
    expert: int | None  # routed expert index (original numbering), None elsewhere
    in_features: int


def scope_of(rel: str, family: MoEFamily) -> Scope | None:
    layout = family.layout
    if rel.startswith(layout.experts + "."):
        return "routed_experts"
    for path in family.shared_experts:
        if rel.startswith(f"{layout.mlp}.{path}."):
            return "shared_experts"
    if rel.startswith(layout.attention + "."):
        return "attention"
    return None


def find_targets(model: nn.Module, family: MoEFamily, scopes: list[Scope] | tuple[Scope, ...]) -> list[Target]:
    """Every ``nn.Linear`` of the decoder layers that lies in one of ``scopes``."""
    prefix = family.layout.layers + "."
    wanted = set(scopes)
    targets: list[Target] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not name.startswith(prefix):
            continue
        layer_str, _, rel = name[len(prefix) :].partition(".")
        scope = scope_of(rel, family)
        if scope is None or scope not in wanted:
            continue
        expert = None
        if scope == "routed_experts":
            match = _EXPERT_NAME.search(rel[len(family.layout.experts) :])
            expert = int(match.group(1)) if match else None
        targets.append(Target(name, scope, int(layer_str), expert, module.in_features))
    return targets


def pattern_of(name: str) -> str:
    """The layer- and expert-agnostic regex for a module name (every ``.N.`` becomes ``.\\d+.``)."""
    generic = re.sub(r"\.\d+(?=\.)", ".<n>", name)
    return "re:^" + re.escape(generic).replace("<n>", r"\d+") + "$"


def patterns_by_in_features(targets: list[Target]) -> dict[int, list[str]]:
    """Group the targets' regexes by input width (the axis that quantization groups split).

    Raises when one regex would cover linears of different widths (then a group size could not be
    chosen per regex).
    """
    width: dict[str, int] = {}
    for target in targets:
        pattern = pattern_of(target.name)
        if width.setdefault(pattern, target.in_features) != target.in_features:
            raise ValueError(f"linears matching {pattern} have different input widths")
    grouped: dict[int, list[str]] = defaultdict(list)
    for pattern, in_features in width.items():
        grouped[in_features].append(pattern)
    return dict(grouped)


def linear(model: nn.Module, name: str) -> nn.Linear:
    """The target ``name``: a linear (llm-compressor's passes see experts linearized)."""
    return cast(nn.Linear, model.get_submodule(name))


def router_names(model: nn.Module, family: MoEFamily) -> dict[int, str]:
    """Decoder layer -> full name of its router module, for layers that have one."""
    names: dict[int, str] = {}
    for index, layer in enumerate(decoder_layers(model, family.layout)):
        try:
            layer.get_submodule(family.layout.router)
        except AttributeError:
            continue
        names[index] = f"{family.layout.layers}.{index}.{family.layout.router}"
    return names
