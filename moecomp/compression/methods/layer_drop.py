"""Layer Drop (He et al. 2024, arXiv 2406.02500, Sec. 3.2).

sim[l] = mean over tokens t of cos(x_t, x_t + MoE_l(Norm_l(x_t)))   (metric "residual")
sim[l] = mean over tokens t of cos(Norm_l(x_t), MoE_l(Norm_l(x_t)))  (metric "moe_only")
x = the residual stream entering layer l's post-attention norm. The ``drop`` most similar MoE
sub-layers (norm and MoE) are removed; the layer then computes exactly h + Attention(...).
Dense layers are never candidates. Both metrics are computed in every pass; ties go to the lower index.
Iterative: ``drop`` passes, each removing the single most similar sub-layer of the model so far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.hooks import RemovableHandle

from moecomp.compression.methods.base import MAX_BLOCKS, ModelShape, ShapeError, StageConfig
from moecomp.compression.observers import LayerInfo, Observer, SelectContext, Trimmer
from moecomp.compression.structure import Decisions

if TYPE_CHECKING:
    from moecomp.compression.sizes import Sizes

METRICS = ("residual", "moe_only")


class LayerDropConfig(StageConfig):
    family: ClassVar[str] = "trimming"
    method: Literal["layer_drop"] = "layer_drop"
    drop: int = Field(8, ge=1, le=MAX_BLOCKS, description="Number of MoE sub-layers to remove.")
    metric: Literal["residual", "moe_only"] = "residual"
    iterative: bool = Field(False, description="Re-score after each drop instead of one pass.")

    def check(self, shape: ModelShape) -> None:
        if self.drop >= shape.moe_layers:
            raise ShapeError("drop", self.drop, f"drop={self.drop} must be below the MoE layers ({shape.moe_layers})")
        shape.moe_layers -= self.drop

    def trimmer(self) -> Trimmer:
        return TRIMMER

    def resized(self, sizes: Sizes) -> Sizes:
        return sizes.without_moe(self.drop)  # the smallest: the estimate stays an upper bound


def score(x: torch.Tensor, normed: torch.Tensor, moe_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over tokens of both cosines; x, normed, moe_out: [..., H] -> scalars (float32)."""
    x32, y32 = x.float(), moe_out.float()
    return {
        "residual": F.cosine_similarity(x32, x32 + y32, dim=-1).sum(),
        "moe_only": F.cosine_similarity(normed.float(), y32, dim=-1).sum(),
    }


class LayerSimilarity(Observer):
    """Hooks the post-attention norm (its input x and output) and the MoE (its output) of MoE layers."""

    def __init__(self, config: LayerDropConfig, sctx: SelectContext) -> None:
        self.config = config
        self.sums: dict[str, dict[int, torch.Tensor]] = {m: {} for m in METRICS}  # device scalars: no sync
        self.tokens: dict[int, int] = {}

    def attach(self, info: LayerInfo, layer: nn.Module) -> list[RemovableHandle]:
        if not info.is_moe:
            return []
        layout = info.family.layout
        seen: dict[str, torch.Tensor] = {}

        def on_norm(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            seen["x"], seen["normed"] = args[0], output

        def on_moe(module: nn.Module, args: Any, output: Any) -> None:
            y = output[0] if isinstance(output, tuple) else output
            y = y.reshape(seen["x"].shape)  # Llama 4's MoE returns its tokens flattened, [T, H]
            for metric, value in score(seen["x"], seen["normed"], y).items():
                self.sums[metric][info.index] = self.sums[metric].get(info.index, 0.0) + value.double()
            self.tokens[info.index] = self.tokens.get(info.index, 0) + y.shape[:-1].numel()

        return [
            layer.get_submodule(layout.post_attention_norm).register_forward_hook(on_norm),
            layer.get_submodule(layout.mlp).register_forward_hook(on_moe),
        ]

    def similarity(self, metric: str) -> dict[int, float]:
        return {i: float(self.sums[metric][i]) / self.tokens[i] for i in sorted(self.tokens)}


def select_similarity(similarity: dict[int, float], drop: int) -> list[int]:
    """The ``drop`` most similar candidates (ties: lower index)."""
    return sorted(sorted(similarity, key=lambda i: (-similarity[i], i))[:drop])


def select(observer: LayerSimilarity, config: LayerDropConfig, sctx: SelectContext, round_: int = 0) -> Decisions:
    """One-shot: the ``drop`` most similar; iterative round r: the single most similar of what is left."""
    similarity = observer.similarity(config.metric)
    candidates = len(similarity) + round_  # sub-layers dropped in earlier rounds were candidates too
    if config.drop >= candidates:
        raise ValueError(
            f"layer_drop.drop={config.drop} must be below the number of candidate MoE layers ({candidates})"
        )
    return Decisions(dropped_layers=select_similarity(similarity, 1 if config.iterative else config.drop))


def report(observer: LayerSimilarity, sctx: SelectContext) -> dict[str, Any]:
    both = {m: {str(i): v for i, v in observer.similarity(m).items()} for m in METRICS}
    return {"similarity": both[observer.config.metric], "similarity_by_metric": both}


def rounds(config: LayerDropConfig) -> int:
    return config.drop if config.iterative else 1


TRIMMER = Trimmer(rounds=rounds, observer=LayerSimilarity, select=select, report=report)
