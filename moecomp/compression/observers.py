"""How methods plug into the calibration engine: the per-layer observer hooks and the trimmer record.

Kept apart from :mod:`moecomp.compression.engine` so that method modules (imported by the recipe,
hence by the API) need torch but not transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from moecomp.compression.adapters.family import MoEFamily
from moecomp.compression.structure import Decisions


@dataclass(frozen=True)
class LayerInfo:
    """What an observer knows about the layer being calibrated."""

    index: int  # original layer index
    position: int  # position among the blocks still present (block drop windows)
    is_moe: bool  # has routed experts now (not dense, not a dropped MoE sub-layer)
    expert_ids: tuple[int, ...]  # original ids of the router's current columns ( () when not MoE)
    family: MoEFamily
    num_sequences: int  # N of the calibration batch


class Observer:
    """Base of the per-method hooks the engine calls; every method is a no-op by default."""

    def attach(self, info: LayerInfo, layer: nn.Module) -> list[RemovableHandle]:
        """Register forward hooks on the loaded layer; the engine removes them after the layer."""
        return []

    def observe(self, info: LayerInfo, start: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        """One micro-batch (sequences ``start ..``) went through the layer: input and output states."""

    def decide(self, info: LayerInfo) -> list[int] | None:
        """In-pass decision: original expert ids to keep in this layer, or None to leave it."""
        return None

    def runs(self, info: LayerInfo) -> int:
        """Calibration runs of the layer this observer needs: one by default, one per stage for slimming."""
        return 1

    def needs_data(self, info: LayerInfo, run: int) -> bool:
        """Whether calibration run ``run`` must pass the batch through the layer (a data-free stage needs none)."""
        return True

    def transform(self, info: LayerInfo, layer: nn.Module, run: int) -> bool:
        """After calibration run ``run`` of the layer: change its weights in place; True when it did."""
        return False

    def propagated(self, info: LayerInfo, start: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        """One micro-batch went through the layer as transformed (what the next layer receives)."""

    def finish(self, info: LayerInfo, layer: nn.Module) -> None:
        """The layer is final (its outputs are computed); called before its weights are freed."""

    def host_bytes(self, activation_bytes: int) -> int:
        """Host memory the observer holds at once, given the bytes of one [N, L, H] activation buffer."""
        return 0


@dataclass(frozen=True)
class SelectContext:
    """What a method's ``select`` may consult besides its scores."""

    family: MoEFamily
    config: Any  # the original model's PretrainedConfig
    prior: Decisions  # decisions of earlier stages / rounds (original numbering)


@dataclass(frozen=True)
class Trimmer:
    """How a trimming method plugs into the engine: one per method module, returned by its config's ``trimmer()``.

    rounds:  how many passes a config needs (1, or ``drop`` when layer/block drop is iterative)
    observer: a fresh observer for one pass
    select:  (observer, config, context, round) -> that pass's decisions, in original numbering
    report:  the pass's scores as JSON (original numbering)
    """

    rounds: Any  # Callable[[StageConfig], int]
    observer: Any  # Callable[[StageConfig, SelectContext], Observer]
    select: Any  # Callable[[Observer, StageConfig, SelectContext], Decisions]
    report: Any  # Callable[[Observer, SelectContext], dict]
