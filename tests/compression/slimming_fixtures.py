"""Calibration and held-out token batches and a perplexity loop shared by the slimming tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moecomp.compression.data import pack_documents, read_documents

SOURCES = ("shakespeare", "kjv", "fortunes", "python")


def calibration_ids(model_dir: Path, samples: int, seq_len: int, docs_per_source: int = 30) -> torch.Tensor:
    """[samples, seq_len] from all four bundled texts (held-out documents already removed from them)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs = [doc for name in SOURCES for doc in read_documents(f"bundled:{name}")[:docs_per_source]]
    return pack_documents(docs, tokenizer, samples=samples, seq_len=seq_len, seed=0)


def heldout_ids(model_dir: Path, samples: int = 16, seq_len: int = 256) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return pack_documents(read_documents("bundled:heldout"), tokenizer, samples=samples, seq_len=seq_len)


@torch.no_grad()
def perplexity(model_dir: Path, ids: torch.Tensor, batch: int = 4) -> float:
    """exp(mean next-token loss) of the checkpoint reloaded from disk with plain transformers, in its own
    dtype (asking a compressed-tensors checkpoint for float32 leaves its bf16 router and experts bf16)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    losses = [model(ids[i : i + batch], labels=ids[i : i + batch]).loss for i in range(0, len(ids), batch)]
    return float(torch.stack(losses).mean().exp())
