"""The grouped product over routed pairs with dense expert weights, shared by the packed runtimes' prefill paths.

    out[p] = x[p // row_div] @ W[ids[p]].T      (row_div = top_k for gate/up, 1 for down)

Pairs are sorted by expert and multiplied by one torch.nn.functional.grouped_mm (a tensor-core grouped GEMM on
CUDA in bfloat16; any float dtype on a CPU), exactly as transformers' grouped_mm experts implementation does:
the same sort, the same rows, the same kernel, so on the same dense weights the products are the same bits.
Tensor ops only (expert counts by scatter_add, not bincount, which reads its maximum on the host): a CUDA graph
captures it.
"""

from __future__ import annotations

import torch


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """torch.nn.functional.grouped_mm's CUDA kernel takes bfloat16 only; its CPU kernel any float dtype."""
    return x.dtype == torch.bfloat16 or x.device.type == "cpu"


def dense_grouped_matmul(x: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor, row_div: int) -> torch.Tensor:
    """out [S, N] from x [S / row_div, K], ids [S] (expert of each pair) and dense weight [E, N, K] in x's dtype."""
    experts = weight.shape[0]
    sorted_ids, order = torch.sort(ids)  # [S]
    ones = torch.ones_like(sorted_ids, dtype=torch.int32)
    counts = torch.zeros(experts, dtype=torch.int32, device=ids.device).scatter_add_(0, sorted_ids, ones)  # [E]
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    product = torch.nn.functional.grouped_mm(x[order // row_div], weight.transpose(-2, -1), offs=offsets)  # [S, N]
    out = torch.empty_like(product)
    out[order] = product
    return out
