"""Inline SVG charts for report.html, drawn here so that the page needs no script and no network.

- quality vs size and vs speed: the original and the compressed checkpoint as two labelled points;
- every figure as % of the original: horizontal bars around a 100% line;
- expert scores (Expert Drop): a layers x experts heatmap, dropped experts crossed out;
- layer / block similarity (Layer / Block Drop): bars per index, dropped ones in red.
The last two come from the compression manifest (moecomp.json): per stage ``scores`` or ``similarity``
and ``decisions`` {kept_experts, dropped_layers, dropped_blocks}, in the original model's numbering.
"""

from __future__ import annotations

from collections.abc import Collection
from html import escape
from typing import Any

BLUE, RED, GREY, INK = "#3465a4", "#cc3333", "#b8bec9", "#1d2330"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    head = f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="600">{escape(title)}</text>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui,sans-serif" font-size="11" role="img">'
        f"<title>{escape(title)}</title>{head}{''.join(body)}</svg>"
    )


def _text(x: float, y: float, s: str, anchor: str = "start", **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def bars(title: str, labels: list[str], values: list[float], red: Collection[str] = (), unit: str = "") -> str:
    """Vertical bars, one per label; labels in ``red`` drawn red (e.g. dropped layers).

    The axis starts just below the smallest value, not at zero: similarities sit in 0.9..1 and
    their differences are what the chart is for.
    """
    width, height, left, bottom = max(260, 7 * len(title), 40 + 22 * len(values)), 220, 40, 40
    top, bottom_value = max(values, default=1.0), min(values, default=0.0)
    low = bottom_value - 0.1 * ((top - bottom_value) or abs(top) or 1.0)
    span = (top - low) or 1.0
    plot_h, step = height - bottom - 30, (width - left - 10) / max(1, len(values))
    body = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="{INK}"/>']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * (value - low) / span
        x = left + i * step + 2
        colour = RED if label in red else BLUE
        body.append(f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{step - 4:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{escape(label)}: {value:.4g}{unit}</title></rect>')  # fmt: skip
        body.append(_text(x + (step - 4) / 2, height - bottom + 14, label, "middle"))
    body.append(_text(4, 34, f"{top:.4g}{unit}"))
    body.append(_text(4, height - bottom, f"{bottom_value:.4g}{unit}"))
    return _svg(width, height, title, body)


def relative_bars(title: str, relative: dict[str, float]) -> str:
    """Horizontal bars of % of original, with the 100% line."""
    if not relative:
        return ""
    row, left, width = 18, 250, 620
    height = 40 + row * len(relative)
    top = max(200.0, max(relative.values()))
    scale = (width - left - 60) / top
    x100 = left + 100 * scale
    body = []
    for i, (key, pct) in enumerate(relative.items()):
        y = 28 + i * row
        body.append(_text(left - 6, y + 12, key, "end"))
        # One colour: whether more is better depends on the figure (perplexity vs accuracy).
        body.append(
            f'<rect x="{left}" y="{y + 3}" width="{max(1.0, pct * scale):.1f}" height="{row - 6}" fill="{BLUE}"/>'
        )
        body.append(_text(left + pct * scale + 4, y + 12, f"{pct:.1f}%"))
    body.append(
        f'<line x1="{x100:.1f}" y1="24" x2="{x100:.1f}" y2="{height - 6}" stroke="{INK}" stroke-dasharray="3"/>'
    )
    return _svg(width, height, title, body)


def scatter(title: str, points: list[tuple[float, float, str]], xlabel: str, ylabel: str) -> str:
    """Labelled points (x, y, label) on linear axes that start at zero."""
    width, height, left, bottom = 340, 230, 50, 40
    xmax = max(p[0] for p in points) * 1.15 or 1.0
    ymax = max(p[1] for p in points) * 1.15 or 1.0
    sx, sy = (width - left - 20) / xmax, (height - bottom - 30) / ymax
    body = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="{INK}"/>',
        f'<line x1="{left}" y1="30" x2="{left}" y2="{height - bottom}" stroke="{INK}"/>',
        _text((left + width) / 2, height - 8, xlabel, "middle"),
        _text(
            12, (height - bottom + 30) / 2, ylabel, "middle", transform=f"rotate(-90 12 {(height - bottom + 30) / 2})"
        ),
        _text(left - 4, 34, f"{ymax:.3g}", "end"),
        _text(width - 10, height - bottom + 14, f"{xmax:.3g}", "end"),
    ]
    for i, (x, y, label) in enumerate(points):
        cx, cy = left + x * sx, height - bottom - y * sy
        colour = GREY if i == 0 else BLUE
        tip = f"<title>{label}: {x:.4g}, {y:.4g}</title>"
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colour}">{tip}</circle>')
        body.append(_text(cx - 7, cy - 8, f"{label} ({y:.3g})", "end"))
    return _svg(width, height, title, body)


def _cell_colour(value: float | None, low: float, high: float) -> str:
    if value is None:
        return "#eeeeee"
    t = (value - low) / ((high - low) or 1.0)
    return f"rgb({int(255 - 203 * t)},{int(255 - 154 * t)},{int(255 - 91 * t)})"  # white -> BLUE


def heatmap(title: str, scores: dict[str, list[float | None]], kept: dict[str, list[int]]) -> str:
    """Layers (rows) x experts (columns) of mean router probability; experts not kept are crossed out."""
    layers = sorted(scores, key=int)
    n = max((len(v) for v in scores.values()), default=0)
    values = [v for layer in layers for v in scores[layer] if v is not None]
    low, high = min(values, default=0.0), max(values, default=1.0)
    cell, left, top = 18, 60, 40
    width, height = max(left + cell * n + 20, 7 * len(title)), top + cell * len(layers) + 20
    body = [_text(left + cell * e + cell / 2, top - 4, str(e), "middle") for e in range(n)]
    for r, layer in enumerate(layers):
        y = top + r * cell
        body.append(_text(left - 6, y + 13, f"layer {layer}", "end"))
        for e, value in enumerate(scores[layer]):
            x = left + e * cell
            tip = f"layer {layer} expert {e}: {'dropped earlier' if value is None else f'{value:.4f}'}"
            body.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                        f'fill="{_cell_colour(value, low, high)}"><title>{tip}</title></rect>')  # fmt: skip
            if layer in kept and e not in kept[layer]:
                body.append(f'<path d="M{x + 3} {y + 3}L{x + cell - 4} {y + cell - 4}M{x + cell - 4} {y + 3}'
                            f'L{x + 3} {y + cell - 4}" stroke="{RED}" stroke-width="2"/>')  # fmt: skip
    return _svg(width, height, title, body)


