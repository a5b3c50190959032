"""Every figure of the candidate as a percentage of the original's (100 * candidate / original), and speedups.

speedup = candidate tok/s / original tok/s, per runtime pair: eager over eager, served over served, and served
candidate over eager original (how the study quotes a compressed model served against the original as loaded).
"""

from __future__ import annotations

from typing import Any

# Counts and settings echoed in results: equal by construction, not figures to compare.
_NOT_FIGURES = {"tokens", "windows", "n", "prompt_tokens", "prefill_tokens", "flops_context", "local", "rss_gib"}
# (candidate runtime, original runtime) of each speedup, keyed by its name in the report.
SPEEDUP_PAIRS = {"eager": ("eager", "eager"), "served": ("served", "served"), "served_over_eager": ("served", "eager")}
# rss_gib is the whole process (both models were loaded in it): not a figure of one model.


def _flatten(value: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, inner in value.items():
            if key in _NOT_FIGURES or key.endswith("_stderr"):
                continue
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of a ModelResult dict, keyed by dotted path."""
    parts = {k: result.get(k) for k in ("perplexity", "tasks", "mean_accuracy", "speed", "footprint")}
    return _flatten({k: v for k, v in parts.items() if v is not None})


def percent_of_original(candidate: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """100 * candidate / original for every figure both have (skipping an original of 0)."""
    cand, base = figures(candidate), figures(baseline)
    return {key: 100.0 * cand[key] / base[key] for key in cand if key in base and base[key] != 0}


def _runtime(speed: dict[str, Any] | None, runtime: str) -> dict[str, Any] | None:
    """The figures of one runtime out of a ModelResult's speed (eager at the top, served nested)."""
    if not speed:
        return None
    return speed.get("served") if runtime == "served" else speed


def _throughputs(figures: dict[str, Any]) -> dict[str, float]:
    out = {"prefill": figures["prefill_tok_s"], "decode": figures["decode_tok_s"]}
    out.update({f"decode_batch_{b}": d["tok_s"] for b, d in figures["decode"].items()})
    return out


def speedups(candidate: dict[str, Any], baseline: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Candidate over original throughput for each runtime pair both models were measured in."""
    out: dict[str, dict[str, float]] = {}
    for name, (cand_rt, base_rt) in SPEEDUP_PAIRS.items():
        cand, base = _runtime(candidate.get("speed"), cand_rt), _runtime(baseline.get("speed"), base_rt)
        if cand and base:
            c, b = _throughputs(cand), _throughputs(base)
            out[name] = {key: c[key] / b[key] for key in c if b.get(key)}
    return out
