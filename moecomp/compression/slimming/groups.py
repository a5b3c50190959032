"""The weights of one loaded decoder layer that a slimming stage touches, as batches of matrices.

A :class:`WeightGroup` is one weight tensor seen as [B, out, in]: a fused experts tensor
(``mlp.experts.gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I]: B = the layer's experts) or the weight
of one ``nn.Linear`` (B = 1). Experts stored otherwise (input-major, gate and up interleaved: gpt-oss, Llama 4)
are seen through the same [E, 2I, H] / [E, H, I] view, gate rows then up rows (a copy, written back by ``set``).
Every method works on such batches, so routed experts, shared experts and attention go through the same code.
Scopes follow :mod:`moecomp.compression.slimming.targets`: routers and shared-expert gates belong to no scope and
are never slimmed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.methods.quantization import expert_group_size, resolve_group_size
from moecomp.compression.slimming.targets import Scope, scope_of
from moecomp.compression.structure import ModuleLayout

FUSED_EXPERT_TENSORS = ("gate_up_proj", "down_proj")
# Fused tensor -> the linears it concatenates along the output axis (llm-compressor's linearized names).
LINEARIZED = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}
OUTPUT_MAJOR = ModuleLayout()  # experts stored as transformers fuses most families': [E, 2I, H], [E, H, I]


@dataclass(frozen=True)
class WeightGroup:
    module: str  # path of the owning module inside the decoder layer ("mlp.experts", "self_attn.q_proj")
    param: str  # "gate_up_proj" / "down_proj" for fused experts, "weight" for a linear
    scope: Scope
    layout: ModuleLayout = OUTPUT_MAJOR  # how a fused experts tensor is stored (see ModuleLayout.experts_*)

    @property
    def fused(self) -> bool:
        return self.param != "weight"

    @property
    def name(self) -> str:
        return f"{self.module}.{self.param}"

    @property
    def linears(self) -> int:
        """How many linears each batch entry concatenates along its output axis (2 for gate_up_proj)."""
        return len(LINEARIZED[self.param]) if self.fused else 1

    def get(self, layer: nn.Module) -> torch.Tensor:
        """[B, out, in] view of the weight."""
        weight = getattr(layer.get_submodule(self.module), self.param)
        return self.layout.experts_output_major(self.param, weight) if self.fused else weight.unsqueeze(0)

    def in_features(self, layer: nn.Module) -> int:
        """The ``in`` of :meth:`get`'s ``[B, out, in]``, read off the stored weight (``get`` may copy it)."""
        weight = getattr(layer.get_submodule(self.module), self.param)
        return weight.shape[-2] if self.fused and self.layout.experts_input_major else weight.shape[-1]

    def set(self, layer: nn.Module, value: torch.Tensor) -> None:
        """Write [B, out, in] back in place (same dtype as the layer's weight)."""
        weight = getattr(layer.get_submodule(self.module), self.param)
        weight.data.copy_(self.layout.experts_stored(self.param, value) if self.fused else value[0])


def _has_fused_experts(layer: nn.Module, path: str) -> bool:
    try:
        module = layer.get_submodule(path)
    except AttributeError:
        return False
    return all(isinstance(getattr(module, t, None), torch.Tensor) for t in FUSED_EXPERT_TENSORS)


def layer_groups(layer: nn.Module, family: MoEFamily, scopes: list[Scope] | tuple[Scope, ...]) -> list[WeightGroup]:
    """The weight groups of a decoder layer in ``scopes``, in module order (routed experts as two groups)."""
    wanted = set(scopes)
    groups: list[WeightGroup] = []
    experts = family.layout.experts
    if "routed_experts" in wanted and _has_fused_experts(layer, experts):
        groups += [WeightGroup(experts, t, "routed_experts", family.layout) for t in FUSED_EXPERT_TENSORS]
    for name, module in layer.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        scope = scope_of(name, family)
        if scope in wanted and scope != "routed_experts":
            groups.append(WeightGroup(name, "weight", scope))
    return groups


def group_size_for(config: object, group: WeightGroup, widths: dict[str, int]) -> int | None:
    """Routed experts share one group size dividing every expert width; other linears get their own."""
    requested = getattr(config, "group_size", None)  # FP8: one scale per channel
    if group.scope == "routed_experts":
        routed = [w for name, w in widths.items() if name.startswith(group.module + ".")]
        return expert_group_size(sorted(routed), requested)
    return resolve_group_size(widths[group.name], requested)
