"""Fixtures of the evaluation tests: the trained tiny Mixtral in float32, so comparisons can be exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from moecomp.compression.evaluation.loading import LoadedModel, load_checkpoint


@pytest.fixture(scope="session")
def mixtral32(tiny_mixtral_dir: Path) -> LoadedModel:
    return load_checkpoint(tiny_mixtral_dir, dtype="float32")
