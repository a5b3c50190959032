"""benchmarks/make_random_checkpoint.py writes every preset in the on-disk layout the installed transformers loads."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = runpy.run_path(str(ROOT / "benchmarks" / "make_random_checkpoint.py"))


@pytest.mark.parametrize("preset", sorted(MODULE["PRESETS"]))
def test_tiny_preset_matches_save_pretrained_and_loads(preset: str, tmp_path: Path) -> None:
    # no missing, unexpected or reshaped tensor against save_pretrained's; loaded experts equal the written ones
    assert MODULE["check_preset"](preset, tmp_path) == []
