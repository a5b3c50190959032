"""The recipe: a validated, ordered, versioned list of stages plus calibration settings.

One schema serves the CLI (JSON or YAML files) and the API (request bodies). Defaults follow the
study (He et al. 2024, arXiv 2406.02500): calibration on 128 sequences of 2048 tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moecomp.compression.methods.registry import Stage

# Bounded so that no request can ask for unbounded memory or disk: the engine keeps every calibration token's
# hidden state of a layer (samples x seq_len x hidden), so the product is capped too (4x the study's 128 x 2048).
MAX_SAMPLES = 4096
MAX_SEQ_LEN = 32768
MAX_CALIBRATION_TOKENS = 2**20
MAX_SOURCES = 16
SourceName = Annotated[str, Field(min_length=1, max_length=1000)]


class CalibrationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceName] = Field(
        default_factory=lambda: ["bundled:shakespeare", "bundled:kjv", "bundled:fortunes", "bundled:python"],
        min_length=1,
        max_length=MAX_SOURCES,
        description="Text sources: 'bundled:NAME', a local .txt/.jsonl(.gz) path, or 'hub:DATASET[:CONFIG]:SPLIT'.",
    )
    samples: int = Field(128, ge=1, le=MAX_SAMPLES, description="Number of packed sequences.")
    seq_len: int = Field(2048, ge=8, le=MAX_SEQ_LEN, description="Tokens per packed sequence.")
    seed: int | None = Field(None, description="Shuffle the packed blocks with this seed; none keeps file order.")

    @model_validator(mode="after")
    def _tokens_bounded(self) -> CalibrationSpec:
        if self.samples * self.seq_len > MAX_CALIBRATION_TOKENS:
            raise ValueError(
                f"samples x seq_len = {self.samples * self.seq_len} calibration tokens; at most "
                f"{MAX_CALIBRATION_TOKENS} (each layer's hidden states for all of them are held at once)"
            )
        return self


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    stages: list[Stage] = Field(default_factory=list, max_length=32)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)

    @field_validator("stages")
    @classmethod
    def _stages_compose(cls, stages: list[Any]) -> list[Any]:
        """Refuse, before any work, what the engine cannot run: slimming a quantized checkpoint again."""
        quantized = None
        for i, stage in enumerate(stages):
            if stage.family != "slimming":
                continue
            if quantized is not None:
                raise ValueError(
                    f"stage {i} ({stage.method}) comes after the quantization stage {quantized} "
                    f"({stages[quantized].method}): a quantized checkpoint is not slimmed again; quantize last"
                )
            if stage.quantizes:
                quantized = i
        return stages


def load_recipe(path: Path) -> Recipe:
    """Read a recipe from a .json, .yaml or .yml file."""
    data: Any = yaml.safe_load(path.read_text())  # JSON is a subset of YAML
    return Recipe.model_validate(data)
