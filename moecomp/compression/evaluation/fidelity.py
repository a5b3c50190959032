"""Fidelity to the original: KL(original || candidate) of next-token distributions, top-1 agreement.

The original runs first (possibly in an earlier job) and keeps, per position, its k most likely tokens
and their log-probabilities; the candidate is compared against that reference:

  KL_k(P || Q) = sum_{i in topk(P)} P_i (log P_i - log Q_i) + P_r (log P_r - log Q_r),
  P_r = 1 - sum_{i in topk(P)} P_i,   Q_r = 1 - sum_{i in topk(P)} Q_i

i.e. the exact KL between P and Q with every token outside the original's top k merged into one
bucket. It is a lower bound of the full KL (merging outcomes never increases a divergence) and
equals it when k >= vocabulary size, where the bucket is left out. Keeping k entries instead of the
vocabulary makes the reference small enough to cache (k=256: 2 KB per token).
top1_agreement = mean over positions of [argmax Q == argmax P].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomp.compression.evaluation.perplexity import batches, next_token_logprobs


@dataclass
class FidelityReference:
    indices: torch.Tensor  # [N, k] int64, the original's top-k token ids per position, most likely first
    logprobs: torch.Tensor  # [N, k] float32, their log-probabilities
    top1: torch.Tensor  # [N] int64, argmax of the original (ties broken as argmax does, not as topk does)
    vocab_size: int

    @property
    def exact(self) -> bool:
        return self.indices.shape[1] >= self.vocab_size

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {
            "indices": self.indices,
            "logprobs": self.logprobs,
            "top1": self.top1,
            "vocab_size": torch.tensor(self.vocab_size),
        }

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> FidelityReference:
        return cls(d["indices"], d["logprobs"], d["top1"], int(d["vocab_size"]))


def fidelity_windows(wins: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """The first windows of ``wins`` holding at most ``max_tokens`` tokens (at least one window)."""
    return wins[: max(1, max_tokens // wins.shape[1])]


@torch.inference_mode()
def reference(model, wins: torch.Tensor, topk: int) -> FidelityReference:
    """The original's top-``topk`` next-token log-probabilities at every position of ``wins``."""
    idx, lps, top1, vocab = [], [], [], 0
    for batch in batches(wins):
        logprobs = next_token_logprobs(model, batch)  # [B, T-1, V]
        vocab = logprobs.shape[-1]
        top = logprobs.topk(min(topk, vocab), dim=-1)  # sorted, most likely first
        idx.append(top.indices.flatten(0, 1).cpu())
        lps.append(top.values.flatten(0, 1).cpu())
        # bf16 logits tie often; argmax on both sides makes an identical model agree everywhere.
        top1.append(logprobs.argmax(-1).flatten().cpu())
    return FidelityReference(torch.cat(idx), torch.cat(lps), torch.cat(top1), vocab)


def divergence(ref_idx: torch.Tensor, ref_lp: torch.Tensor, cand_lp: torch.Tensor, exact: bool) -> torch.Tensor:
    """Per-position KL_k(P || Q) [N] from the reference top-k [N, k] and the candidate's log-probs [N, V]."""
    cand_k = cand_lp.gather(-1, ref_idx)  # [N, k]
    kl = (ref_lp.exp() * (ref_lp - cand_k)).sum(-1)  # [N]
    if exact:
        return kl
    p_rest = (1 - ref_lp.exp().sum(-1)).clamp(min=0)  # [N]
    q_rest = (1 - cand_k.exp().sum(-1)).clamp(min=1e-12)  # [N]
    return kl + torch.xlogy(p_rest, p_rest) - torch.xlogy(p_rest, q_rest)


@torch.inference_mode()
def compare(model, wins: torch.Tensor, ref: FidelityReference) -> dict[str, float | int | bool]:
    """Mean KL_k(original || candidate) and top-1 agreement of ``model`` against ``ref`` over ``wins``."""
    kl_sum, agree, n, start = 0.0, 0, 0, 0
    for batch in batches(wins):
        cand = next_token_logprobs(model, batch).flatten(0, 1)  # [B*(T-1), V], on the model's device
        stop = start + cand.shape[0]
        # The reference slice goes to the device, not the [N, V] log-probs to the host.
        ref_idx, ref_lp = ref.indices[start:stop].to(cand.device), ref.logprobs[start:stop].to(cand.device)
        kl_sum += divergence(ref_idx, ref_lp, cand, ref.exact).sum().item()
        agree += int((cand.argmax(-1) == ref.top1[start:stop].to(cand.device)).sum().item())
        n, start = n + cand.shape[0], stop
    if n != ref.indices.shape[0]:
        raise ValueError(f"reference covers {ref.indices.shape[0]} positions, candidate {n}")
    return {
        "kl_mean": kl_sum / n,
        "top1_agreement": agree / n,
        "tokens": n,
        "topk": ref.indices.shape[1],
        "exact": ref.exact,
    }
