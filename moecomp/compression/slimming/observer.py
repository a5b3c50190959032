"""How slimming plugs into the layer-streaming engine: one observer for all slimming stages of a pass.

Per decoder layer, for each stage in order: the engine runs the calibration batch through the layer with
this observer's hooks (:mod:`.statistics`), then :meth:`SlimmingObserver.transform` slims the layer's weight
groups on the device with the stage's method. After the last stage the engine runs the layer once more, so the
next layer sees the slimmed one (GPTQ's sequential mode), and :meth:`finish` writes the layer's tensors to
the output shards. One probe sequence per layer (input and slimmed output) is kept for the reload check.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from moecomp.compression.export import ShardWriter
from moecomp.compression.observers import LayerInfo, Observer
from moecomp.compression.slimming import awq, checkpoint
from moecomp.compression.slimming.groups import LINEARIZED, WeightGroup, group_size_for, layer_groups
from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.statistics import InputStats, LayerStats, attach_statistics

log = logging.getLogger(__name__)


@dataclass
class StageRecord:
    """What one stage did, over all layers (for its report)."""

    targets: dict[str, int] = field(default_factory=dict)  # scope -> matrices slimmed
    tokens_per_expert: dict[int, list[int]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    group_sizes: dict[str, int | None] = field(default_factory=dict)
    realized_sparsity: dict[str, float] = field(default_factory=dict)  # pruning: linear -> fraction of zeros
    smoothing: dict[str, list[float]] = field(default_factory=dict)  # AWQ pair -> [identity error, best error]
    seconds: float = 0.0


def router_tensors(layer: nn.Module, family: Any) -> dict[str, torch.Tensor]:
    """Copies of a layer's routing tensors: the router's (its submodules too: ERNIE's ``moe_statics``), other
    per-expert routing tensors (MiniMax-M2's correction bias on the MoE block) and shared-expert gates
    (single-linear shared paths)."""
    layout = family.layout
    paths = ((layout.router, True), *((f"{layout.mlp}.{p}", False) for p in family.shared_experts))
    tensors: dict[str, torch.Tensor] = {}
    for path, whole in paths:
        try:
            module = layer.get_submodule(path)
        except AttributeError:  # a dense layer, or a dropped MoE sub-layer
            continue
        if whole or not list(module.children()):
            tensors |= {f"{path}.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    state = layer.state_dict()
    return tensors | {path: state[path].detach().clone() for path, _ in layout.expert_indexed if path in state}


def linear_names(info: LayerInfo, group: WeightGroup) -> list[str]:
    """Linearized names of a group's linears, in batch order (expert ids in the original numbering)."""
    base = f"{info.family.layout.layers}.{info.index}.{group.module}"
    if not group.fused:
        return [base]
    return [f"{base}.{e}.{leaf}" for e in info.expert_ids for leaf in LINEARIZED[group.param]]


def sparsity_per_linear(weight: torch.Tensor, group: WeightGroup) -> list[float]:
    """Fraction of exact zeros of each linear of [B, out, in] (a fused gate_up is B gate and B up linears)."""
    batch, rows, cols = weight.shape
    linears = weight.reshape(batch * group.linears, rows // group.linears * cols)
    return (linears == 0).float().mean(dim=1).tolist()


def slim_linears(stage: Any, weight: torch.Tensor, parts: int, stats: InputStats | None, size, dtype) -> Slimmed:
    """Slim [B, out, in] as the linears it stands for: a fused gate_up [E, 2I, H] is E gate and E up matrices
    (magnitude and SparseGPT thresholds span one linear, as in llm-compressor; the statistics are the expert's)."""
    batch, rows, cols = weight.shape
    stats = replace(stats, repeat=parts) if stats is not None and parts > 1 else stats
    result = stage.slimmer()(stage, weight.reshape(batch * parts, rows // parts, cols), stats, size, dtype)
    scale = None if result.scale is None else result.scale.reshape(batch, rows, -1)
    fallbacks = sorted({b // parts for b in result.fallbacks})
    return Slimmed(result.weight.reshape(weight.shape), scale, result.args, fallbacks)


class SlimmingObserver(Observer):
    def __init__(
        self, stages: list[Any], writer: ShardWriter, new_index: dict[int, int], dtype: torch.dtype, sequences: int
    ) -> None:
        self.stages, self.writer, self.new_index, self.dtype = stages, writer, new_index, dtype
        self.sequences = sequences  # N of the calibration batch
        self.records = [StageRecord() for _ in stages]
        self.quantized: dict[str, tuple[WeightGroup, Slimmed]] = {}  # this layer's quantized groups
        self.stats: LayerStats | awq.AWQStats | None = None
        self.probes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # new layer index -> (input, output)
        self.linears: list[tuple] = []  # (linearized name, scope, width) of every quantized linear
        self.num_layers = len(new_index)
        self.routers: dict[str, torch.Tensor] = {}  # the current layer's router tensors before slimming
        self.routers_unchanged = True  # every layer's routers (and shared-expert gates) bit-identical after it
        self._next_stage = 0  # the stage the next calibration run of the current layer is for

    def runs(self, info: LayerInfo) -> int:
        return len(self.stages)

    def needs_data(self, info: LayerInfo, run: int) -> bool:
        return self.stages[run].uses_data

    def host_bytes(self, activation_bytes: int) -> int:
        """One output shard being filled, and each layer's probe (one sequence in, one out) for the reload check."""
        return self.writer.max_bytes + 2 * self.num_layers * activation_bytes // self.sequences

    def attach(self, info: LayerInfo, layer: nn.Module) -> list[RemovableHandle]:
        stage = self.stages[self._next_stage]
        if not stage.uses_data:
            self.stats = None
            return []
        device = next(layer.parameters()).device
        if stage.smooths:
            self.stats, handles = awq.attach(layer, info.family, stage, info.is_moe, device)
            return handles
        groups = layer_groups(layer, info.family, stage.scope)
        all_experts = bool(getattr(stage, "calibrate_all_experts", False))
        self.stats, handles = attach_statistics(layer, groups, all_experts, device)
        return handles

    def transform(self, info: LayerInfo, layer: nn.Module, run: int) -> bool:
        stage, record = self.stages[run], self.records[run]
        if run == 0:
            self.routers = router_tensors(layer, info.family)
        started = time.perf_counter()
        groups = layer_groups(layer, info.family, stage.scope)
        widths = {g.name: g.in_features(layer) for g in groups}
        sizes = {g.name: group_size_for(stage, g, widths) if stage.quantizes else None for g in groups}
        if stage.smooths:
            assert isinstance(self.stats, awq.AWQStats)  # attach() gathered AWQ's statistics for this stage
            errors = awq.smooth(layer, info.family, stage, info.is_moe, self.stats, sizes, self.dtype)
            for name, (initial, best) in errors.items():
                total = record.smoothing.setdefault(name, [0.0, 0.0])
                total[0], total[1] = total[0] + initial, total[1] + best
        for group in groups:
            weight = group.get(layer)
            stats = self.stats.by_group.get(group.name) if self.stats is not None else None
            size = sizes[group.name]
            result = slim_linears(stage, weight, group.linears, stats, size, self.dtype)
            group.set(layer, result.weight)
            self._record(record, info, group, result, size)
            if result.scale is not None:
                self.quantized[group.name] = (group, result)
        if self.stats is not None and self.stats.routed_tokens is not None:
            record.tokens_per_expert[info.index] = self.stats.routed_tokens.tolist()
        self.stats = None
        record.seconds += time.perf_counter() - started
        self._next_stage = (run + 1) % len(self.stages)
        self._progress(info, stage.method, groups)
        return True

    def _record(self, record: StageRecord, info: LayerInfo, group: WeightGroup, result: Slimmed, size) -> None:
        record.targets[group.scope] = record.targets.get(group.scope, 0) + result.weight.shape[0] * group.linears
        for b in result.fallbacks:
            expert = f".{info.expert_ids[b] if group.fused and info.expert_ids else b}" if group.fused else ""
            record.fallbacks.append(f"layers.{info.index}.{group.module}{expert}.{group.param}")
        if result.scale is not None:
            key = "routed_experts" if group.scope == "routed_experts" else f"in_{result.weight.shape[-1]}"
            record.group_sizes[key] = size
        else:  # pruned: the fraction of zeros of each linear, named as llm-compressor names them
            for name, zeros in zip(linear_names(info, group), sparsity_per_linear(result.weight, group), strict=True):
                record.realized_sparsity[name] = zeros

    def _progress(self, info: LayerInfo, method: str, groups: list[WeightGroup]) -> None:
        done = sorted(self.new_index).index(info.index) + 1 if info.index in self.new_index else 0
        # One line per layer and stage; the engine reports the pass's progress (one bar, one event per layer).
        log.info("%s: layer %d (%d of %d), %d weight groups", method, info.index, done, self.num_layers, len(groups))

    def propagated(self, info: LayerInfo, start: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        if start == 0:  # the first sequence: the reload check runs it through the layer read back from disk
            probe = (h_in[:1].detach().cpu().clone(), h_out[:1].detach().cpu().clone())
            self.probes[self.new_index[info.index]] = probe

    def finish(self, info: LayerInfo, layer: nn.Module) -> None:
        after = router_tensors(layer, info.family)
        same = after.keys() == self.routers.keys() and all(torch.equal(after[k], self.routers[k]) for k in after)
        self.routers_unchanged = self.routers_unchanged and same
        new = self.new_index[info.index]
        prefix = f"{info.family.layout.layers}.{new}."
        tensors = checkpoint.layer_tensors(layer.state_dict(), prefix, self.quantized, info.family)
        checkpoint.write_layer(self.writer, tensors, self.dtype)
        widths = [(g, r.weight.shape[-1]) for g, r in self.quantized.values()]
        self.linears += checkpoint.linearized_names(new, widths, info.family)
        self.quantized = {}
