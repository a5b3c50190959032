"""Held-out text as token windows: the data every quality measurement of a run shares.

Documents are tokenized without special tokens, each followed by EOS, concatenated, cut to
``max_tokens`` and split into non-overlapping windows of ``seq_len`` tokens (a last partial window is
dropped unless it would be the only one).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from moecomp.compression.data import read_documents


def token_stream(documents: Iterable[str], tokenizer, max_tokens: int) -> list[int]:
    """Concatenated ids of ``documents`` (each + EOS), at most ``max_tokens`` of them."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def windows(ids: list[int], seq_len: int) -> torch.Tensor:
    """[n_windows, seq_len] int64 non-overlapping windows over ``ids``."""
    n = len(ids) // seq_len
    if n == 0:
        if len(ids) < 2:
            raise ValueError(f"held-out text too short: {len(ids)} tokens")
        return torch.tensor([ids], dtype=torch.long)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def source_windows(source: str, tokenizer, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Windows of one held-out source (see :func:`moecomp.compression.data.read_documents`)."""
    return windows(token_stream(read_documents(source), tokenizer, max_tokens), seq_len)
