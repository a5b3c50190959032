"""Checkpoints of the bundled tiny Mixtral and Qwen2-MoE written by the streamed slimming pass: W4A16 (RTN int4)
and FP8 (e4m3 per channel, dynamic per-token inputs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from moecomp.compression.context import RunContext
from moecomp.compression.methods.base import StageConfig
from moecomp.compression.methods.quantization import FP8Config, RTNConfig
from moecomp.compression.slimming.run import run_streamed
from moecomp.compression.structure import Decisions


def write_slimmed(source: Path, out: Path, stage: StageConfig) -> Path:
    """``stage`` on every expert and attention linear (routers, embeddings and lm_head stay bf16)."""
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    run_streamed(
        source, [stage], ids, out, prior=Decisions(), device="cpu", dtype=torch.bfloat16,
        save_dtype=torch.bfloat16, ctx=RunContext(),
    )  # fmt: skip
    return out


def write_w4a16(source: Path, out: Path) -> Path:
    """RTN int4 g128."""
    return write_slimmed(source, out, RTNConfig())


def write_fp8(source: Path, out: Path) -> Path:
    """moecomp's FP8 stage (e4m3, one scale per output channel, dynamic per-token inputs). The stage asks for FP8
    hardware because its checkpoint is meant for it; writing one needs none (round-to-nearest e4m3 on the CPU, as
    tests/compression/slimming/test_streamed.py does)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FP8Config, "check_device", lambda self, device: None)
        return write_slimmed(source, out, FP8Config())


def _write_each(
    tmp_path_factory: pytest.TempPathFactory, name: str, write: Callable[[Path, Path], Path], *sources: Path
) -> dict[str, Path]:
    """``write`` on each fixture model (tiny Mixtral, tiny Qwen2-MoE), keyed by family."""
    root = tmp_path_factory.mktemp(name)
    families = zip(("mixtral", "qwen2_moe"), sources, strict=True)
    return {family: write(source, root / family) for family, source in families}


@pytest.fixture(scope="session")
def packed_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_mixtral_dir: Path, tiny_qwen2_moe_dir: Path
) -> dict[str, Path]:
    return _write_each(tmp_path_factory, "w4a16", write_w4a16, tiny_mixtral_dir, tiny_qwen2_moe_dir)


@pytest.fixture(scope="session")
def fp8_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_mixtral_dir: Path, tiny_qwen2_moe_dir: Path
) -> dict[str, Path]:
    return _write_each(tmp_path_factory, "fp8", write_fp8, tiny_mixtral_dir, tiny_qwen2_moe_dir)
