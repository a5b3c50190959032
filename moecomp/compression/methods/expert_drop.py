"""Expert Drop (He et al. 2024, arXiv 2406.02500, Sec. 3.2).

score[l, e] = mean over calibration tokens t of softmax(router_l(x_t))[e]   (over all experts, not top-k)
Keep the ``keep`` best experts of each MoE layer (layerwise), or the ``keep * n_moe_layers`` best
across the model (global; per-layer counts may differ). Shared experts are never dropped.

The affinity follows what each family's router normalises (``MoEFamily.routing``):

- "softmax" (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2, ERNIE 4.5): softmax over all experts, as above. The
  gate weights are these probabilities of the selected experts (renormalised over them or not, times
  DeepSeek-V2's ``routed_scaling_factor``); ERNIE's correction bias is added to them for selection only.
- "sigmoid" (DeepSeek-V3, GLM-4.x MoE, MiniMax-M2): score[l, e] = mean over t of sigmoid(router_l(x_t))[e].
  The router gives every expert an independent affinity s_e = sigmoid(w_e . x); the gate weights are
  these affinities renormalised over the selected experts (times ``routed_scaling_factor``), so s_e is
  the quantity the router itself ranks and normalises. A softmax over the logits would be a
  distribution the model never computes. (The correction bias only steers selection for load balance
  and is not part of the gate weight.)

- "top1_sigmoid" (Llama 4): score[l, e] = mean over t of sigmoid(router_l(x_t))[e], as for "sigmoid", but
  the router does not normalise at all: the chosen expert's (top-1; top-k alike) gate weight is its own
  sigmoid(w_e . x), which scales the expert's input, and the other experts get sigmoid(-inf) = 0. So s_e is
  exactly the weight the model would give expert e were it chosen; the router's first output (the scattered
  top-k scores) is not the affinity, its second (``ModuleLayout.router_logits_output``) is the logits.

tests/compression/test_adapters.py checks each family's kind against its stock router (the gate weights are
the kind's affinities of the chosen experts up to one factor per token).

Global rule: every MoE layer first keeps its ``top_k`` best experts (a layer with fewer experts than
the router picks could not route); the rest of the budget ``keep * n_moe_layers - top_k * n_moe_layers``
goes to the best remaining experts of the whole model (ties: lower layer, then lower expert id).
Iterative (layerwise only): each layer is scored and trimmed in the same pass before the next layer is
scored, so later layers' scores see the earlier layers already trimmed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.utils.hooks import RemovableHandle

from moecomp.compression.methods.base import MAX_EXPERTS, ModelShape, ShapeError, StageConfig
from moecomp.compression.observers import LayerInfo, Observer, SelectContext, Trimmer
from moecomp.compression.structure import Decisions

if TYPE_CHECKING:
    from moecomp.compression.sizes import Sizes


class ExpertDropConfig(StageConfig):
    family: ClassVar[str] = "trimming"
    method: Literal["expert_drop"] = "expert_drop"
    mode: Literal["layerwise", "global"] = "layerwise"
    keep: int = Field(6, ge=1, le=MAX_EXPERTS, description="Experts kept per MoE layer (global: on average).")
    iterative: bool = Field(False, description="Re-score after each layer's drop instead of one pass.")

    @model_validator(mode="after")
    def _iterative_is_layerwise(self) -> ExpertDropConfig:
        if self.iterative and self.mode == "global":
            raise ValueError("expert_drop.iterative needs mode 'layerwise' (a global budget needs every score first)")
        return self

    def check(self, shape: ModelShape) -> None:
        if not shape.top_k <= self.keep < shape.experts:
            message = (
                f"keep={self.keep} must be at least the router's top-k ({shape.top_k}) "
                f"and below the experts per MoE layer ({shape.experts})"
            )
            raise ShapeError("keep", self.keep, message)
        shape.experts = self.keep

    def trimmer(self) -> Trimmer:
        return TRIMMER

    def resized(self, sizes: Sizes) -> Sizes:
        return sizes.with_experts(self.keep)  # global mode: the same on average


def score(logits: torch.Tensor, routing: str) -> torch.Tensor:
    """Sum over tokens of the router affinity: [T, E] logits -> [E] (float32)."""
    logits = logits.float()
    probs = logits.softmax(dim=-1) if routing == "softmax" else logits.sigmoid()  # [T, E]; both sigmoid kinds
    return probs.sum(dim=0)


class ExpertScores(Observer):
    """Accumulates ``score`` per MoE layer from the router's logits (its first output)."""

    def __init__(self, config: ExpertDropConfig, sctx: SelectContext) -> None:
        self.config, self.sctx = config, sctx
        self.sums: dict[int, torch.Tensor] = {}
        self.tokens: dict[int, int] = {}
        self.ids: dict[int, tuple[int, ...]] = {}

    def attach(self, info: LayerInfo, layer: nn.Module) -> list[RemovableHandle]:
        if not info.is_moe:
            return []
        self.ids[info.index] = info.expert_ids
        router = layer.get_submodule(info.family.layout.router)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            logits = output[info.family.layout.router_logits_output] if isinstance(output, tuple) else output
            logits = logits.reshape(-1, logits.shape[-1])  # [T, E]
            total = score(logits, info.family.routing).double()
            self.sums[info.index] = self.sums.get(info.index, 0) + total
            self.tokens[info.index] = self.tokens.get(info.index, 0) + logits.shape[0]

        return [router.register_forward_hook(hook)]

    def scores(self) -> dict[int, dict[int, float]]:
        """Layer -> original expert id -> mean affinity."""
        return {
            layer: dict(zip(self.ids[layer], (self.sums[layer] / self.tokens[layer]).tolist(), strict=True))
            for layer in sorted(self.sums)
        }

    def decide(self, info: LayerInfo) -> list[int] | None:
        if not (self.config.iterative and info.is_moe):
            return None
        layer_scores = {info.index: self.scores()[info.index]}
        return select_scores(layer_scores, self.config, self.sctx).kept_experts.get(info.index)


