"""Packed W4A16 modules: routed experts served through transformers' experts interface, and a linear.

Experts (per MoE layer, fused as transformers 5 fuses them): ``gate_up_packed [E, 2I, H/8]`` int32 with
``gate_up_scale [E, 2I, H/g]`` and ``down_packed [E, H, I/8]`` with ``down_scale [E, H, I/g]``, kept as buffers
of the family's own experts module, whose forward dispatches on ``config._experts_implementation``:
registered here as "w4a16", it computes for each token t and each of its top-k experts e with weight w

    y_t += w * down_e(act(gate_e(x_t)) * up_e(x_t))      (int4 weights dequantized group-wise, see reference)

exactly the arithmetic of transformers' batched_mm/grouped_mm on the dequantized weights. The routed forward
(:func:`routed_experts_forward`) and :func:`pack_experts` serve the "fp8" experts too (:mod:`.fp8`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from moecomp.compression.evaluation.packed import reference
from moecomp.compression.evaluation.packed.ops import grouped_matmul

IMPLEMENTATION = "w4a16"
EXPERT_BUFFERS = ("gate_up_packed", "gate_up_scale", "down_packed", "down_scale")


# The product over routed pairs: (x, ids, stored weights, scale, row_div) -> out [S, N].
RoutedMatmul = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def routed_experts_forward(
    self: Any,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    matmul: RoutedMatmul,
    stored: str,
) -> torch.Tensor:
    """hidden_states [T, H], top_k_index/weights [T, k] -> [T, H] through the experts' ``gate_up_<stored>`` /
    ``down_<stored>`` buffers and their scales: the arithmetic of transformers' batched_mm (the experts' biases
    added to each product in its dtype where they have them, ``_apply_gate``, routing weights, sum over a token's
    k pairs in its dtype)."""
    num_tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]
    ids = top_k_index.reshape(-1)  # [S = T * k], pair p = t * k + slot
    has_bias = getattr(self, "has_bias", False)
    gate_up = matmul(hidden_states, ids, getattr(self, f"gate_up_{stored}"), self.gate_up_scale, top_k)  # [S, 2I]
    if has_bias:
        gate_up = gate_up + self.gate_up_proj_bias[ids]
    act = self._apply_gate(gate_up)  # [S, I]
    down = matmul(act, ids, getattr(self, f"down_{stored}"), self.down_scale, 1)  # [S, H]
    if has_bias:
        down = down + self.down_proj_bias[ids]
    weighted = down * top_k_weights.reshape(-1, 1)  # [S, H]
    return weighted.view(num_tokens, top_k, hidden).sum(dim=1).to(hidden_states.dtype)


def w4a16_experts_forward(
    self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """The "w4a16" experts implementation: int4 buffers through moecomp::w4a16_grouped_matmul."""
    return routed_experts_forward(self, hidden_states, top_k_index, top_k_weights, grouped_matmul, "packed")


ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, w4a16_experts_forward)


def pack_experts(experts: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Turn a family's experts module into a packed one: its dense gate_up_proj/down_proj give way to the buffers
    in ``tensors`` (EXPERT_BUFFERS, or fp8.EXPERT_BUFFERS), [E, out, in] whatever the module's own layout, with
    gate_up's rows in the order its ``_apply_gate`` reads them (the loader stacks them so); biases, where the
    experts have them (gpt-oss), stay its parameters. Only gated experts."""
    if not getattr(experts, "has_gate", True):
        raise ValueError(f"{type(experts).__name__}: only gated experts can be served packed")
    for name in ("gate_up_proj", "down_proj"):
        delattr(experts, name)
    for name, tensor in tensors.items():
        experts.register_buffer(name, tensor)


