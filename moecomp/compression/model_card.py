"""The checkpoint's README.md: what it is, where it came from, how it was made, and how it scored.

Written by :func:`moecomp.compression.pipeline.compress` beside the manifest it summarises, so that the CLI and
the service leave the same card; an evaluation run writes it again with its figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moecomp.compression.adapters import get_adapter
from moecomp.compression.lazy_checkpoint import read_config

CARD_NAME = "README.md"


def _config_rows(checkpoint: Path) -> list[str]:
    """The shape as the family's adapter reads it (each family names its expert counts its own way)."""
    config = read_config(checkpoint)
    family = get_adapter(config)
    rows = {
        "model_type": config.model_type,
        "decoder layers": config.num_hidden_layers,
        "hidden size": config.hidden_size,
        "routed experts per MoE layer": family.num_experts(config),
        "experts per token": family.top_k(config),
        "vocabulary": config.vocab_size,
    }
    return [f"| {key} | {value} |" for key, value in rows.items()]


def _metric_rows(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["No evaluation was run."]
    flat = {k: v for k, v in report.items() if isinstance(v, int | float | str)}
    for side in ("candidate", "baseline"):
        for key, value in (report.get(side) or {}).items():
            if isinstance(value, int | float):
                flat[f"{side}.{key}"] = value
    return [f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}" for key, value in flat.items()]


def write_model_card(checkpoint: Path, manifest: dict[str, Any], report: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint``/README.md from its ``manifest`` (and an evaluation ``report``); return its path."""
    source = manifest.get("source") or {}
    model, revision = source.get("model", "?"), source.get("revision")
    stages = (manifest.get("recipe") or {}).get("stages") or ["none (re-exported unchanged)"]
    lines = [
        f"# Compressed {Path(str(model)).name}",
        "",
        f"Made by moecomp from `{model}`" + (f" at revision `{revision}`." if revision else "."),
        "",
        "## Configuration",
        "",
        "| field | value |",
        "|---|---|",
        *_config_rows(checkpoint),
        "",
        "## Recipe stages",
        "",
        *[f"- `{json.dumps(stage)}`" for stage in stages],
        "",
        "## Evaluation",
        "",
        *_metric_rows(report),
        "",
        *[line for note in manifest.get("notes") or [] for line in (f"Note: {note}.", "")],
        "The full recipe, scores and decisions are in `moecomp.json`.",
        "",
    ]
    path = checkpoint / CARD_NAME
    path.write_text("\n".join(lines))
    return path
