"""Inline SVG charts for report.html (placeholder: filled in by the next commit)."""

from __future__ import annotations

from typing import Any


def all_charts(report: dict[str, Any]) -> str:
    return ""
