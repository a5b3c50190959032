"""What a job asks the evaluation to measure, and the quality gate it must pass.

Stored as JSON on the job by the API: field names are part of the contract. New fields always carry
defaults so that specs stored before they existed stay valid.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The fidelity reference holds fidelity_topk log-probabilities and token ids per compared token (12 bytes each):
# 2**29 entries is about 6 GiB, enough for the full vocabulary of a 32k-token model at the default 16,384 tokens.
MAX_FIDELITY_ENTRIES = 2**29
# Decoding at batch B keeps a KV cache of B x (prompt + new tokens) positions.
MAX_DECODE_POSITIONS = 2**20
TextSource = Annotated[str, Field(min_length=1, max_length=1000)]
TaskName = Annotated[str, Field(min_length=1, max_length=200)]
BatchSize = Annotated[int, Field(ge=1, le=256)]


class QualityGate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_accuracy_pct: float | None = Field(
        None, ge=0, le=1000, description="Minimum % of the original's mean accuracy."
    )
    max_perplexity_increase_pct: float | None = Field(
        None, ge=0, le=1e6, description="Maximum perplexity rise, % of original."
    )
    min_top1_agreement: float | None = Field(None, ge=0, le=1, description="Minimum top-1 agreement with the original.")


class SpeedSpec(BaseModel):
    """How throughput is measured (the study: prefill at 2048 tokens, decode at batch 1), in which runtimes."""

    model_config = ConfigDict(extra="forbid")

    prefill_tokens: int = Field(2048, ge=8, le=32768, description="Prompt length of the prefill measurement.")
    decode_tokens: int = Field(64, ge=2, le=4096, description="New tokens generated per decode measurement.")
    decode_batch_sizes: list[BatchSize] = Field(default_factory=lambda: [1], min_length=1, max_length=8)
    decode_prompt_tokens: int = Field(128, ge=1, le=32768, description="Prompt length before decoding starts.")
    warmup: int = Field(1, ge=0, le=10, description="Untimed runs before each measurement.")
    repeats: int = Field(3, ge=1, le=20, description="Timed runs; the median is reported.")
    served: bool = Field(
        True,
        description="Also measure the 'served' runtime (static KV cache, decode step in a CUDA graph, fused experts)"
        " next to the study's 'eager' one.",
    )
    reuse_cached_baseline: bool = Field(
        False, description="Take the original's speed from the cache instead of measuring it in this run."
    )

    @model_validator(mode="after")
    def _kv_cache_bounded(self) -> SpeedSpec:
        positions = max(self.decode_batch_sizes) * (self.decode_prompt_tokens + self.decode_tokens)
        if positions > MAX_DECODE_POSITIONS:
            raise ValueError(
                f"largest decode batch x (decode_prompt_tokens + decode_tokens) = {positions} KV-cache positions; "
                f"at most {MAX_DECODE_POSITIONS}"
            )
        return self


class EvaluationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    perplexity: list[TextSource] = Field(
        default_factory=lambda: ["bundled:heldout"], max_length=8, description="Held-out text sources."
    )
    seq_len: int = Field(256, ge=8, le=32768)
    max_tokens: int = Field(65536, ge=8, le=4_000_000, description="Tokens of held-out text used at most.")
    tasks: list[TaskName] = Field(default_factory=list, max_length=32, description="lm-eval task names.")
    task_limit: int | None = Field(None, ge=1, le=100_000, description="Examples per task at most (None: all).")
    task_batch_size: int = Field(8, ge=1, le=512)
    fidelity: bool = True
    fidelity_tokens: int = Field(16384, ge=8, le=1_000_000, description="Held-out tokens compared with the original.")
    fidelity_topk: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Original's most likely tokens kept per position for the KL (see fidelity).",
    )
    speed: bool = False
    speed_settings: SpeedSpec = Field(default_factory=SpeedSpec)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto: the checkpoint's.")
    gate: QualityGate = Field(default_factory=QualityGate)

    @model_validator(mode="after")
    def _fidelity_bounded(self) -> EvaluationSpec:
        entries = self.fidelity_tokens * self.fidelity_topk
        if self.fidelity and entries > MAX_FIDELITY_ENTRIES:
            raise ValueError(
                f"fidelity_tokens x fidelity_topk = {entries} reference entries; at most {MAX_FIDELITY_ENTRIES} "
                "(the original's top-k log-probabilities are held for every compared token)"
            )
        return self
