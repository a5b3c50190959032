"""Perplexity on held-out token windows.

ppl = exp( sum over windows w, positions t >= 1 of -log p(x[w,t] | x[w,<t]) / (n_windows * (seq_len - 1)) )
Each window is scored on its own (no context carried over), so the first token of a window is never
predicted; with equal-length windows this equals exp(mean over windows of the model's mean loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

# Windows per forward pass are bounded by tokens so that logits [B, T, V] stay a few GB at most.
TOKENS_PER_BATCH = 8192


def batches(wins: torch.Tensor) -> Iterator[torch.Tensor]:
    """Consecutive groups of windows holding about TOKENS_PER_BATCH tokens."""
    per = max(1, TOKENS_PER_BATCH // wins.shape[1])
    yield from wins.split(per)


@torch.inference_mode()
def next_token_logprobs(model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
    """[B, T-1, V] float32 log-probabilities of the token following each position but the last."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch.to(device)).logits  # [B, T, V]
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


@torch.inference_mode()
def perplexity(
    model: PreTrainedModel, wins: torch.Tensor, on_batch: Callable[[int, int], None] | None = None
) -> dict[str, float | int]:
    """Perplexity of ``model`` over ``wins`` [N, T]; ``on_batch(done, total)`` after every forward pass."""
    total_nll, tokens = 0.0, 0
    groups = list(batches(wins))
    for i, batch in enumerate(groups, 1):
        logprobs = next_token_logprobs(model, batch)  # [B, T-1, V]
        targets = batch[:, 1:].to(logprobs.device)  # [B, T-1]
        total_nll += -logprobs.gather(-1, targets.unsqueeze(-1)).sum().item()
        tokens += targets.numel()
        if on_batch is not None:
            on_batch(i, len(groups))
    mean_nll = total_nll / tokens
    return {"ppl": math.exp(mean_nll), "nll": mean_nll, "tokens": tokens, "windows": int(wins.shape[0])}
