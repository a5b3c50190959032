"""Input statistics of a decoder layer's slimmed weights, gathered while the calibration batch runs through it.

For every :class:`WeightGroup` and every batch entry b (an expert, or the one linear), in float32:

    S_b = sum over the inputs x that reached b of x x^T     [in, in]      n_b = how many inputs did
    A_b = sum over those inputs of |x|                      [in]          (AWQ's mean |x| = A_b / n_b)

GPTQ and SparseGPT use H_b = 2 S_b / n_b (llm-compressor's normalisation up to a constant, which neither
algorithm sees: its dampening is relative to mean(diag H)); Wanda uses ||X_j||^2 = diag(S_b).

Routed experts are observed on the fused experts module (one forward hook, hidden states [T, H], top-k
indices [T, k]): expert e's ``gate_up_proj`` input is the tokens routed to e, its ``down_proj`` input is
act(x W_gate^T) * (x W_up^T) over those tokens. With ``all_experts`` (llm-compressor's
``moe_calibrate_all_experts``) every expert sees every token, so ``gate_up_proj`` shares one S for all
experts; the layer's output still follows the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from moecomp.compression.slimming.groups import WeightGroup


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


def _experts_hook(stats: LayerStats, groups: dict[str, WeightGroup], all_experts: bool):
    gate_up_group, down_group = groups.get("gate_up_proj"), groups.get("down_proj")

    def hook(module: Any, args: tuple, output: Any) -> None:  # a family's experts module (its own attributes)
        hidden, top_k_index = args[0], args[1]  # every family calls experts(hidden [T, H], top_k_index [T, k], ...)
        experts = module.gate_up_proj.shape[0]
        hits = torch.bincount(top_k_index.reshape(-1), minlength=experts)[:experts]
        stats.routed_tokens = hits if stats.routed_tokens is None else stats.routed_tokens + hits
        if gate_up_group is not None and all_experts:
            stats.by_group[gate_up_group.name].add(0, hidden)
        for e in range(experts):
            rows = None if all_experts else (top_k_index == e).any(dim=-1).nonzero().squeeze(-1)
            x = hidden if rows is None else hidden[rows]  # [n, H]
            if x.shape[0] == 0:
                continue
            if gate_up_group is not None and not all_experts:
                stats.by_group[gate_up_group.name].add(e, x)
            if down_group is not None:
                gate, up = nn.functional.linear(x, module.gate_up_proj[e]).chunk(2, dim=-1)
                stats.by_group[down_group.name].add(e, module.act_fn(gate) * up)  # [n, I]

    return hook


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
        hook = _experts_hook(stats, members, all_experts)
        handles.append(layer.get_submodule(path).register_forward_hook(hook))
    return stats, handles
