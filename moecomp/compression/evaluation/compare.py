"""Every figure of the candidate as a percentage of the original's: 100 * candidate / original."""

from __future__ import annotations

from typing import Any

# Counts and settings echoed in results: equal by construction, not figures to compare.
_NOT_FIGURES = {"tokens", "windows", "n", "prompt_tokens", "prefill_tokens", "flops_context", "local", "rss_gib"}
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
