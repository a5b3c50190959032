"""Input statistics of a decoder layer's slimmed weights, gathered while the calibration batch runs through it.

For every :class:`WeightGroup` and every batch entry b (an expert, or the one linear), in float32:

    S_b = sum over the inputs x that reached b of x x^T     [in, in]      n_b = how many inputs did
    A_b = sum over those inputs of |x|                      [in]          (AWQ's mean |x| = A_b / n_b)

GPTQ and SparseGPT use H_b = 2 S_b / n_b (llm-compressor's normalisation up to a constant, which neither
algorithm sees: its dampening is relative to mean(diag H)); Wanda uses ||X_j||^2 = diag(S_b).

Routed experts are observed on the fused experts module (one forward hook; how each family calls it:
``ModuleLayout.experts_call``): expert e's ``gate_up_proj`` input is the tokens routed to e (Llama 4: scaled by
their router score, as its experts see them), its ``down_proj`` input is act(x W_gate^T) * (x W_up^T) over those
tokens (with the gate_up bias and the family's own activation where it has them: :func:`down_input`). With
``all_experts`` (llm-compressor's ``moe_calibrate_all_experts``) every expert sees every token (Llama 4: the MoE
block's unscaled input), so ``gate_up_proj`` shares one S for all experts; the layer's output still follows the
router.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from moecomp.compression.slimming.groups import WeightGroup
from moecomp.compression.structure import ModuleLayout


@dataclass
class InputStats:
    """Sum of x x^T per batch entry; ``shared``: one entry that stands for every batch entry; ``repeat``: each
    entry stands for that many consecutive batch entries (an expert's gate and up halves, slimmed apart)."""

    sums: torch.Tensor  # [B or 1, in, in] float32
    counts: torch.Tensor  # [B or 1] int64
    shared: bool = False
    repeat: int = 1
    abs_sums: torch.Tensor | None = None  # [B or 1, in] float32, when asked for

    def entries(self, start: int, stop: int) -> torch.Tensor:
        """Indices into ``sums`` of batch entries [start, stop)."""
        index = torch.arange(start, stop, device=self.sums.device) // self.repeat
        return index * 0 if self.shared else index

    def entry_counts(self, batch: int) -> torch.Tensor:
        """[batch] inputs seen by each batch entry."""
        return self.counts[self.entries(0, batch)]

    def entry_square_norms(self, batch: int) -> torch.Tensor:
        """[batch, in]: sum over inputs of x_j^2 (Wanda's ||X_j||^2) for each batch entry."""
        return self.sums.diagonal(dim1=-2, dim2=-1)[self.entries(0, batch)]

    def entry_abs_means(self, batch: int) -> torch.Tensor:
        """[batch, in]: mean |x_j| over the inputs of each batch entry (AWQ's activation statistic; needs
        ``abs_sums``); an entry without input gets 0."""
        assert self.abs_sums is not None, "gathered without abs_sums"
        index = self.entries(0, batch)
        return self.abs_sums[index] / self.counts[index].clamp_min(1)[:, None].float()

    def add(self, entry: int, x: torch.Tensor) -> None:
        """Accumulate inputs x [n, in] of batch entry ``entry``."""
        x = x.float()
        self.sums[entry].addmm_(x.T, x)
        self.counts[entry] += x.shape[0]
        if self.abs_sums is not None:
            self.abs_sums[entry] += x.abs().sum(dim=0)

    def hessians(self, start: int, stop: int) -> torch.Tensor:
        """H = 2 S / n for entries [start, stop) as a fresh [stop - start, in, in] tensor (entries without any
        input give an all-zero H: the methods' fallback decides what to do with them)."""
        index = self.entries(start, stop)
        return self.sums[index] * (2.0 / self.counts[index].clamp_min(1).to(self.sums.dtype))[:, None, None]

    def square_norms(self) -> torch.Tensor:
        """[B or 1, in]: sum over inputs of x_j^2 (Wanda's ||X_j||^2)."""
        return self.sums.diagonal(dim1=-2, dim2=-1)

    def tokens(self, batch: int) -> list[int]:
        return self.entry_counts(batch).tolist()


@dataclass
class LayerStats:
    """Statistics of one layer's weight groups, keyed by ``WeightGroup.name``."""

    by_group: dict[str, InputStats] = field(default_factory=dict)
    routed_tokens: torch.Tensor | None = None  # [E] tokens the router sent to each expert


def _zeros(batch: int, width: int, device: torch.device, abs_sums: bool) -> InputStats:
    return InputStats(
        torch.zeros(batch, width, width, dtype=torch.float32, device=device),
        torch.zeros(batch, dtype=torch.long, device=device),
        shared=False,
        abs_sums=torch.zeros(batch, width, dtype=torch.float32, device=device) if abs_sums else None,
    )


def _linear_hook(stats: InputStats):
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        x = args[0]
        stats.add(0, x.reshape(-1, x.shape[-1]))

    return hook


def down_input(module: Any, layout: ModuleLayout, expert: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``expert``'s down-projection input for its inputs x [n, H], as the family's experts module computes
    it (weights as stored, gate_up bias where there is one, the layout's activation)."""
    weight = module.gate_up_proj[expert]
    gate_up = x @ weight if layout.experts_input_major else nn.functional.linear(x, weight)
    bias = getattr(module, "gate_up_proj_bias", None)
    if bias is not None:
        gate_up = gate_up + bias[expert]
    if layout.expert_activation != "act_fn":
        return getattr(module, layout.expert_activation)(gate_up)
    if layout.gate_up_interleaved:
        gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
    else:
        gate, up = gate_up.chunk(2, dim=-1)
    return module.act_fn(gate) * up


def _routed_rows(args: tuple, experts: int, layout: ModuleLayout) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Of one experts call: the hidden states each expert's inputs are rows of, and those rows for every expert.

    ``routed`` calls pass (hidden [T, H], top_k_index [T, k]): expert e's inputs are the tokens routed to it.
    ``every_token`` calls pass x [E * T, H], token t's row of expert e scaled by its router score: the rows of a
    token routed elsewhere are exactly zero, and are left out."""
    if layout.experts_call == "every_token":
        x = args[0].reshape(experts, -1, args[0].shape[-1])
        return x.reshape(-1, x.shape[-1]), [
            (x[e].abs().amax(dim=-1) > 0).nonzero().squeeze(-1) + e * x.shape[1] for e in range(experts)
        ]
    hidden, top_k_index = args[0], args[1]
    return hidden, [(top_k_index == e).any(dim=-1).nonzero().squeeze(-1) for e in range(experts)]


def _experts_hook(stats: LayerStats, groups: dict[str, WeightGroup], all_experts: bool, layout: ModuleLayout):
    gate_up_group, down_group = groups.get("gate_up_proj"), groups.get("down_proj")
    block_input: list[torch.Tensor] = []  # every_token + all_experts: the MoE block's unscaled input

    def pre_hook(module: nn.Module, args: tuple) -> None:
        block_input[:] = [args[0].reshape(-1, args[0].shape[-1])]

    def hook(module: Any, args: tuple, output: Any) -> None:  # a family's experts module (its own attributes)
        experts = module.gate_up_proj.shape[0]
        hidden, rows = _routed_rows(args, experts, layout)
        hits = torch.tensor([len(r) for r in rows], device=hidden.device)
        stats.routed_tokens = hits if stats.routed_tokens is None else stats.routed_tokens + hits
        if all_experts:
            hidden = block_input[0] if layout.experts_call == "every_token" else hidden
            if gate_up_group is not None:
                stats.by_group[gate_up_group.name].add(0, hidden)
        for e in range(experts):
            x = hidden if all_experts else hidden[rows[e]]  # [n, H]
            if x.shape[0] == 0:
                continue
            if gate_up_group is not None and not all_experts:
                stats.by_group[gate_up_group.name].add(e, x)
            if down_group is not None:
                stats.by_group[down_group.name].add(e, down_input(module, layout, e, x))  # [n, I]

    return pre_hook, hook


def attach_statistics(
    layer: nn.Module, groups: list[WeightGroup], all_experts: bool, device: torch.device, abs_sums: bool = False
) -> tuple[LayerStats, list[RemovableHandle]]:
    """Register hooks that fill a :class:`LayerStats` for ``groups`` while the layer runs (with ``abs_sums``,
    also the sums of |x|)."""
    stats = LayerStats()
    handles: list[RemovableHandle] = []
    fused: dict[str, dict[str, WeightGroup]] = {}
    for group in groups:
        weight = group.get(layer)  # [B, out, in]
        batch, width = weight.shape[0], weight.shape[-1]
        shared = group.param == "gate_up_proj" and all_experts
        stats.by_group[group.name] = _zeros(1 if shared else batch, width, device, abs_sums)
        stats.by_group[group.name].shared = shared
        if group.fused:
            fused.setdefault(group.module, {})[group.param] = group
        else:
            handles.append(
                layer.get_submodule(group.module).register_forward_hook(_linear_hook(stats.by_group[group.name]))
            )
    for path, members in fused.items():
        layout = next(iter(members.values())).layout
        pre_hook, hook = _experts_hook(stats, members, all_experts, layout)
        handles.append(layer.get_submodule(path).register_forward_hook(hook))
        if all_experts and layout.experts_call == "every_token":
            handles.append(layer.get_submodule(layout.mlp).register_forward_pre_hook(pre_hook))
    return stats, handles