def manifest_charts(manifest: dict[str, Any] | None) -> list[str]:
    """One chart per scored stage of the compression manifest."""
    out: list[str] = []
    for i, stage in enumerate((manifest or {}).get("stages", [])):
        method, decisions = stage.get("method", f"stage {i}"), stage.get("decisions") or {}
        if stage.get("scores"):
            out.append(
                heatmap(f"{method}: expert scores (X = dropped)", stage["scores"], decisions.get("kept_experts", {}))
            )
        if stage.get("similarity"):
            sim = stage["similarity"]
            labels = sorted(sim, key=int)
            dropped = {str(i) for i in decisions.get("dropped_layers", []) + decisions.get("dropped_blocks", [])}
            out.append(bars(f"{method}: similarity (red = dropped)", labels, [sim[k] for k in labels], dropped))
    return out


def quality_charts(report: dict[str, Any]) -> list[str]:
    """Perplexity / accuracy against size on disk and prefill speed, original vs compressed."""
    cand, base = report["candidate"], report.get("baseline")
    if not base:
        return []
    pairs = [(base, "original"), (cand, "compressed")]
    source = next(iter(cand["perplexity"]), None)
    out = []
    quality = []
    if source and source in base["perplexity"]:
        quality.append(("perplexity", lambda r: r["perplexity"][source]["ppl"]))
    if cand.get("mean_accuracy") is not None and base.get("mean_accuracy") is not None:
        quality.append(("mean accuracy", lambda r: r["mean_accuracy"]))
    for name, get in quality:
        if cand.get("footprint") and base.get("footprint"):
            points = [(r["footprint"]["disk_bytes"] / 1e9, get(r), label) for r, label in pairs]
            out.append(scatter(f"{name} vs size", points, "size on disk (GB)", name))
        if cand.get("speed") and base.get("speed"):
            points = [(r["speed"]["prefill_tok_s"], get(r), label) for r, label in pairs]
            out.append(scatter(f"{name} vs prefill speed", points, "prefill tokens/s", name))
    return out


def all_charts(report: dict[str, Any]) -> str:
    charts = quality_charts(report)
    relative = {k: v for k, v in (report.get("relative") or {}).items() if not k.endswith(".nll")}
    charts.append(relative_bars("compressed as % of original", relative))
    charts += manifest_charts(report.get("manifest"))
    return "\n".join(c for c in charts if c)
