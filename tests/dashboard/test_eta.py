"""The job page's ETA math (static/js/eta.js) in the browser, against a slow reference written here.

The reference walks the reports one step at a time: a report covering d steps in dt seconds counts as d
steps of dt / d each, and every step moves the mean by ALPHA. The module does the same in one update.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.dashboard.conftest import Service, sign_in
from tests.dashboard.test_charts import run_module

ALPHA = 0.3


def reference_per_step(reports: list[tuple[float, int]]) -> float | None:
    """The mean time per step after ``reports`` [(time, step)], step by step; None before two steps."""
    per_step = None
    kept = [reports[0]] if reports else []
    for time, step in reports[1:]:
        if step > kept[-1][1]:
            kept.append((time, step))
    for (t0, s0), (t1, s1) in zip(kept, kept[1:], strict=False):
        each = (t1 - t0) / (s1 - s0)
        for _ in range(s1 - s0):
            per_step = each if per_step is None else per_step + ALPHA * (each - per_step)
    return per_step


def estimates(page: Any, start: float, reports: list[tuple[float, int, int]], nows: list[float]) -> Any:
    body = f"""let track = m.startTrack({start});
      for (const [time, step, total] of {json.dumps(reports)}) track = m.observe(track, time, step, total);
      const views = {json.dumps(nows)}.map((now) => m.estimate(track, now));
      return {{alpha: m.ALPHA, perStep: track.perStep, views}};"""
    return run_module(page, "eta.js", body)


def test_the_time_left_follows_the_weighted_rate_of_throttled_reports(page: Any, service: Service) -> None:
    sign_in(page, service.key)
    # Times in ms: a slow first layer, then reports that skip steps (throttled), then faster layers.
    reports = [(5_000, 1, 48), (65_000, 3, 48), (95_000, 4, 48), (125_000, 7, 48), (140_000, 9, 48)]
    got = estimates(page, 0, reports, [140_000, 150_000, 200_000])
    assert got["alpha"] == ALPHA
    expected = reference_per_step([(t, s) for t, s, _ in reports])
    assert got["perStep"] == pytest.approx(expected, rel=1e-12)
    on_report, later, overdue = got["views"]
    assert on_report == {
        "fraction": 9 / 48,
        "elapsed": 140_000,
        "remaining": pytest.approx(39 * expected),
        "done": False,
    }
    assert later["remaining"] == pytest.approx(expected * 39 - 10_000)  # counts down between reports
    assert later["elapsed"] == 150_000
    assert overdue["remaining"] == pytest.approx(expected * 38)  # a slow layer: never below the layers after it


def test_estimating_until_two_steps_then_never_negative_and_nothing_left_once_done(page: Any, service: Service) -> None:
    sign_in(page, service.key)
    first = estimates(page, 1_000, [(3_000, 1, 8)], [4_000])["views"][0]
    assert first == {"fraction": 1 / 8, "elapsed": 3_000, "remaining": None, "done": False}  # "estimating…"
    repeated = estimates(page, 1_000, [(3_000, 1, 8), (3_500, 1, 8), (3_600, 0, 8)], [4_000])
    assert repeated["perStep"] is None  # the same step again, or an older one, is no second step
    # A step 0 report is a step seen: the stage's own start.
    zero = estimates(page, 0, [(0, 0, 2), (2_000, 1, 2)], [2_000])["views"][0]
    assert zero["remaining"] == 2_000
    # The browser's clock behind the server's: time does not run backwards, nothing goes below zero.
    reports = [(10_000, 0, 4), (11_000, 1, 4), (12_000, 3, 4)]
    behind = estimates(page, 10_000, reports, [0, 9_999_999])
    per_step = reference_per_step([(t, s) for t, s, _ in reports])
    assert behind["views"][0] == {
        "fraction": 0.75,
        "elapsed": 2_000,
        "remaining": pytest.approx(per_step),
        "done": False,
    }
    assert behind["views"][1]["remaining"] == 0
    # Done: no time left to show, and the duration stays what it was however long the page stays open.
    done = estimates(page, 0, [(0, 0, 2), (1_000, 1, 2), (3_000, 2, 2)], [3_000, 60_000])["views"]
    assert done[0] == done[1] == {"fraction": 1, "elapsed": 3_000, "remaining": None, "done": True}
