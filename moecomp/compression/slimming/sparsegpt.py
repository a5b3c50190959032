"""SparseGPT (Frantar & Alistarh 2023) over a batch of matrices: GPTQ's OBS update with a pruning mask.

For each batch entry: H = 2 X^T X / n (dampened), U = chol(H^-1) upper. Per block of ``block_size``
columns, the mask prunes the lowest w_ij^2 / U_jj^2 (the block's fraction, or N:M chosen every M columns);
column by column the pruned weights are zeroed and the error is pushed onto the block's later columns, then
onto the later blocks. Per batch entry this is llm-compressor's ``sgpt_sparsify.sparsify_weight`` (the
reference in the tests); entries without input use H = I (magnitude-like pruning) and are reported.
"""

from __future__ import annotations

import torch

from moecomp.compression.slimming.gptq import chunk_size, identity_where_empty
from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.statistics import InputStats


def inverse_cholesky(hessians: torch.Tensor, weight: torch.Tensor, damp_frac: float) -> torch.Tensor:
    """Upper Cholesky factor of the dampened H^-1, [B, in, in]; dead columns (H_jj = 0) zeroed in ``weight``."""
    diag = hessians.diagonal(dim1=-2, dim2=-1)
    dead = diag == 0
    diag.masked_fill_(dead, 1.0)
    weight.masked_fill_(dead[:, None, :], 0)
    diag.add_(damp_frac * diag.mean(dim=-1, keepdim=True))
    lower = torch.linalg.cholesky(hessians)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def _block_mask(w1: torch.Tensor, hinv1: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured mask of one block [B, out, c]: the lowest w^2 / d^2 of each entry's block."""
    score = w1.square() / hinv1.diagonal(dim1=-2, dim2=-1)[:, None, :].square()
    flat = score.flatten(1)
    thresh = flat.sort(dim=-1).values[:, int(flat.shape[1] * sparsity)]
    return score <= thresh[:, None, None]


def _prune_block(w1: torch.Tensor, hinv1: torch.Tensor, sparsity: float, n: int, m: int) -> torch.Tensor:
    """Prune one block in place (OBS updates inside it); returns the errors [B, out, c] for later blocks."""
    count = w1.shape[-1]
    mask = _block_mask(w1, hinv1, sparsity) if not n else torch.zeros_like(w1, dtype=torch.bool)
    errors = torch.zeros_like(w1)
    diag = hinv1.diagonal(dim1=-2, dim2=-1)  # [B, c]
    for i in range(count):
        if n and i % m == 0:
            score = w1[:, :, i : i + m].square() / diag[:, None, i : i + m].square()
            mask.scatter_(2, i + score.topk(n, dim=2, largest=False).indices, True)
        w = w1[:, :, i]
        q = w.masked_fill(mask[:, :, i], 0)
        err = (w - q) / diag[:, i, None]  # [B, out]
        w1[:, :, i:] -= err[:, :, None] * hinv1[:, None, i, i:]
        w1[:, :, i] = q
        errors[:, :, i] = err
    return errors


@torch.no_grad()
def prune(weight: torch.Tensor, hessians: torch.Tensor, config: object) -> torch.Tensor:
    """Pruned copy of weight [B, out, in] (float32) given H [B, in, in] (consumed)."""
    n, m = config.n_m  # type: ignore[attr-defined]
    sparsity, block = config.target_sparsity, config.block_size  # type: ignore[attr-defined]
    w = weight.float().clone()
    hinv = inverse_cholesky(hessians, w, config.dampening_frac)  # type: ignore[attr-defined]
    cols = w.shape[-1]
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, :, i1:i2].clone()
        errors = _prune_block(w1, hinv[:, i1:i2, i1:i2], sparsity, n, m)
        w[:, :, i1:i2] = w1
        w[:, :, i2:] -= torch.bmm(errors, hinv[:, i1:i2, i2:])
    return w


def slim(
    config: object, weight: torch.Tensor, stats: InputStats, group_size: int | None, scale_dtype: torch.dtype
) -> Slimmed:
    batch, rows, cols = weight.shape
    counts = stats.entry_counts(batch)
    out = torch.empty_like(weight)
    fallbacks: list[int] = []
    step = chunk_size(rows, cols)
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        hessians = stats.hessians(start, stop)
        fallbacks += [start + b for b in identity_where_empty(hessians, counts[start:stop])]
        out[start:stop] = prune(weight[start:stop], hessians, config).to(weight.dtype)
    return Slimmed(out, fallbacks=fallbacks)
