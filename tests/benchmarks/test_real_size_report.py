"""benchmarks/real_size_report.py: the families' recipes, and layer times read back from the CLI's progress bars."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports make_random_checkpoint beside it
    return runpy.run_path(str(ROOT / "benchmarks" / "real_size_report.py"))


def test_recipes_drop_a_quarter_then_quantize_on_both_families(report: dict[str, Any]) -> None:
    glm, refused = report["build_recipe"]("glm-4.5-air", 0.25, 4, 128)
    assert glm["stages"] == [
        {"method": "expert_drop", "mode": "layerwise", "keep": 96},
        {"method": "gptq", "bits": 4, "group_size": 128},
    ]
    assert refused == []
    gpt_oss, refused = report["build_recipe"]("gpt-oss-20b", 0.25, 4, 128)
    assert gpt_oss["stages"] == [
        {"method": "expert_drop", "mode": "layerwise", "keep": 24},
        {"method": "gptq", "bits": 4, "group_size": 128},
    ]
    assert refused == []


def test_layer_loops_time_each_bar_from_its_first_update_at_the_last_step(report: dict[str, Any]) -> None:
    log = (
        "load: 100%|##| 1/1 [00:02<00:00,  1.10s/step]\n"
        "gptq:  17%|#  | 1/6 [00:00<00:00, 9.9step/s]\rgptq:  33%|## | 2/6 [00:12<00:48, 12.00s/step]"
        "\rgptq: 100%|###| 6/6 [01:00<00:00, 12.00s/step]\n[gptq] a message\n"
        "gptq: 100%|###| 6/6 [01:04<00:00, 12.80s/step]\n"  # redrawn after the message, later: not the end
        "export:   0%|   | 0/1 [00:00<?, ?step/s]\rexport: 100%|###| 1/1 [00:20<00:00, 20.00s/step]\n"
    )
    loops = report["layer_loops"](log)
    assert loops["gptq"] == {"steps": 6, "elapsed_s": 60, "per_step_s": 12.0}
    assert loops["export"] == {"steps": 1, "elapsed_s": 20, "per_step_s": None}
    # 46 layers: 40 more gptq layers at 12 s, the reload check ("export") scaled from 6 to 46 layers
    assert report["estimate_full"](100.0, loops, 6, 46) == pytest.approx(100 + 40 * 12 + 20 * (46 / 6 - 1))
