"""Pack-quantized checkpoints of the bundled tiny Mixtral and Qwen2-MoE, written by the streamed RTN pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moecomp.compression.context import RunContext
from moecomp.compression.methods.quantization import RTNConfig
from moecomp.compression.slimming.run import run_streamed
from moecomp.compression.structure import Decisions


def write_w4a16(source: Path, out: Path) -> Path:
    """RTN int4 g128 of every expert and attention linear (routers, embeddings and lm_head stay bf16)."""
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    run_streamed(
        source, [RTNConfig()], ids, out, prior=Decisions(), device="cpu", dtype=torch.bfloat16,
        save_dtype=torch.bfloat16, ctx=RunContext(),
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def packed_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_mixtral_dir: Path, tiny_qwen2_moe_dir: Path
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("w4a16")
    sources = {"mixtral": tiny_mixtral_dir, "qwen2_moe": tiny_qwen2_moe_dir}
    return {family: write_w4a16(source, root / family) for family, source in sources.items()}
