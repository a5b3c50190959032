"""Magnitude pruning over a batch of matrices: zero the lowest |W_ij| of each matrix, or N:M per row (no data).

Per batch entry exactly :func:`moecomp.compression.methods.pruning.magnitude_mask` (the reference).
"""

from __future__ import annotations

import torch

from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.statistics import InputStats


def lowest_mask(score: torch.Tensor, fraction: float, n: int, m: int, per_row: bool) -> torch.Tensor:
    """True where pruned, for scores [B, out, in]: the ``n`` lowest of every ``m`` consecutive columns of a
    row, or the lowest ``fraction`` of each row (``per_row``) or of each whole matrix."""
    batch, rows, cols = score.shape
    if m:
        groups = score.reshape(batch, rows, cols // m, m)
        lowest = groups.topk(n, dim=-1, largest=False).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True).reshape(score.shape)
    flat = score.reshape(batch, rows, cols) if per_row else score.reshape(batch, 1, rows * cols)
    k = int(flat.shape[-1] * fraction)
    order = flat.argsort(dim=-1, stable=True)[..., :k]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, order, True).reshape(score.shape)


@torch.no_grad()
def slim(
    config: object, weight: torch.Tensor, stats: InputStats | None, group_size: int | None, scale_dtype: torch.dtype
) -> Slimmed:
    n, m = config.n_m  # type: ignore[attr-defined]
    mask = lowest_mask(weight.abs().float(), config.target_sparsity, n, m, per_row=False)  # type: ignore[attr-defined]
    return Slimmed(weight.masked_fill(mask, 0))
