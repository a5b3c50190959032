"""The one W4A16 operator every packed module calls: out[p] = x[p // row_div] @ W[ids[p]].T.

Registered as the custom op ``moecomp::w4a16_grouped_matmul`` so that torch.compile treats it as one opaque
call (its CUDA path sorts and pads routed pairs with tensor ops only: no host sync, so a CUDA graph captures
it). On CUDA it runs the Triton kernels of :mod:`.triton_kernels` (imported only there); elsewhere the plain
torch definition of :mod:`.reference`.
"""

from __future__ import annotations

import torch

from moecomp.compression.evaluation.packed import reference


@torch.library.custom_op("moecomp::w4a16_grouped_matmul", mutates_args=())
def _w4a16_grouped_matmul(
    x: torch.Tensor,
    ids: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    row_div: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    if x.is_cuda:
        from moecomp.compression.evaluation.packed import triton_kernels

        return triton_kernels.grouped_matmul(x, ids, packed, scale, row_div, bias)
    return reference.grouped_matmul(x, ids, packed, scale, row_div, bias)


@_w4a16_grouped_matmul.register_fake
def _(x: torch.Tensor, ids: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, row_div: int, bias=None):
    return x.new_empty(ids.shape[0], packed.shape[1])


def grouped_matmul(
    x: torch.Tensor,
    ids: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    row_div: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """out [S, N] from x [S / row_div, K], ids [S] (expert of each pair), packed [E, N, K/8], scale [E, N, K/g],
    bias [E, N] or None."""
    return _w4a16_grouped_matmul(x.contiguous(), ids.contiguous(), packed, scale, row_div, bias)


def reserve_scratch(device: torch.device) -> None:
    """Allocate what the CUDA kernels keep between calls before CUDA graphs capture them (see triton_kernels)."""
    if device.type == "cuda":
        from moecomp.compression.evaluation.packed import triton_kernels

        triton_kernels.reserve_scratch(device)