def _ranked(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda e: (-scores[e], e))


def validate(scores: dict[int, dict[int, float]], config: ExpertDropConfig, sctx: SelectContext) -> None:
    top_k = sctx.family.top_k(sctx.config)
    if config.keep < top_k:
        raise ValueError(f"expert_drop.keep={config.keep} is below the router's top-k ({top_k})")
    fewest = min((len(s) for s in scores.values()), default=0)
    if config.keep >= fewest:
        raise ValueError(f"expert_drop.keep={config.keep} must be below the experts per MoE layer ({fewest})")


def select_scores(scores: dict[int, dict[int, float]], config: ExpertDropConfig, sctx: SelectContext) -> Decisions:
    """Kept experts per layer (original ids), by the layerwise or the global rule."""
    validate(scores, config, sctx)
    if config.mode == "layerwise":
        kept = {layer: _ranked(s)[: config.keep] for layer, s in scores.items()}
    else:
        kept = _select_global(scores, config.keep, sctx.family.top_k(sctx.config))
    changed = {layer: ids for layer, ids in kept.items() if len(ids) < len(scores[layer])}
    return Decisions(kept_experts=changed)


def _select_global(scores: dict[int, dict[int, float]], keep: int, top_k: int) -> dict[int, list[int]]:
    kept = {layer: _ranked(s)[:top_k] for layer, s in scores.items()}
    rest = [(-s[e], layer, e) for layer, s in scores.items() for e in _ranked(s)[top_k:]]
    budget = keep * len(scores) - top_k * len(scores)
    for _, layer, e in sorted(rest)[:budget]:
        kept[layer].append(e)
    return kept


def select(observer: ExpertScores, config: ExpertDropConfig, sctx: SelectContext, round_: int = 0) -> Decisions:
    if config.iterative:  # decided in-pass; validate what the pass saw
        validate(observer.scores(), config, sctx)
        return Decisions()
    return select_scores(observer.scores(), config, sctx)


def report(observer: ExpertScores, sctx: SelectContext) -> dict[str, Any]:
    """{"scores": {layer: [mean affinity per ORIGINAL expert, null where already dropped]}, "affinity": kind}."""
    n = sctx.family.num_experts(sctx.config)
    scores = {str(layer): [s.get(e) for e in range(n)] for layer, s in observer.scores().items()}
    return {"scores": scores, "affinity": sctx.family.routing}  # softmax or sigmoid of the router logits


TRIMMER = Trimmer(rounds=lambda config: 1, observer=ExpertScores, select=select, report=report)
