"""Layer-by-layer calibration in bounded memory (the shape of llm-compressor's sequential pipeline).

One pass: build the model skeleton on ``meta``; embed the calibration ids (the model's own forward,
stopped at the first decoder layer); then for each decoder layer: load only its weights, apply the
decisions already taken (sliced experts, dropped MoE sub-layer; dropped blocks are skipped), attach
the observers' hooks, run the whole batch through it in micro-batches, let observers decide on the
layer if they do so in-pass (iterative expert drop: the layer is then re-run so that later layers see
the trimmed one), keep its outputs as the next layer's inputs, free it. While a layer runs, the
next one is read from disk on a thread (:class:`LayerLoader`). See
:mod:`moecomp.compression.activations` for the memory formula and placement.

Every index an observer sees is the ORIGINAL model's numbering (layers and experts).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moecomp.compression.activations import Plan, build_skeleton, capture, check_host_memory, layer_kwargs, make_plan
from moecomp.compression.adapters import MoEFamily
from moecomp.compression.context import RunContext
from moecomp.compression.lazy_checkpoint import WeightSource, assign_tensors, layer_prefix, state_names
from moecomp.compression.observers import LayerInfo, Observer, SelectContext, Trimmer
from moecomp.compression.structure import (
    Decisions,
    decoder_layers,
    drop_moe_sublayer,
    is_moe_layer,
    slice_experts,
)

__all__ = ["LayerInfo", "Observer", "CalibrationResult", "SelectContext", "Trimmer", "calibrate", "load_layer"]


@dataclass
class CalibrationResult:
    decisions: Decisions  # taken in-pass by observers (original numbering)
    plan: Plan
    tokens: int


def _layer_info(idx: int, position: int, layer: nn.Module, prior: Decisions, family: MoEFamily, n: int) -> LayerInfo:
    moe = is_moe_layer(layer, family.layout)
    ids: tuple[int, ...] = ()
    if moe:
        router: Any = layer.get_submodule(family.layout.router)
        count = int(router.weight.shape[0])
        ids = tuple(prior.kept_experts.get(idx, range(count)))
    return LayerInfo(index=idx, position=position, is_moe=moe, expert_ids=ids, family=family, num_sequences=n)


def prepare_layer(
    model: nn.Module, family: MoEFamily, idx: int, prior: Decisions
) -> tuple[nn.Module, list[int] | None]:
    """Decoder layer ``idx`` still on meta with ``prior`` applied; returns it and the experts to read."""
    layer = decoder_layers(model, family.layout)[idx]
    kept = prior.kept_experts.get(idx)
    if idx in prior.dropped_layers:
        drop_moe_sublayer(layer, family.layout)
        kept = None
    elif kept is not None:
        slice_experts(layer, list(range(len(kept))), family.layout)  # shapes only: still on meta
    return layer, kept


def load_layer(
    model: nn.Module, source: WeightSource, idx: int, prior: Decisions, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """Decoder layer ``idx`` with its weights on ``device`` and ``prior`` applied (only kept experts read)."""
    layer, kept = prepare_layer(model, source.family, idx, prior)
    prefix = layer_prefix(source.family, idx)
    assign_tensors(layer, source.module_tensors(prefix, state_names(layer), kept, device, dtype))
    return layer


class LayerLoader:
    """Loads decoder layers in order. For sources that read files, layer i+1 is read into (pinned) host
    memory on a thread while layer i runs; its copy to the device then starts when it is needed, after
    layer i was freed, so device memory still holds one layer's weights at a time."""

    def __init__(
        self, model: nn.Module, source: WeightSource, prior: Decisions, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.model, self.source, self.prior, self.device, self.dtype = model, source, prior, device, dtype
        n = len(decoder_layers(model, source.family.layout))
        self.order = [i for i in range(n) if i not in prior.dropped_blocks]
        self.pool = ThreadPoolExecutor(max_workers=1) if getattr(source, "supports_prefetch", False) else None
        self.pending: dict[int, Future] = {}
        if self.pool is not None and self.order:
            self._start(self.order[0])  # overlaps with embedding the calibration batch

    def _start(self, idx: int) -> None:
        layer, kept = prepare_layer(self.model, self.source.family, idx, self.prior)
        args = (layer_prefix(self.source.family, idx), state_names(layer), kept, torch.device("cpu"), self.dtype)
        self.pending[idx] = self.pool.submit(self.source.module_tensors, *args, pin=self.device.type == "cuda")  # type: ignore[union-attr, call-arg]

    def load(self, idx: int) -> nn.Module:
        if self.pool is None:
            return load_layer(self.model, self.source, idx, self.prior, self.device, self.dtype)
        if idx not in self.pending:
            self._start(idx)
        host = self.pending.pop(idx).result()
        later = [i for i in self.order if i > idx]
        if later:
            self._start(later[0])
        layer = decoder_layers(self.model, self.source.family.layout)[idx]
        assign_tensors(layer, {k: v.to(self.device, non_blocking=True) for k, v in host.items()})
        return layer

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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
    activations_on_device: bool | None = None,
) -> CalibrationResult:
    """One streamed pass of ``ids`` [N, L] through the model with ``prior`` applied, feeding ``observers``.

    ``micro_batch`` (sequences) and ``activations_on_device`` default to the plan's choice.
    """
    ctx = ctx or RunContext()
    prior = prior or Decisions()
    device = torch.device(device)
    family = source.family
    model = build_skeleton(source, device, dtype)
    shape = (ids.shape[0], ids.shape[1])
    plan = make_plan(model, family, shape, device, dtype, micro_batch, activations_on_device=activations_on_device)
    ctx.message(stage, plan.describe(*ids.shape))
    check_host_memory(plan, device, sum(observer.host_bytes(plan.activation_bytes) for observer in observers))
    loader = LayerLoader(model, source, prior, device, dtype)
    try:
        in_pass = _run_layers(loader, ids, observers, plan, ctx, stage)
    finally:
        loader.close()
    return CalibrationResult(decisions=in_pass, plan=plan, tokens=ids.numel())


