"""The chart and form modules in the browser, on data made up here: the edge cases a real job rarely hits."""

from __future__ import annotations

from typing import Any

from tests.dashboard.conftest import Service, sign_in


def run_module(page: Any, module: str, body: str) -> Any:
    """Evaluate ``body`` (an async function of the imported module ``m``) in a signed-in dashboard page."""
    return page.evaluate(f"async () => {{ const m = await import('/dashboard/static/js/{module}'); {body} }}")


def test_ticks_are_round_and_terminate_on_ranges_below_float_precision(page: Any, service: Service) -> None:
    sign_in(page, service.key)
    assert run_module(page, "charts.js", "return m.ticks(0, 10);") == [0, 2, 4, 6, 8, 10]
    assert run_module(page, "charts.js", "return m.ticks(88, 112);") == [90, 95, 100, 105, 110]
    # 100 and 99.99999999999999 % (a re-export): adding such a step to 100 would never advance.
    tiny = run_module(page, "charts.js", "return m.ticks(99.99999999999999, 100);")
    assert 1 <= len(tiny) <= 16


def test_a_scatter_of_equal_points_gets_distinct_readable_ticks(page: Any, service: Service) -> None:
    sign_in(page, service.key)
    labels = run_module(
        page,
        "charts.js",
        """const svg = m.scatterChart({title: 't', xLabel: 'x', yLabel: 'y', points: [
             {x: 17.3142, y: 100, label: 'original', reference: true},
             {x: 17.3143, y: 99.99999999999999, label: 'job'}]});
           document.body.append(svg);
           return {x: [...svg.querySelectorAll('.tick text')].map((t) => t.textContent),
                   points: svg.querySelectorAll('.point').length,
                   reference: svg.querySelectorAll('.reference').length};""",
    )
    assert labels["points"] == 2 and labels["reference"] == 1
    assert len(set(labels["x"])) == len(labels["x"])  # no two ticks read the same


def test_bars_mark_the_dropped_and_the_heatmap_crosses_dropped_experts(page: Any, service: Service) -> None:
    sign_in(page, service.key)
    counts = run_module(
        page,
        "charts.js",
        """const bars = m.barChart({title: 'b', valueLabel: 'cos', items: [0.5, 0.9, 0.95, 0.7].map(
             (value, i) => ({label: String(i), value, marked: i === 2}))});
           const heat = m.heatmap({title: 'h', rows: [
             {label: '0', values: [0.1, 0.5, 0.2], dropped: new Set([0])},
             {label: '1', values: [], note: 'MoE removed'}]});
           return {bars: bars.querySelectorAll('.bar-item').length,
                   marked: [...bars.querySelectorAll('.bar-item.marked')].map((b) => b.dataset.label),
                   cells: heat.querySelectorAll('.heat-cell').length,
                   crossed: heat.querySelectorAll('.heat-cell.dropped .cross').length,
                   removed: heat.querySelector('.heat-row.removed .heat-note').textContent,
                   tooltip: heat.querySelector('.heat-cell.dropped title').textContent};""",
    )
    assert counts == {
        "bars": 4,
        "marked": ["2"],
        "cells": 3,
        "crossed": 1,
        "removed": "— MoE removed —",
        "tooltip": "layer 0, expert 0: 0.1 (dropped)",
    }


def test_error_locations_drop_body_and_union_tags(page: Any, service: Service) -> None:
    sign_in(page, service.key)
    candidates = run_module(
        page,
        "form.js",
        """return m.locCandidates(['body', 'recipe', 'stages', 0, 'expert_drop', 'keep'],
                                  (part) => part === 'expert_drop');""",
    )
    assert candidates == ["recipe.stages.0.keep", "recipe.stages.0", "recipe.stages", "recipe"]


def test_a_report_with_tasks_and_speed_shows_every_figure_as_percent_of_original(page: Any, service: Service) -> None:
    """The shape of "moecomp.report/1" (compression/evaluation/schema.py) with the parts the CPU tests skip."""
    sign_in(page, service.key)
    rows = run_module(
        page,
        "report.js",
        """const model = (acc, tok_s, mem) => ({runtime: 'transformers, cpu', perplexity: {}, mean_accuracy: acc,
             tasks: {moecomp_next_verse: {acc, n: 40, local: true}},
             speed: {prefill_tokens: 64, prefill_tok_s: tok_s * 10, decode_tok_s: tok_s, decode: {'1': {tok_s}},
                     peak_memory_gib: mem, memory_measure: 'cuda'}});
           const report = {device: 'cuda', candidate: model(0.6, 150, 20), baseline: model(0.8, 100, 80),
             relative: {'tasks.moecomp_next_verse.acc': 75, mean_accuracy: 75, 'speed.decode_tok_s': 150,
                        'speed.peak_memory_gib': 25},
             gate: {passed: false, failures: ['mean accuracy 75.0% of the original < 90.0%']}};
           const target = document.createElement('div');
           m.renderReport(target, report, null);
           document.body.append(target);
           return {rows: [...target.querySelectorAll('tr[data-figure]')].map((r) =>
                     [...r.children].map((c) => c.textContent)),
                   gate: target.querySelector('.gate-fail').textContent,
                   points: [...target.querySelectorAll('.point')].map((p) => p.dataset.label)};""",
    )
    figures = {row[0]: row[1:] for row in rows["rows"]}
    assert figures["Accuracy (moecomp_next_verse)"] == ["80.0%", "60.0%", "75.0%"]
    assert figures["Mean accuracy"] == ["80.0%", "60.0%", "75.0%"]
    assert figures["Decode tokens/s (eager)"] == ["100", "150", "150.0%"]
    assert figures["Peak memory, GiB (eager)"] == ["80", "20", "25.0%"]
    assert "mean accuracy 75.0% of the original < 90.0%" in rows["gate"]
    assert rows["points"] == ["original", "this job"]  # accuracy against peak memory
