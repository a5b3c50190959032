"""What a job asks the evaluation to measure, and the quality gate it must pass."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QualityGate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_accuracy_pct: float | None = Field(None, ge=0, le=1000, description="Minimum % of the original's mean accuracy.")
    max_perplexity_increase_pct: float | None = Field(None, ge=0, description="Maximum perplexity rise, % of original.")
    min_top1_agreement: float | None = Field(None, ge=0, le=1, description="Minimum top-1 agreement with the original.")


class EvaluationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    perplexity: list[str] = Field(
        default_factory=lambda: ["bundled:heldout"], max_length=8, description="Held-out text sources."
    )
    seq_len: int = Field(256, ge=8, le=32768)
    max_tokens: int = Field(65536, ge=8, le=4_000_000, description="Tokens of held-out text used at most.")
    tasks: list[str] = Field(default_factory=list, max_length=32, description="lm-eval task names.")
    fidelity: bool = True
    speed: bool = False
    gate: QualityGate = Field(default_factory=QualityGate)
