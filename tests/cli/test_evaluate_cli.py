from __future__ import annotations

import json

from moecomp.cli.evaluate import GATE_FAILED, spec_from_args
from moecomp.cli.main import build_parser, main


def parse(*argv: str):
    argv = ["evaluate", *argv]
    return build_parser(argv).parse_args(argv)


def test_flags_replace_the_spec_files_fields(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("tasks: [moecomp_speech_end]\nmax_tokens: 4096\ngate:\n  min_top1_agreement: 0.9\n")
    args = parse("--model", "m", "--spec", str(spec_file), "--tasks", "moecomp_next_verse, moecomp_speech_end",
                 "--max-tokens", "1024", "--speed", "--no-fidelity", "--out", "o")  # fmt: skip
    spec = spec_from_args(args)
    assert spec.tasks == ["moecomp_next_verse", "moecomp_speech_end"] and spec.max_tokens == 1024
    assert spec.speed and not spec.fidelity and spec.gate.min_top1_agreement == 0.9
    assert spec_from_args(parse("--model", "m", "--out", "o")).perplexity == ["bundled:heldout"]


def test_evaluate_writes_the_report_and_exits_3_when_the_gate_fails(tiny_mixtral_dir, tmp_path, capsys):
    spec_file = tmp_path / "spec.json"
    # No task is measured, so a bound on accuracy cannot be met: the gate fails, saying why.
    spec_file.write_text(json.dumps({"fidelity_tokens": 256, "gate": {"min_accuracy_pct": 90}}))
    code = main(["evaluate", "--model", str(tiny_mixtral_dir), "--baseline", str(tiny_mixtral_dir),
                 "--spec", str(spec_file), "--max-tokens", "512", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == GATE_FAILED
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (tmp_path / "out" / "report.html").is_file()
    assert report["fidelity"]["top1_agreement"] == 1.0 and not report["gate"]["passed"]
    out = capsys.readouterr().out
    assert "perplexity bundled:heldout" in out and "gate: FAILED" in out and "no task accuracy" in out
