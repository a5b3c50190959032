"""AWQ (Lin et al. 2023) on a loaded decoder layer, batched over experts: smoothing scales, then round-to-nearest.

For each smoothing pair (a module whose output feeds some linears, and those linears, as llm-compressor's AWQ
mappings pair them), per input channel j of the linears:

    s_j(a) = mean|x_j|^a / (mean_j |W|^(1-a) + 1e-4),  normalised by sqrt(max s * min s)

(``mean_j |W|`` is |W| normalised by each quantization group's max, averaged over rows) and ``a`` is searched on
llm-compressor's grid, minimising the error of the linears' consumer when they are quantized as Q(W s) / s. The
smoothed module is then divided by s and the linears multiplied by s (the layer computes the same function), and
the stage quantizes the linears round-to-nearest.

The error is measured where llm-compressor measures it, two ways:

- the parent runs: the attention (input norm -> q, k, v) and the MoE block (post-attention norm -> router,
  shared and routed experts' gate/up) are run on their calibration inputs, cached while the batch went through;
  every expert's gate/up is quantized at once and the block runs as it always does (grouped experts).
- the parent is the quantized linear itself (expert e's up -> down, the shared expert's, v -> o, DeepSeek's
  q_a/kv_a norms -> q_b/kv_b): its output error over the inputs X is ||X (Q - W)^T||^2 = tr((Q - W) S (Q - W)^T)
  with S = X^T X, gathered once per expert (:mod:`.statistics`); so every expert's grid search is a batched
  [E, out, in] x [E, in, in] product instead of a forward over its tokens per grid point.

Differences from llm-compressor 0.14 (the reference, compared in tests/compression/slimming/): an expert's
up -> down search sees its real inputs (llm-compressor replays inputs cached before the post-attention norm was
divided by s through gate/up already multiplied by s), and the error is summed in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.slimming import rtn
from moecomp.compression.slimming.groups import OUTPUT_MAJOR, WeightGroup, layer_groups
from moecomp.compression.slimming.statistics import InputStats, LayerStats, attach_statistics
from moecomp.compression.slimming.targets import Scope
from moecomp.compression.structure import ModuleLayout

# float32 working memory of one step over a batch of weights: steps run over a few experts at a time, so the search
# adds little to the layer's own footprint on the device (llm-compressor's AWQ holds one expert's at a time)
WORK_BYTES = 512 * 1024**2


def _spans(batch: int, entry_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of batch entries whose float32 working copies fit WORK_BYTES together."""
    step = max(1, WORK_BYTES // max(entry_bytes, 1))
    return [(start, min(start + step, batch)) for start in range(0, batch, step)]


@dataclass(frozen=True)
class Smoothed:
    """The module whose output rows ``first_row:`` are divided by s: a norm (1-D weight), a linear, or a fused
    experts tensor (expert e's rows by s_e)."""

    module: str
    param: str = "weight"
    first_row: int = 0
    offset: float = 0.0  # a norm that scales by (offset + weight) (ModuleLayout.norm_weight_offset)
    layout: ModuleLayout = OUTPUT_MAJOR  # how fused experts are stored (rows are those of the [E, out, in] view)


@dataclass(frozen=True)
class Balance:
    """A weight [B, out, in] multiplied by s along its input axis; ``quantized``: it is one of the stage's
    targets (routers and shared-expert gates absorb s but are never quantized)."""

    group: WeightGroup
    quantized: bool


@dataclass(frozen=True)
class Mapping:
    name: str  # what the report calls it ("post_attention_layernorm", "experts.up_proj")
    smoothed: Smoothed
    balances: tuple[Balance, ...]
    parent: str | None  # module run to measure the error; None: the one balance linear (quadratic form)


@dataclass
class ParentCache:
    """The parent module's calls during calibration: (args, kwargs, output) per micro-batch, and sum |x|."""

    calls: list[tuple[tuple, dict, torch.Tensor]] = field(default_factory=list)
    abs_sum: torch.Tensor | None = None
    count: int = 0


@dataclass
class AWQStats:
    """What one layer's calibration run leaves for the search: S of the quadratic mappings' linears (with
    ``by_group`` as :class:`LayerStats` names them) and the parents' cached calls."""

    layer: LayerStats
    parents: dict[str, ParentCache]

    @property
    def by_group(self) -> dict[str, InputStats]:
        return self.layer.by_group

    @property
    def routed_tokens(self) -> torch.Tensor | None:
        return self.layer.routed_tokens


def grid(n_grid: int) -> list[tuple[float, bool]]:
    """llm-compressor's grid with ``duo_scaling=True``: identity first, then n_grid - 1 ratios in [0, 1]."""
    return [(0.0, False)] + [(i / (n_grid - 2), True) for i in range(n_grid - 1)]


def _group(
    module: str, param: str = "weight", scope: Scope = "routed_experts", layout: ModuleLayout = OUTPUT_MAJOR
) -> WeightGroup:
    return WeightGroup(module, param, scope, layout)


def _children(layer: nn.Module, path: str) -> dict[str, nn.Module]:
    try:
        return dict(layer.get_submodule(path).named_children())
    except AttributeError:
        return {}


def _parent(paths: tuple[str, ...]) -> str:
    """The lowest module holding every one of ``paths`` (llm-compressor's ``get_lowest_common_parent``)."""
    common: list[str] = []
    for names in zip(*(path.split(".")[:-1] for path in paths), strict=False):
        if len(set(names)) > 1:
            break
        common.append(names[0])
    return ".".join(common)


def _attention_mappings(layer: nn.Module, family: MoEFamily) -> list[Mapping]:
    """The family's attention pairs that this layer holds (``MoEFamily.attention_pairs``, norm readers folded
    in). A pair of several linears is measured by running their parent (the attention); a pair of one linear by
    that linear's output, and only where the smoothed output is the linear's whole input (llm-compressor skips
    v -> o under grouped-query attention)."""
    pairs = []
    for pair in family.attention_pairs(layer):
        weight = cast(torch.Tensor, layer.get_submodule(pair.smoothed).weight)  # a norm's [out], a linear's [out, in]
        smoothed = Smoothed(pair.smoothed, offset=family.layout.norm_weight_offset if weight.ndim == 1 else 0.0)
        if len(pair.balances) == 1:
            width = _group(pair.balances[0]).in_features(layer)
            if weight.shape[0] == width:
                pairs.append(Mapping(pair.smoothed, smoothed, (_balance(pair.balances[0]),), None))
            continue
        pairs.append(Mapping(pair.smoothed, smoothed, tuple(map(_balance, pair.balances)), _parent(pair.balances)))
    return pairs


def _balance(path: str) -> Balance:
    return Balance(_group(path, scope="attention"), True)


def _moe_mappings(layer: nn.Module, family: MoEFamily, scope: list[Scope], preserve_routing: bool) -> list[Mapping]:
    """Post-attention norm -> (router,) shared experts' and routed experts' gate/up in the MoE block, then
    up -> down inside each shared expert and each routed expert (not where the down projection's input is not
    linear in up: gpt-oss's (up + 1) * glu, see ModuleLayout.expert_activation)."""
    layout = family.layout
    balances = [Balance(_group(layout.router), False)] if preserve_routing else []
    shared_mlps = []
    for path in family.shared_experts:
        full = f"{layout.mlp}.{path}"
        children = _children(layer, full)
        if children:
            quantized = "shared_experts" in scope
            balances += [
                Balance(_group(f"{full}.{p}", scope="shared_experts"), quantized) for p in ("gate_proj", "up_proj")
            ]
            shared_mlps.append(full)
        elif preserve_routing:  # a shared path that is one linear: the shared expert's gate, never quantized
            balances.append(Balance(_group(full), False))
    experts = layout.experts
    balances.append(Balance(_group(experts, "gate_up_proj", layout=layout), True))
    norm = Smoothed(layout.post_attention_norm, offset=layout.norm_weight_offset)
    pairs = [Mapping(layout.post_attention_norm, norm, tuple(balances), layout.mlp)]
    if "shared_experts" in scope:
        for full in shared_mlps:
            down = Balance(_group(f"{full}.down_proj", scope="shared_experts"), True)
            pairs.append(Mapping(f"{full}.up_proj", Smoothed(f"{full}.up_proj"), (down,), None))
    if layout.expert_activation != "act_fn":
        return pairs
    down_proj = _group(experts, "down_proj", layout=layout)
    intermediate = down_proj.in_features(layer)
    up_rows = Smoothed(experts, "gate_up_proj", first_row=intermediate, layout=layout)  # [E, 2I, H]: gate, then up
    pairs.append(Mapping("experts.up_proj", up_rows, (Balance(down_proj, True),), None))
    return pairs


def layer_mappings(layer: nn.Module, family: MoEFamily, config: Any, is_moe: bool) -> list[Mapping]:
    """The smoothing pairs of one decoder layer, in llm-compressor's order (each has a quantized balance: the
    routed experts, the attention linears or a shared expert's down projection)."""
    scope = list(config.scope)
    pairs = _attention_mappings(layer, family) if "attention" in scope else []
    if is_moe:
        pairs += _moe_mappings(layer, family, scope, config.preserve_routing)
    return pairs


def _parent_hook(cache: ParentCache):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        y = output[0] if isinstance(output, tuple) else output
        flat = x.reshape(-1, x.shape[-1])
        total = flat.abs().float().sum(dim=0)
        cache.abs_sum = total if cache.abs_sum is None else cache.abs_sum + total
        cache.count += flat.shape[0]
        cache.calls.append((args, kwargs, y))

    return hook


def attach(
    layer: nn.Module, family: MoEFamily, config: Any, is_moe: bool, device: torch.device
) -> tuple[AWQStats, list[RemovableHandle]]:
    """Hooks that gather, while the calibration batch runs: the parents' calls and S of the quadratic pairs."""
    pairs = layer_mappings(layer, family, config, is_moe)
    quadratic = {p.balances[0].group.name for p in pairs if p.parent is None}
    groups = [g for g in layer_groups(layer, family, config.scope) if g.name in quadratic]
    all_experts = bool(getattr(config, "calibrate_all_experts", False))
    layer_stats, handles = attach_statistics(layer, groups, all_experts, device, abs_sums=True)
    parents: dict[str, ParentCache] = {}
    for pair in pairs:
        if pair.parent is not None and pair.parent not in parents:
            parents[pair.parent] = ParentCache()
            hook = _parent_hook(parents[pair.parent])
            handles.append(layer.get_submodule(pair.parent).register_forward_hook(hook, with_kwargs=True))
    return AWQStats(layer_stats, parents), handles


def _weight_means(layer: nn.Module, balances: list[Balance], sizes: dict[str, int | None], batch: int) -> torch.Tensor:
    """[batch, in]: |W| normalised by its quantization group's max, averaged over every row of the quantized
    balances (llm-compressor's ``_compute_layer_means``); batch 1 pools all experts of a fused balance."""
    total, rows = None, 0
    for balance in balances:
        weight = balance.group.get(layer)  # [B, out, in]
        b, out, width = weight.shape
        size = sizes[balance.group.name] or width
        parts = []
        for start, stop in _spans(b, 8 * out * width):
            grouped = weight[start:stop].float().abs().reshape(stop - start, out, width // size, size)
            grouped /= grouped.amax(dim=-1, keepdim=True) + 1e-6
            parts.append(grouped.reshape(stop - start, out, width).sum(dim=1))  # [c, in]
        summed = torch.cat(parts)
        summed = summed.sum(dim=0, keepdim=True) if batch == 1 else summed
        total = summed if total is None else total + summed
        rows += out * (b if batch == 1 else 1)
    assert total is not None
    return total / rows


def _scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float, duo: bool) -> torch.Tensor:
    if duo:
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    else:
        s = x_mean.pow(ratio).clamp(min=1e-4)
    s = s / (s.amax(dim=-1, keepdim=True) * s.amin(dim=-1, keepdim=True)).sqrt()
    return torch.where(s.isfinite(), s, torch.ones_like(s))


def _along_input(s: torch.Tensor, batch: int) -> torch.Tensor:
    """s [1 or B, in] shaped to multiply a [batch, out, in] weight."""
    return s[:, None, :] if s.shape[0] == batch else s[0].view(1, 1, -1)


def _fake_quantized(config: Any, weight: torch.Tensor, s: torch.Tensor, size: int | None, dtype) -> torch.Tensor:
    """Q(W s) / s in W's dtype, W s rounded to W's dtype first (as llm-compressor writes it into the module)."""
    batch, out, width = weight.shape
    scale = _along_input(s, batch)
    result = torch.empty_like(weight)
    for start, stop in _spans(batch, 8 * out * width):
        part = scale if scale.shape[0] == 1 else scale[start:stop]
        scaled = (weight[start:stop].float() * part).to(weight.dtype)
        result[start:stop] = rtn.slim(config, scaled, None, size, dtype).weight.float() / part
    return result


def _quadratic_error(stats: InputStats, original: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """[B]: mean squared output error over each entry's inputs, tr(D S D^T) / (n out), D = candidate - original."""
    batch, out, width = original.shape
    counts = stats.entry_counts(batch).clamp_min(1).float()
    errors = []
    for start, stop in _spans(batch, 4 * (2 * out * width + width * width)):
        delta = candidate[start:stop].float() - original[start:stop].float()
        sums = stats.sums[stats.entries(start, stop)]
        errors.append((torch.bmm(delta, sums) * delta).sum(dim=(1, 2)))
    return torch.cat(errors) / (counts * out)


@torch.no_grad()
def _parent_error(parent: nn.Module, cache: ParentCache) -> torch.Tensor:
    """[1]: mean squared error of the parent's outputs against those cached in the calibration run."""
    total, numel = torch.zeros((), dtype=torch.float64), 0
    for args, kwargs, want in cache.calls:
        got = parent(*args, **kwargs)
        got = got[0] if isinstance(got, tuple) else got
        total += (got.float() - want.float()).pow(2).sum().double().cpu()
        numel += want.numel()
    return (total / max(numel, 1)).float().view(1)


def _error_function(
    pair: Mapping, layer: nn.Module, stats: AWQStats, originals: list[torch.Tensor]
) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """candidates (one per quantized balance) -> [B] errors."""
    quantized = [b for b in pair.balances if b.quantized]
    if pair.parent is None:
        entry = stats.by_group[quantized[0].group.name]
        return lambda candidates: _quadratic_error(entry, originals[0], candidates[0])
    parent, cache = layer.get_submodule(pair.parent), stats.parents[pair.parent]

    def error(candidates: list[torch.Tensor]) -> torch.Tensor:
        for balance, candidate in zip(quantized, candidates, strict=True):
            balance.group.set(layer, candidate)
        return _parent_error(parent, cache)

    return error


def _x_mean(pair: Mapping, stats: AWQStats, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean |x| [B, in] over each entry's inputs, which entries saw any input [B])."""
    if pair.parent is not None:
        cache = stats.parents[pair.parent]
        assert cache.abs_sum is not None
        return (cache.abs_sum / max(cache.count, 1)).view(1, -1), torch.tensor([cache.count > 0])
    entry = stats.by_group[pair.balances[0].group.name]
    return entry.entry_abs_means(batch), entry.entry_counts(batch) > 0


@torch.no_grad()
def search(
    pair: Mapping, layer: nn.Module, stats: AWQStats, config: Any, sizes: dict[str, int | None], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best s [B, in] of one pair, and the errors [B] of the identity and of the best s."""
    quantized = [b for b in pair.balances if b.quantized]
    batch = 1 if pair.parent is not None else quantized[0].group.get(layer).shape[0]
    x_mean, seen = _x_mean(pair, stats, batch)
    w_mean = _weight_means(layer, quantized, sizes, batch)
    originals = [b.group.get(layer).detach().clone() for b in quantized]
    error = _error_function(pair, layer, stats, originals)

    def evaluate(ratio: float, duo: bool) -> tuple[torch.Tensor, torch.Tensor]:
        s = _scales(x_mean, w_mean, ratio, duo)
        candidates = [
            _fake_quantized(config, w, s, sizes[b.group.name], dtype) for b, w in zip(quantized, originals, strict=True)
        ]
        return s, error(candidates)

    identity, *rest = grid(config.n_grid)
    best_s, initial = evaluate(*identity)
    best = initial.clone()
    for ratio, duo in rest:
        s, errors = evaluate(ratio, duo)
        better = errors < best
        best = torch.where(better, errors, best)
        best_s = torch.where(better.to(s.device)[:, None], s, best_s)
    for balance, original in zip(quantized, originals, strict=True):
        balance.group.set(layer, original)
    best_s[~seen.to(best_s.device)] = 1.0  # an expert without inputs is left as it is (llm-compressor skips it)
    return best_s, initial, best


def apply(pair: Mapping, layer: nn.Module, s: torch.Tensor) -> None:
    """Divide the smoothed module's output rows by s and multiply the balances' input columns by s."""
    smoothed = pair.smoothed
    module = layer.get_submodule(smoothed.module)
    weight = getattr(module, smoothed.param)
    if weight.ndim == 1:  # a norm: (offset + w) / s, stored back as a weight
        offset = smoothed.offset
        weight.data.copy_(((offset + weight.float()) / s[0] - offset).to(weight.dtype))
    elif weight.ndim == 3:  # fused experts: expert e's rows by s_e
        group = _group(smoothed.module, smoothed.param, layout=smoothed.layout)
        view = group.get(layer).detach()
        rows = view[:, smoothed.first_row :]
        rows.copy_((rows.float() / s[:, :, None]).to(view.dtype))
        group.set(layer, view)
    else:
        rows = weight.data[smoothed.first_row :]
        rows.copy_((rows.float() / s[0][:, None]).to(weight.dtype))
    bias = getattr(module, "bias", None) if smoothed.param == "weight" else None
    if isinstance(bias, torch.Tensor):
        part = bias.data[smoothed.first_row :]
        part.copy_((part.float() / s[0]).to(bias.dtype))
    for balance in pair.balances:
        current = balance.group.get(layer)
        balance.group.set(layer, (current.float() * _along_input(s, current.shape[0])).to(current.dtype))


def smooth(
    layer: nn.Module, family: MoEFamily, config: Any, is_moe: bool, stats: AWQStats, sizes: dict[str, int | None],
    dtype: torch.dtype,
) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Search and apply every pair of the layer in order; returns pair name -> (identity error, best error),
    summed over its batch entries."""
    errors: dict[str, tuple[float, float]] = {}
    for pair in layer_mappings(layer, family, config, is_moe):
        s, initial, best = search(pair, layer, stats, config, sizes, dtype)
        apply(pair, layer, s)
        errors[pair.name] = (float(initial.sum()), float(best.sum()))
    stats.parents.clear()  # the cached calls hold the layer's inputs and outputs
    return errors
