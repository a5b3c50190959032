"""Check the text sources a job names (calibration texts, held-out perplexity texts) before it is stored.

A source is ``bundled:NAME``, ``hub:DATASET[:CONFIG]:SPLIT`` or a local file. The worker reads a local file
as it is named, so without this check a request could make it read (and tokenize, whole, into memory) any
``.txt`` or ``.jsonl`` file on its machine, another team's upload included. A local source must therefore be
an absolute path that resolves under an allowed model root (settings.allowed_model_roots) and outside the
service's data folder, like a local model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from moecomp.api.errors import Invalid
from moecomp.api.schemas import JobCreate
from moecomp.compression.data import CalibrationSourceError, bundled_names, parse_hub_source
from moecomp.settings import Settings

Loc = tuple[str | int, ...]


def _check_local(source: str, loc: Loc, settings: Settings) -> None:
    path = Path(source)
    if not path.is_absolute():
        raise Invalid(loc, "a local text source must be an absolute path (or bundled:NAME, hub:DATASET:SPLIT)", source)
    try:
        resolved = path.resolve()
        is_file = resolved.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long, a symlink loop
        resolved, is_file = path, False
    roots = [root.resolve() for root in settings.allowed_model_roots]
    inside = any(resolved.is_relative_to(root) for root in roots)
    if not inside or resolved.is_relative_to(settings.data_dir.resolve()):
        raise Invalid(loc, "a local text source must lie under an allowed model root", source)
    if not is_file:
        raise Invalid(loc, "no such text file", source)


def check_text_source(source: str, loc: Loc, settings: Settings) -> None:
    """422 at ``loc`` for an unknown bundled text, a malformed hub source or a local file outside the roots."""
    if source.startswith("bundled:"):
        if source.removeprefix("bundled:") not in bundled_names():
            raise Invalid(loc, f"unknown bundled text; available: {', '.join(bundled_names())}", source)
    elif source.startswith("hub:"):
        try:
            parse_hub_source(source)
        except CalibrationSourceError as exc:
            raise Invalid(loc, str(exc), source) from None
    else:
        _check_local(source, loc, settings)


def _check_all(sources: Sequence[str], loc: Loc, settings: Settings) -> None:
    for i, source in enumerate(sources):
        check_text_source(source, (*loc, i), settings)


def check_text_sources(payload: JobCreate, settings: Settings) -> None:
    """Every calibration and perplexity source of ``payload`` (see check_text_source)."""
    _check_all(payload.recipe.calibration.sources, ("body", "recipe", "calibration", "sources"), settings)
    _check_all(payload.evaluation.perplexity, ("body", "evaluation", "perplexity"), settings)