def _run_layers(
    loader: LayerLoader, ids: torch.Tensor, observers: list[Observer], plan: Plan, ctx: RunContext, stage: str
) -> Decisions:
    """Embed ``ids``, then every decoder layer in turn; returns the in-pass decisions."""
    model, family, device = loader.model, loader.source.family, loader.device
    kwargs = layer_kwargs(model, family, ids.shape[1], device)
    hidden = embed_inputs(model, family, ids, plan, device)
    out = torch.empty_like(hidden)
    in_pass = Decisions()
    n_layers = len(decoder_layers(model, family.layout))
    for idx in range(n_layers):
        ctx.check_cancelled()
        if idx in loader.prior.dropped_blocks:
            ctx.progress(stage, idx + 1, n_layers)
            continue
        position = loader.order.index(idx)
        kept = _calibrate_layer(loader, (idx, position), (hidden, out), kwargs[idx], observers, plan)
        if kept is not None:
            in_pass = in_pass.merge(Decisions(kept_experts={idx: kept}))
        hidden, out = out, hidden
        ctx.progress(stage, idx + 1, n_layers)
    return in_pass


def _calibrate_layer(
    loader: LayerLoader,
    where: tuple[int, int],
    buffers: tuple[torch.Tensor, torch.Tensor],
    kwargs: dict[str, Any],
    observers: list[Observer],
    plan: Plan,
) -> list[int] | None:
    """Load, observe, transform and run one layer (``where`` = original index, position); returns an in-pass
    choice of experts. Observers that transform the layer (slimming) get one calibration run per stage, each
    on the layer as the previous stage left it; the layer is then run once more so later layers see it."""
    (idx, position), (hidden, out), device = where, buffers, loader.device
    layer = loader.load(idx)
    info = _layer_info(idx, position, layer, loader.prior, loader.source.family, hidden.shape[0])
    runs = max((obs.runs(info) for obs in observers), default=1)
    kept, changed = None, False
    for run in range(runs):
        active = [obs for obs in observers if run < obs.runs(info)]
        if any(obs.needs_data(info, run) for obs in active):
            _observed_run(layer, info, active, (hidden, out), kwargs, plan, device)
        else:  # data-free stages (round-to-nearest, magnitude): nothing to observe, the layer changes below
            changed = True
        if run == 0 and (kept := _in_pass_decision(observers, info)) is not None:
            slice_experts(layer, [info.expert_ids.index(e) for e in kept], loader.source.family.layout)
            changed = True
        changed = any([obs.transform(info, layer, run) for obs in active]) or changed
    if changed:  # later layers see the trimmed or slimmed layer

        def propagated(start: int, x: torch.Tensor, y: torch.Tensor) -> None:
            for obs in observers:
                obs.propagated(info, start, x, y)

        run_layer(layer, hidden, out, kwargs, plan, device, propagated)
    for obs in observers:
        obs.finish(info, layer)
    layer.to_empty(device="meta")  # frees this layer's weights
    return kept


def _observed_run(
    layer: nn.Module,
    info: LayerInfo,
    observers: list[Observer],
    buffers: tuple[torch.Tensor, torch.Tensor],
    kwargs: dict[str, Any],
    plan: Plan,
    device: torch.device,
) -> None:
    """One run of the whole batch through the layer with ``observers``' hooks attached."""
    handles = [h for obs in observers for h in obs.attach(info, layer)]

    def observe(start: int, x: torch.Tensor, y: torch.Tensor) -> None:
        for obs in observers:
            obs.observe(info, start, x, y)

    try:
        run_layer(layer, *buffers, kwargs, plan, device, observe)
    finally:
        for handle in handles:
            handle.remove()


def _in_pass_decision(observers: list[Observer], info: LayerInfo) -> list[int] | None:
    choices = [k for k in (obs.decide(info) for obs in observers) if k is not None]
    if not choices:
        return None
    return sorted(set.intersection(*(set(c) for c in choices)))
