"""The explicit run context passed through every long operation: progress events and cancellation.

The library knows nothing of Celery or the database: the worker passes a sink that stores events,
the CLI one that draws a progress bar, tests one that collects them in a list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["message", "progress", "metrics"]
# (kind, stage, data): data is JSON-serialisable.
EventSink = Callable[[EventKind, str, dict[str, Any]], None]


class Cancelled(Exception):
    """Raised at a layer boundary when the caller asked to stop."""


def _discard(kind: EventKind, stage: str, data: dict[str, Any]) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class RunContext:
    sink: EventSink = _discard
    should_cancel: Callable[[], bool] = _never
    extra: dict[str, Any] = field(default_factory=dict)

    def progress(self, stage: str, step: float, total: float, **data: Any) -> None:
        """Report that ``step`` of ``total`` units (usually layers, 1-based) of ``stage`` are done."""
        self.sink("progress", stage, {"step": step, "total": total, **data})

    def message(self, stage: str, text: str, level: str = "info") -> None:
        self.sink("message", stage, {"text": text, "level": level})

    def metrics(self, stage: str, values: dict[str, Any]) -> None:
        self.sink("metrics", stage, values)

    def check_cancelled(self) -> None:
        if self.should_cancel():
            raise Cancelled()
