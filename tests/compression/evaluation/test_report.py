from __future__ import annotations

import json
import re

import pytest

from moecomp.compression.evaluation.report import write_report
from moecomp.compression.evaluation.run import evaluate
from moecomp.compression.evaluation.schema import SCHEMA_VERSION, Report
from moecomp.compression.evaluation.spec import EvaluationSpec, SpeedSpec

MANIFEST = {
    "schema": "moecomp.manifest/1",
    "stages": [
        {
            "method": "expert_drop",
            "scores": {"0": [0.3, 0.1, 0.4, 0.2], "1": [0.25, 0.25, 0.3, 0.2]},
            "decisions": {"kept_experts": {"0": [0, 2, 3], "1": [0, 1, 2]}, "dropped_layers": [], "dropped_blocks": []},
        },
        {
            "method": "layer_drop",
            "similarity": {"0": 0.91, "1": 0.97},
            "decisions": {"kept_experts": {}, "dropped_layers": [1], "dropped_blocks": []},
        },
    ],
}


@pytest.fixture(scope="module")
def report(tiny_mixtral_dir):
    spec = EvaluationSpec(
        max_tokens=512, fidelity_tokens=256, speed=True,
        speed_settings=SpeedSpec(prefill_tokens=32, decode_tokens=2, decode_prompt_tokens=4, repeats=1, warmup=0),
    )  # fmt: skip
    return evaluate(tiny_mixtral_dir, tiny_mixtral_dir, spec, manifest=MANIFEST)


def test_report_follows_the_versioned_schema_and_gives_every_figure_as_percent_of_original(report):
    assert report["schema"] == SCHEMA_VERSION
    assert Report.model_validate(report).model_dump(mode="json", by_alias=True) == report
    rel = report["relative"]
    for key in ("perplexity.bundled:heldout.ppl", "footprint.disk_bytes", "footprint.params_active",
                "speed.prefill_tok_s", "speed.decode_tok_s"):  # fmt: skip
        assert key in rel
    # The same checkpoint on both sides: deterministic figures are exactly 100%.
    assert rel["perplexity.bundled:heldout.ppl"] == pytest.approx(100.0)
    assert rel["footprint.disk_bytes"] == 100.0
    assert report["candidate"]["runtime"].startswith("transformers 5.")
    assert report["gate"] == {"passed": True, "failures": []}


def test_report_speed_figures_name_their_runtime_and_speedups_are_given_both_ways(report):
    cand, base = report["candidate"]["speed"], report["baseline"]["speed"]
    assert cand["runtime"] == base["runtime"] == "eager"  # the study's baseline, at the keys it always had
    assert cand["served"]["runtime"] == base["served"]["runtime"] == "served"
    assert cand["served"]["decode_tok_s"] > 0 and cand["served"]["prefill_tokens"] == cand["prefill_tokens"]
    assert {"speed.decode_tok_s", "speed.served.decode_tok_s", "speed.served.prefill_tok_s"} <= set(report["relative"])
    speedup = report["speedup"]
    assert set(speedup) == {"eager", "served", "served_over_eager"}
    assert set(speedup["served"]) == {"prefill", "decode", "decode_batch_1"}
    assert speedup["eager"]["decode"] == pytest.approx(cand["decode_tok_s"] / base["decode_tok_s"])
    assert speedup["served"]["decode"] == pytest.approx(cand["served"]["decode_tok_s"] / base["served"]["decode_tok_s"])
    assert speedup["served_over_eager"]["decode"] == pytest.approx(
        cand["served"]["decode_tok_s"] / base["decode_tok_s"]
    )
    assert any("served runtime on a CPU" in note for note in report["notes"])


def test_write_report_writes_json_and_a_self_contained_html(report, tmp_path):
    paths = write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["report.json", "report.html"]
    assert json.loads(paths[0].read_text()) == report
    page = paths[1].read_text()
    assert "<script" not in page and "<link" not in page
    assert not [u for u in re.findall(r"https?://[^\"' )]+", page) if u != "http://www.w3.org/2000/svg"]
    assert page.count("<svg") >= 4  # quality vs size and speed, % of original, heatmap, similarity
    assert "expert_drop: expert scores" in page and "layer_drop: similarity" in page
    assert "decode tokens/s (eager)" in page and "decode tokens/s (served)" in page
    assert "served over served" in page and "served compressed over eager original" in page
    assert "served runtime (compressed): experts " in page and "static KV cache" in page
    # Dropped layer 1 is the red bar; dropped experts (layer 0 expert 1, layer 1 expert 3) are crossed.
    assert re.search(r'<rect [^>]*fill="#cc3333"><title>1: 0.97</title>', page)
    assert page.count('stroke="#cc3333" stroke-width="2"') == 2


def test_report_schema_is_published_as_json_schema():
    schema = Report.model_json_schema(by_alias=True)
    assert schema["properties"]["schema"]["const"] == SCHEMA_VERSION
    assert {"candidate", "baseline", "fidelity", "relative", "gate", "notes"} <= set(schema["properties"])
