"""A stage defined outside the library, as a plugin would define one: this module plus one registration row
(``registered_stage(DropListedExpertsConfig)``, in the tests that use it).

``drop_listed_experts`` drops the same listed routed experts from every MoE layer: a real trimming stage, without
scores, so that its effect on a model is known in advance.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from moecomp.compression.methods.base import MAX_EXPERTS, ModelShape, ShapeError, StageConfig
from moecomp.compression.observers import Observer, SelectContext, Trimmer
from moecomp.compression.structure import Decisions

METHOD = "drop_listed_experts"


class DropListedExpertsConfig(StageConfig):
    family: ClassVar[str] = "trimming"
    method: Literal["drop_listed_experts"] = "drop_listed_experts"
    experts: list[Annotated[int, Field(ge=0, lt=MAX_EXPERTS)]] = Field(
        [0], min_length=1, max_length=16, description="Original ids of the routed experts to drop in every MoE layer."
    )

    def check(self, shape: ModelShape) -> None:
        if max(self.experts) >= shape.experts:
            raise ShapeError("experts", self.experts, f"expert ids must be below the experts ({shape.experts})")
        shape.experts -= len(set(self.experts))

    def trimmer(self) -> Trimmer:
        return TRIMMER


def select(observer: Observer, config: DropListedExpertsConfig, sctx: SelectContext, round_: int = 0) -> Decisions:
    """Every MoE layer left by earlier stages keeps its experts but the listed ones (original numbering)."""
    gone = set(sctx.prior.dropped_layers) | set(sctx.prior.dropped_blocks)
    every = range(sctx.family.num_experts(sctx.config))
    kept = {
        layer: [e for e in sctx.prior.kept_experts.get(layer, every) if e not in config.experts]
        for layer in sctx.family.moe_layers(sctx.config)
        if layer not in gone
    }
    return Decisions(kept_experts=kept)


def report(observer: Observer, sctx: SelectContext) -> dict[str, Any]:
    return {}


TRIMMER = Trimmer(rounds=lambda config: 1, observer=lambda config, sctx: Observer(), select=select, report=report)
