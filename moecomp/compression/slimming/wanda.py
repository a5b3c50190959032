"""Wanda (Sun et al. 2023) over a batch of matrices: score |W_ij| * ||X_j||_2, lowest per row (or N:M).

||X_j||^2 is the diagonal of the input statistics (:mod:`.statistics`: the tokens routed to each expert).
An entry without any input falls back to magnitude scores (||X_j|| = 1) and is reported. Per batch entry
this is llm-compressor's ``wanda_sparsify.sparsify_weight`` (the reference in the tests).
"""

from __future__ import annotations

import torch

from moecomp.compression.methods.pruning import WandaConfig
from moecomp.compression.slimming.magnitude import lowest_mask
from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.statistics import InputStats


@torch.no_grad()
def slim(
    config: WandaConfig, weight: torch.Tensor, stats: InputStats, group_size: int | None, scale_dtype: torch.dtype
) -> Slimmed:
    batch = weight.shape[0]
    norms = stats.entry_square_norms(batch)  # [B, in], a copy
    counts = stats.entry_counts(batch)
    empty = (counts == 0).nonzero().flatten().tolist()
    norms[empty] = 1.0
    score = weight.abs().float() * norms.sqrt()[:, None, :]  # [B, out, in]
    n, m = config.n_m
    mask = lowest_mask(score, config.target_sparsity, n, m, per_row=True)
    return Slimmed(weight.masked_fill(mask, 0), fallbacks=empty)
