"""W4A16 arithmetic in plain torch: the slow, obvious definition the Triton kernels are checked against.

A ``pack-quantized`` int4 symmetric linear (compressed-tensors) stores q in [-8, 7] as q + 8, eight values per
int32 word along the input axis, value j of a word in bits 4j..4j+3: ``packed [N, K/8]``. With one scale per row
and group of g input columns, ``scale [N, K/g]``, the weight it computes with is

    W[n, k] = q[n, k] * scale[n, k // g]        (rounded to the scale's dtype, as compressed-tensors does)

and the grouped product over routed pairs (token t sent to expert e = ids[p], p = t * top_k + slot) is

    out[p] = x[p // row_div] @ W[ids[p]].T      (row_div = top_k for gate/up, 1 for down)

plus a linear's bias, where it has one, added before rounding (as nn.Linear does).
"""

from __future__ import annotations

import torch

BITS = 4
PER_WORD = 32 // BITS  # int4 values per int32 word
OFFSET = 1 << (BITS - 1)  # stored value = q + 8


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int8 q in [-8, 7], [..., K], from int32 words [..., K/8]."""
    shifts = torch.arange(0, 32, BITS, device=packed.device, dtype=torch.int32)  # [8]
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF  # [..., K/8, 8]
    return (nibbles.flatten(-2) - OFFSET).to(torch.int8)  # [..., K]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int32 words [..., K/8] from q in [-8, 7], [..., K] (the inverse of unpack_int4)."""
    nibbles = (q.to(torch.int32) + OFFSET).unflatten(-1, (-1, PER_WORD))  # [..., K/8, 8]
    shifts = torch.arange(0, 32, BITS, device=q.device, dtype=torch.int32)
    return (nibbles << shifts).sum(-1, dtype=torch.int32)  # bits never overlap: the sum is an OR


def dequantize(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Dense W [..., N, K] in ``scale``'s dtype from packed [..., N, K/8] and scale [..., N, K/g]."""
    q = unpack_int4(packed)  # [..., N, K]
    group = q.shape[-1] // scale.shape[-1]
    return q.to(scale.dtype) * scale.repeat_interleave(group, dim=-1)


def grouped_matmul(
    x: torch.Tensor,
    ids: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    row_div: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """out [S, N] with out[p] = x[p // row_div] @ W[ids[p]].T (+ bias[ids[p]]); x [S / row_div, K],
    packed [E, N, K/8], bias [E, N] (added before rounding, as nn.Linear does)."""
    out = x.new_empty(ids.shape[0], packed.shape[1])  # [S, N]
    for e in torch.unique(ids).tolist():
        pairs = torch.nonzero(ids == e).squeeze(-1)  # [S_e]
        weight = dequantize(packed[e], scale[e]).to(x.dtype)  # [N, K]
        out[pairs] = torch.nn.functional.linear(x[pairs // row_div], weight, None if bias is None else bias[e])
    return out
