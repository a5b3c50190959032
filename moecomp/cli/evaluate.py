"""``moecomp evaluate``: measure a checkpoint against its original locally (no service) and write the report.

    moecomp evaluate --model DIR [--baseline PATH|HUB_ID] [--spec FILE] [--tasks a,b] [--task-limit N]
                     [--perplexity SRC[,SRC...]] [--max-tokens N] [--seq-len L] [--speed] [--no-fidelity]
                     [--device cpu|cuda] [--dtype auto|bfloat16|float16|float32] [--cache-dir DIR] --out DIR

Writes report.json and report.html into --out. Exit status 0 when the quality gate (from --spec)
passes, 3 when it fails. Only parses flags and prints; the work is :func:`evaluation.run.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from moecomp.compression.evaluation.spec import EvaluationSpec

GATE_FAILED = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` on the ``moecomp`` command line."""
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint against its original, locally (no service)")
    p.add_argument("--model", required=True, type=Path, help="the checkpoint folder to evaluate")
    p.add_argument("--baseline", help="the original: a local folder or a hub id (org/name); omit for no comparison")
    p.add_argument("--revision", help="hub revision of --baseline")
    p.add_argument("--spec", type=Path, help="an EvaluationSpec as JSON or YAML (flags below replace its fields)")
    p.add_argument("--tasks", help="comma-separated lm-eval task names, e.g. moecomp_next_verse,moecomp_speech_end")
    p.add_argument("--task-limit", type=int, help="examples per task at most")
    p.add_argument("--perplexity", help="comma-separated held-out text sources (default bundled:heldout)")
    p.add_argument("--max-tokens", type=int, help="held-out tokens used at most")
    p.add_argument("--seq-len", type=int, help="tokens per perplexity window")
    p.add_argument("--speed", action="store_true", help="measure prefill/decode throughput and memory")
    p.add_argument("--no-fidelity", action="store_true", help="skip KL / top-1 agreement with the original")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], help="default: the checkpoint's")
    p.add_argument("--cache-dir", type=Path, help="cache the original's results here for later runs")
    p.add_argument("--out", required=True, type=Path, help="folder for report.json and report.html")
    p.set_defaults(func=run)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def spec_from_args(args: argparse.Namespace) -> EvaluationSpec:
    """The --spec file (or defaults) with the flags applied, validated as a whole."""
    data: dict[str, Any] = yaml.safe_load(args.spec.read_text()) if args.spec else {}
    flags = {
        "tasks": _csv(args.tasks) if args.tasks else None,
        "task_limit": args.task_limit,
        "perplexity": _csv(args.perplexity) if args.perplexity else None,
        "max_tokens": args.max_tokens,
        "seq_len": args.seq_len,
        "dtype": args.dtype,
        "speed": True if args.speed else None,
        "fidelity": False if args.no_fidelity else None,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    return EvaluationSpec.model_validate(data)


def headline(report: dict[str, Any]) -> list[str]:
    """A few lines a person reads first: quality, fidelity, speed, the gate."""
    cand, rel = report["candidate"], report["relative"]
    lines = []
    for source, p in cand["perplexity"].items():
        pct = rel.get(f"perplexity.{source}.ppl")
        lines.append(f"perplexity {source}: {p['ppl']:.3f}" + (f" ({pct:.1f}% of original)" if pct else ""))
    for name, t in cand["tasks"].items():
        lines.append(f"accuracy {name}: {t['acc']:.4f} (n={t['n']})")
    if report.get("fidelity"):
        f = report["fidelity"]
        lines.append(f"fidelity: KL {f['kl_mean']:.4f} nats, top-1 agreement {f['top1_agreement']:.4f}")
    for s in (cand.get("speed"), (cand.get("speed") or {}).get("served")):
        if s:
            runtime = s.get("runtime", "eager")
            lines.append(f"{runtime}: prefill {s['prefill_tok_s']:.1f} tok/s, decode {s['decode_tok_s']:.1f} tok/s")
    for pair, ratios in (report.get("speedup") or {}).items():
        if ratios.get("decode"):
            lines.append(f"decode speedup ({pair.replace('_', ' ')}): {ratios['decode']:.2f}x")
    gate = report["gate"]
    lines.append("gate: passed" if gate["passed"] else "gate: FAILED\n  " + "\n  ".join(gate["failures"]))
    return lines


def run(args: argparse.Namespace) -> int:
    from moecomp.cli.compress import ProgressBar
    from moecomp.compression.context import RunContext
    from moecomp.compression.evaluation.report import write_report
    from moecomp.compression.evaluation.run import evaluate
    from moecomp.compression.sources import resolve_model

    spec = spec_from_args(args)
    baseline = resolve_model(args.baseline, revision=args.revision) if args.baseline else None
    bar = ProgressBar()
    try:
        report = evaluate(args.model, baseline, spec, device=args.device, ctx=RunContext(sink=bar),
                          cache_dir=args.cache_dir)  # fmt: skip
    finally:
        bar.close()
    paths = write_report(report, args.out)
    print("\n".join(headline(report)))
    print(json.dumps({"report": [str(p) for p in paths]}), file=sys.stderr)
    return 0 if report["gate"]["passed"] else GATE_FAILED
