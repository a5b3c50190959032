"""The report's schema, "moecomp.report/1": what report.json holds (``Report.model_json_schema()``).

Units: perplexity is exp(mean next-token NLL in nats); accuracies are fractions in [0, 1];
throughput is tokens per second; memory in GiB (2**30 bytes); sizes in bytes; KL in nats.
``relative`` gives every numeric figure of the candidate as % of the original's, keyed by its dotted
path in ``ModelResult`` (e.g. "perplexity.bundled:heldout.ppl", "tasks.moecomp_next_verse.acc",
"speed.prefill_tok_s", "speed.served.decode_tok_s", "footprint.disk_bytes"). Speed figures at the top of
``speed`` are the eager runtime's, those under ``speed.served`` the served runtime's; ``speedup`` gives the
throughput ratios both ways. A version bump means a field changed meaning or went away; new optional fields
do not bump it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "moecomp.report/1"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PerplexityResult(_Open):
    ppl: float
    nll: float = Field(description="Mean next-token negative log-likelihood, nats.")
    tokens: int = Field(description="Predicted tokens (windows * (seq_len - 1)).")
    windows: int


class TaskResult(_Open):
    acc: float
    acc_stderr: float | None = None
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    n: int
    local: bool = Field(description="A task shipped with moecomp (offline) rather than an lm-eval registry task.")


class RuntimeSpeed(_Open):
    runtime: Literal["eager", "served"] = Field(
        "eager",
        description="eager: transformers as loaded, the study's baseline (DynamicCache, one Python-dispatched forward"
        " per token); served: static KV cache, decode step compiled into a CUDA graph, fused experts (served.py).",
    )
    prefill_tokens: int
    prefill_tok_s: float
    decode_tok_s: float = Field(description="Decode throughput at the first configured batch size (1 by default).")
    decode: dict[str, dict[str, float | int]] = Field(description="Per batch size: tok_s, prompt_tokens.")
    peak_memory_gib: float | None = Field(description="Peak allocated CUDA memory; None on CPU (see rss_gib).")
    rss_gib: float | None = None
    memory_measure: str
    experts_implementation: str | None = Field(
        None, description="Served: the experts kernel (grouped_mm, batched_mm, w4a16 for packed int4 experts)."
    )
    compiled: bool | None = Field(None, description="Served: whether the decode step ran as a captured CUDA graph.")
    cache: str | None = Field(
        None, description="Served: 'static', or 'dynamic' where a static cache changes the family's logits."
    )


class SpeedResult(RuntimeSpeed):
    """The eager figures (the keys reports have always had) and, when measured, the served ones."""

    served: RuntimeSpeed | None = Field(None, description="The same figures in the served runtime.")


class Footprint(_Open):
    disk_bytes: int
    params_total: int
    params_active: int = Field(description="Parameters one token runs through (top-k of the routed experts).")
    flops_per_token: int = Field(
        description="2 * (active - embedding lookup) + 4 * attn_layers * C * heads * head_dim."
    )
    flops_context: int = Field(description="The context length C of flops_per_token.")


class ModelResult(_Open):
    path: str
    identity: dict[str, Any]
    runtime: str | None = Field(None, description="E.g. 'transformers 5.17.0 sdpa, cpu, bfloat16'.")
    perplexity: dict[str, PerplexityResult] = Field(default_factory=dict, description="Keyed by text source.")
    tasks: dict[str, TaskResult] = Field(default_factory=dict)
    mean_accuracy: float | None = None
    speed: SpeedResult | None = None
    footprint: Footprint | None = None
    cached: list[str] = Field(default_factory=list, description="Measurements taken from the cache.")


class Fidelity(_Open):
    kl_mean: float = Field(description="Mean KL(original || candidate) over positions, nats (top-k bucketed).")
    top1_agreement: float
    tokens: int
    topk: int
    exact: bool = Field(description="True when topk covers the vocabulary, i.e. kl_mean is the full KL.")
    source: str


class GateResult(BaseModel):
    passed: bool
    failures: list[str]


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: Literal["moecomp.report/1"] = Field("moecomp.report/1", alias="schema")
    created_at: str
    spec: dict[str, Any] = Field(description="The EvaluationSpec the figures were measured with.")
    device: str
    candidate: ModelResult
    baseline: ModelResult | None = None
    fidelity: Fidelity | None = None
    relative: dict[str, float] = Field(default_factory=dict, description="Candidate as % of the original.")
    speedup: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Candidate over original throughput ratios (compare.speedups): 'eager' (eager over eager),"
        " 'served' (served over served), 'served_over_eager' (served candidate over eager original, as the study"
        " quotes it); keys prefill, decode, decode_batch_<b>.",
    )
    gate: GateResult | None = None
    manifest: dict[str, Any] | None = Field(None, description="The compression manifest (moecomp.json), if given.")
    notes: list[str] = Field(default_factory=list)
