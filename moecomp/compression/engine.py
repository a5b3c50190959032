"""Layer-by-layer calibration in bounded memory (the shape of llm-compressor's sequential pipeline).

One pass: build the model skeleton on ``meta``; embed the calibration ids (the model's own forward,
stopped at the first decoder layer); then for each decoder layer: load only its weights, apply the
decisions already taken (sliced experts, dropped MoE sub-layer; dropped blocks are skipped), attach
the observers' hooks, run the whole batch through it in micro-batches, let observers decide on the
layer if they do so in-pass (iterative expert drop: the layer is then re-run so that later layers see
the trimmed one), keep its outputs as the next layer's inputs, free it. See
:mod:`moecomp.compression.activations` for the memory formula and placement.

Every index an observer sees is the ORIGINAL model's numbering (layers and experts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moecomp.compression.activations import Plan, build_skeleton, capture, layer_kwargs, make_plan
from moecomp.compression.adapters import MoEFamily
from moecomp.compression.context import RunContext
from moecomp.compression.lazy_checkpoint import WeightSource, assign_tensors, layer_prefix, state_names
from moecomp.compression.observers import LayerInfo, Observer, SelectContext, Trimmer
from moecomp.compression.structure import Decisions, drop_moe_sublayer, is_moe_layer, slice_experts

__all__ = ["LayerInfo", "Observer", "PassResult", "SelectContext", "Trimmer", "calibrate", "load_layer"]


@dataclass
class PassResult:
    decisions: Decisions  # taken in-pass by observers (original numbering)
    plan: Plan
    tokens: int


def _layer_info(idx: int, position: int, layer: nn.Module, prior: Decisions, family: MoEFamily, n: int) -> LayerInfo:
    moe = is_moe_layer(layer, family.layout)
    ids: tuple[int, ...] = ()
    if moe:
        count = layer.get_submodule(family.layout.router).weight.shape[0]
        ids = tuple(prior.kept_experts.get(idx, range(count)))
    return LayerInfo(index=idx, position=position, is_moe=moe, expert_ids=ids, family=family, num_sequences=n)


def load_layer(
    model: nn.Module, source: WeightSource, idx: int, prior: Decisions, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """Decoder layer ``idx`` with its weights on ``device`` and ``prior`` applied (only kept experts read)."""
    family = source.family
    layer = model.get_submodule(family.layout.layers)[idx]
    kept = prior.kept_experts.get(idx)
    if idx in prior.dropped_layers:
        drop_moe_sublayer(layer, family.layout)
        kept = None
    elif kept is not None:
        slice_experts(layer, list(range(len(kept))), family.layout)  # shapes only: still on meta
    tensors = source.module_tensors(layer_prefix(family, idx), state_names(layer), kept, device, dtype)
    assign_tensors(layer, tensors)
    return layer


@torch.no_grad()
def embed_inputs(model: nn.Module, family: MoEFamily, ids: torch.Tensor, plan: Plan, device: torch.device) -> Any:
    """Hidden states entering layer 0, [N, L, H], where the plan keeps activations."""
    hidden = None
    for start in range(0, ids.shape[0], plan.micro_batch):
        h = capture(model, family, ids[start : start + plan.micro_batch].to(device), stop_at=0)[0][0]
        if hidden is None:
            hidden = _empty((ids.shape[0], *h.shape[1:]), h.dtype, device, plan)
        hidden[start : start + h.shape[0]].copy_(h)
    return hidden


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, plan: Plan) -> torch.Tensor:
    if plan.activations_on_device:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")


@torch.no_grad()
def run_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    out: torch.Tensor,
    kwargs: dict[str, Any],
    plan: Plan,
    device: torch.device,
    observe: Any = None,
) -> None:
    """out = layer(hidden), micro-batch by micro-batch; ``observe(start, h_in, h_out)`` after each."""
    for start in range(0, hidden.shape[0], plan.micro_batch):
        x = hidden[start : start + plan.micro_batch].to(device, non_blocking=True)
        y = layer(x, **kwargs)
        y = y[0] if isinstance(y, tuple) else y
        if observe is not None:
            observe(start, x, y)
        out[start : start + y.shape[0]].copy_(y, non_blocking=True)


def calibrate(
    source: WeightSource,
    ids: torch.Tensor,
    observers: list[Observer],
    *,
    prior: Decisions | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    ctx: RunContext | None = None,
    stage: str = "calibration",
    micro_batch: int | None = None,
) -> PassResult:
    """One streamed pass of ``ids`` [N, L] through the model with ``prior`` applied, feeding ``observers``."""
    ctx = ctx or RunContext()
    prior = prior or Decisions()
    device = torch.device(device)
    family = source.family
    model = build_skeleton(source, device, dtype)
    plan = make_plan(model, family, tuple(ids.shape), device, dtype, micro_batch)
    ctx.message(stage, plan.describe(*ids.shape))
    kwargs = layer_kwargs(model, family, ids.shape[1], device)
    hidden = embed_inputs(model, family, ids, plan, device)
    out = torch.empty_like(hidden)
    in_pass = Decisions()
    layers = model.get_submodule(family.layout.layers)
    position = 0
    for idx in range(len(layers)):
        ctx.check_cancelled()
        if idx not in prior.dropped_blocks:
            kept = _calibrate_layer(
                source, model, (idx, position), (hidden, out), kwargs[idx], observers, prior, plan, device
            )
            if kept is not None:
                in_pass = in_pass.merge(Decisions(kept_experts={idx: kept}))
            hidden, out = out, hidden
            position += 1
        ctx.progress(stage, idx + 1, len(layers))
    return PassResult(decisions=in_pass, plan=plan, tokens=ids.numel())


def _calibrate_layer(
    source: WeightSource,
    model: nn.Module,
    where: tuple[int, int],
    buffers: tuple[torch.Tensor, torch.Tensor],
    kwargs: dict[str, Any],
    observers: list[Observer],
    prior: Decisions,
    plan: Plan,
    device: torch.device,
) -> list[int] | None:
    """Load, observe and run one layer (``where`` = original index, position); returns an in-pass choice."""
    (idx, position), (hidden, out) = where, buffers
    layer = load_layer(model, source, idx, prior, device, hidden.dtype)
    info = _layer_info(idx, position, layer, prior, source.family, hidden.shape[0])
    handles = [h for obs in observers for h in obs.attach(info, layer)]

    def observe(start: int, x: torch.Tensor, y: torch.Tensor) -> None:
        for obs in observers:
            obs.observe(info, start, x, y)

    try:
        run_layer(layer, hidden, out, kwargs, plan, device, observe)
    finally:
        for handle in handles:
            handle.remove()
    kept = _in_pass_decision(observers, info)
    if kept is not None:
        columns = [info.expert_ids.index(e) for e in kept]
        slice_experts(layer, columns, source.family.layout)
        run_layer(layer, hidden, out, kwargs, plan, device)  # later layers see the trimmed layer
    layer.to_empty(device="meta")  # frees this layer's weights
    return kept


def _in_pass_decision(observers: list[Observer], info: LayerInfo) -> list[int] | None:
    choices = [k for k in (obs.decide(info) for obs in observers) if k is not None]
    if not choices:
        return None
    return sorted(set.intersection(*(set(c) for c in choices)))
