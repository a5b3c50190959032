"""write_report(): report.json (schema "moecomp.report/1") and a self-contained report.html.

The HTML has no scripts and loads nothing: tables and inline SVG charts drawn here (charts.py).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from moecomp.compression.evaluation import charts

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d8dce5}
table{border-collapse:collapse;margin:.5rem 0}
td,th{padding:.25rem .7rem;border-bottom:1px solid #eceff4;text-align:right}
th:first-child,td:first-child{text-align:left}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.muted{color:#6a7180}.charts{display:flex;flex-wrap:wrap;gap:1.5rem}code{background:#f3f4f7;padding:0 .25rem}
"""


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write report.json and report.html into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return [json_path, html_path]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1e6 else f"{value:.3e}"
    return _e(value)


def _pct(report: dict[str, Any], key: str) -> str:
    value = report.get("relative", {}).get(key)
    return "" if value is None else f"{value:.1f}%"


def _rows(report: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(label, relative key, candidate value, original value) for the summary table."""
    cand, base = report["candidate"], report.get("baseline") or {}
    rows: list[tuple[str, str, Any, Any]] = []
    for source, p in cand["perplexity"].items():
        rows.append(
            (
                f"perplexity ({source})",
                f"perplexity.{source}.ppl",
                p["ppl"],
                base.get("perplexity", {}).get(source, {}).get("ppl"),
            )
        )
    for name, t in cand["tasks"].items():
        rows.append((f"accuracy {name}", f"tasks.{name}.acc", t["acc"], base.get("tasks", {}).get(name, {}).get("acc")))
    if cand.get("mean_accuracy") is not None:
        rows.append(("mean accuracy", "mean_accuracy", cand["mean_accuracy"], base.get("mean_accuracy")))
    rows += _speed_rows(cand.get("speed") or {}, base.get("speed") or {})
    fp, bfp = cand.get("footprint") or {}, base.get("footprint") or {}
    for key, label in (
        ("disk_bytes", "size on disk (bytes)"),
        ("params_total", "parameters"),
        ("params_active", "active parameters / token"),
        ("flops_per_token", "FLOPs / token"),
    ):
        if key in fp:
            rows.append((label, f"footprint.{key}", fp[key], bfp.get(key)))
    return rows


def _speed_rows(speed: dict[str, Any], bspeed: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """Speed rows of the summary table, each naming its runtime: eager (the study's baseline), then served."""
    rows: list[tuple[str, str, Any, Any]] = []
    for runtime, prefix, cand, base in (
        ("eager", "speed", speed, bspeed),
        ("served", "speed.served", speed.get("served") or {}, bspeed.get("served") or {}),
    ):
        for key, label in (
            ("prefill_tok_s", "prefill tokens/s"),
            ("decode_tok_s", "decode tokens/s"),
            ("peak_memory_gib", "peak memory (GiB)"),
        ):
            if key in cand:
                rows.append((f"{label} ({runtime})", f"{prefix}.{key}", cand[key], base.get(key)))
        for batch, figures in (cand.get("decode") or {}).items():
            if len(cand["decode"]) > 1:
                base_tok_s = (base.get("decode") or {}).get(batch, {}).get("tok_s")
                rows.append((f"decode tokens/s at batch {batch} ({runtime})", f"{prefix}.decode.{batch}.tok_s",
                             figures["tok_s"], base_tok_s))  # fmt: skip
    return rows


_SPEEDUP_LABELS = {
    "eager": "eager over eager",
    "served": "served over served",
    "served_over_eager": "served compressed over eager original (as the study quotes it)",
}


def _speedup_table(report: dict[str, Any]) -> str:
    """Compressed over original throughput, one row per runtime pair, one column per figure."""
    speedup = report.get("speedup") or {}
    if not speedup:
        return '<p class="muted">Speedup not measured (needs the original\'s speed).</p>'
    keys = list(next(iter(speedup.values())))
    head = "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{_e(_SPEEDUP_LABELS.get(pair, pair))}</td>"
        + "".join(f"<td>{_num(ratios.get(k), 3)}×</td>" for k in keys)
        + "</tr>"
        for pair, ratios in speedup.items()
    )
    return f"<table><tr><th>compressed / original</th>{head}</tr>{body}</table>"


def _served_setups(report: dict[str, Any]) -> str:
    """How each model ran in the served runtime: its experts kernel, the graph capture and the KV cache."""
    lines = []
    for name, result in (("compressed", report["candidate"]), ("original", report.get("baseline") or {})):
        served = (result.get("speed") or {}).get("served")
        if served:
            graph = "decode step compiled into a CUDA graph" if served.get("compiled") else "not compiled"
            cache = served.get("cache", "static")
            experts = served.get("experts_implementation") or "transformers' default"
            lines.append(f"served runtime ({name}): experts {experts}, {graph}, {cache} KV cache")
    return "".join(f'<p class="muted">{_e(line)}</p>' for line in lines)


def _summary_table(report: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{_e(label)}</td><td>{_num(c)}</td><td>{_num(b)}</td><td>{_pct(report, key)}</td></tr>"
        for label, key, c, b in _rows(report)
    )
    return f"<table><tr><th>figure</th><th>compressed</th><th>original</th><th>% of original</th></tr>{body}</table>"


def _gate(report: dict[str, Any]) -> str:
    gate = report.get("gate") or {"passed": True, "failures": []}
    if gate["passed"]:
        return '<p class="pass">Quality gate: passed</p>'
    items = "".join(f"<li>{_e(f)}</li>" for f in gate["failures"])
    return f'<p class="fail">Quality gate: failed</p><ul>{items}</ul>'


def _fidelity(report: dict[str, Any]) -> str:
    f = report.get("fidelity")
    if not f:
        return '<p class="muted">Fidelity to the original not measured.</p>'
    kind = "full KL" if f["exact"] else f"KL with tokens outside the original's top {f['topk']} merged (a lower bound)"
    return (
        f"<table><tr><td>mean KL(original ‖ compressed), nats</td><td>{_num(f['kl_mean'])}</td></tr>"
        f"<tr><td>top-1 agreement</td><td>{_num(f['top1_agreement'])}</td></tr>"
        f"<tr><td>positions ({_e(f['source'])})</td><td>{_num(f['tokens'])}</td></tr></table>"
        f'<p class="muted">{_e(kind)}</p>'
    )


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML page with inline CSS and SVG."""
    cand, base = report["candidate"], report.get("baseline")
    runtime = cand.get("runtime") or (base or {}).get("runtime") or "not loaded"
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.get("notes", []))
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>moecomp report: {_e(Path(cand['path']).name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of {_e(cand['path'])}</h1>",
        f"<p>original: <code>{_e(base['path']) if base else 'none given'}</code><br>",
        f"runtime: {_e(runtime)} · {_e(report['created_at'])} · schema {_e(report['schema'])}</p>",
        _gate(report),
        "<h2>Summary</h2>",
        _summary_table(report),
        "<h2>Speedup</h2>",
        _speedup_table(report),
        _served_setups(report),
        "<h2>Fidelity to the original</h2>",
        _fidelity(report),
        "<h2>Charts</h2>",
        f'<div class="charts">{charts.all_charts(report)}</div>',
        f"<h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul>",
        "</body></html>",
    ]
    return "\n".join(parts)