class W4A16Linear(nn.Module):
    """nn.Linear with a pack-quantized weight: ``weight_packed [out, in/8]`` int32, ``weight_scale [out, in/g]``;
    the experts' operator with one expert."""

    weight_packed: torch.Tensor
    weight_scale: torch.Tensor
    bias: nn.Parameter | None

    def __init__(self, weight_packed: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_packed.shape[1] * 8, weight_packed.shape[0]
        self.register_buffer("weight_packed", weight_packed)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [M, K]
        ids = torch.zeros(flat.shape[0], dtype=torch.long, device=x.device)  # every row to the one "expert"
        bias = None if self.bias is None else self.bias.unsqueeze(0)
        out = grouped_matmul(flat, ids, self.weight_packed.unsqueeze(0), self.weight_scale.unsqueeze(0), 1, bias)
        return out.view(*x.shape[:-1], -1)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight stock transformers holds, dequantized on each read: never by this module's forward,
        only by model code that reads a linear's weight (deepseek_v32's indexer casts its input to its dtype)."""
        return reference.dequantize(self.weight_packed, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# Linears of one module that its forward calls on the same input, in this order (every family's attention).
SIBLINGS = ("q_proj", "k_proj", "v_proj")


class FusedW4A16Linear(W4A16Linear):
    """The first of sibling linears (SIBLINGS), holding all their weights stacked: its call computes every
    sibling's output in one W4A16 product and keeps the others' until they are called on the same input
    (:class:`W4A16Sibling`); the last one's call lets them go.

    At batch 1 the small projections are bound by launch and latency, not by their weights: on an H100 one
    decode step's q_proj, k_proj and v_proj GEMVs took 12.6 + 6.7 + 6.7 us (w4a16_gemv_h100.json) for 1.5 times
    q_proj's weights. torch.compile traces the keeping as a side effect that ends cleared, so the compiled step
    gains no output."""

    def __init__(self, linears: list[W4A16Linear]) -> None:
        biases = [linear.bias for linear in linears]
        bias = None if biases[0] is None else torch.cat([b.data for b in biases if b is not None])
        super().__init__(
            torch.cat([linear.weight_packed for linear in linears]),
            torch.cat([linear.weight_scale for linear in linears]),
            bias,
        )
        self.sizes = [linear.out_features for linear in linears]
        self.out_features = self.sizes[0]
        self._kept: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = super().forward(x).split(self.sizes, dim=-1)
        self._kept = (x, outputs)
        return outputs[0]

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Sibling ``index``'s output, computed by the last call on ``x``."""
        if self._kept is None or self._kept[0] is not x:
            raise RuntimeError(f"fused linears: sibling {index} called before the first one on its input")
        out = self._kept[1][index]
        if index == len(self.sizes) - 1:
            self._kept = None
        return out

    def sibling_weight(self, index: int) -> torch.Tensor:
        """Sibling ``index``'s dense weight: its rows of the stack, dequantized (see W4A16Linear.weight)."""
        start = sum(self.sizes[:index])
        rows = slice(start, start + self.sizes[index])
        return reference.dequantize(self.weight_packed[rows], self.weight_scale[rows])

    @property
    def weight(self) -> torch.Tensor:
        return self.sibling_weight(0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fused={self.sizes}"


class W4A16Sibling(nn.Module):
    """A sibling linear after the first: its output comes from the first's fused product (FusedW4A16Linear)."""

    fused: FusedW4A16Linear

    def __init__(self, fused: FusedW4A16Linear, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a submodule: the weights are the first sibling's
        self.index = index
        self.in_features, self.out_features = fused.in_features, fused.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.output(x, self.index)

    @property
    def weight(self) -> torch.Tensor:
        return self.fused.sibling_weight(self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused into the first sibling"


def fuse_siblings(model: nn.Module) -> int:
    """Stack every module's W4A16 SIBLINGS into one product (FusedW4A16Linear); returns how many modules."""
    fused = 0
    for module in list(model.modules()):
        linears = [linear for name in SIBLINGS if type(linear := getattr(module, name, None)) is W4A16Linear]
        if len(linears) < len(SIBLINGS):
            continue
        if len({(lin.in_features, lin.weight_scale.shape[1], lin.bias is None) for lin in linears}) > 1:
            continue  # a different input width, group or bias: not one product
        first = FusedW4A16Linear(linears)
        setattr(module, SIBLINGS[0], first)
        for index, name in enumerate(SIBLINGS[1:], start=1):
            setattr(module, name, W4A16Sibling(first, index))
        fused += 1
    return fused
