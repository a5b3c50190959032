"""The checkpoint's README.md: what it is, where it came from, how it was made, and how it scored.

Written only where the export did not write one, so the library's own card wins once it exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moecomp.compression.recipe import Recipe

CONFIG_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "intermediate_size",
    "vocab_size",
)


def _config_rows(checkpoint: Path) -> list[str]:
    config = json.loads((checkpoint / "config.json").read_text())
    return [f"| {key} | {config[key]} |" for key in CONFIG_FIELDS if key in config]


def _metric_rows(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["No evaluation was run."]
    flat = {k: v for k, v in report.items() if isinstance(v, int | float | str)}
    for side in ("candidate", "baseline"):
        for key, value in (report.get(side) or {}).items():
            if isinstance(value, int | float):
                flat[f"{side}.{key}"] = value
    return [f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}" for key, value in flat.items()]


def write_model_card(
    checkpoint: Path, model: str | Path, revision: str | None, recipe: Recipe, report: dict[str, Any] | None
) -> Path:
    path = checkpoint / "README.md"
    if path.exists():
        return path
    stages = [stage.model_dump(mode="json") for stage in recipe.stages] or ["none (re-exported unchanged)"]
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
        "The full recipe, scores and decisions are in `moecomp.json`.",
        "",
    ]
    path.write_text("\n".join(lines))
    return path
