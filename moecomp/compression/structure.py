"""What trimming removes (Decisions) and how to remove it from an in-memory transformers model.

Self-contained on purpose: this module imports only torch and the standard library, so that the
checkpoint export can copy it verbatim next to a trimmed checkpoint's remote modeling code.

Every index in a :class:`Decisions` is the ORIGINAL model's numbering (layers and experts), so that
stages can be combined without index drift. Application order is fixed: slice experts, remove MoE
sub-layers, then delete whole blocks (the only step that renumbers layers).

A removed MoE sub-layer makes the decoder layer compute exactly ``h + Attention(Norm(h))``: the
post-attention norm becomes the identity and the MoE becomes :class:`DroppedMLP`, which returns
zeros, so the residual branch adds exactly 0 (and not ``Norm(h)``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Decisions:
    """Structures removed by trimming, in the original model's numbering."""

    kept_experts: dict[int, list[int]] = field(default_factory=dict)  # MoE layer -> kept expert ids (sorted)
    dropped_layers: list[int] = field(default_factory=list)  # layers whose post-attn norm + MoE are removed
    dropped_blocks: list[int] = field(default_factory=list)  # whole decoder blocks removed

    def __post_init__(self) -> None:
        self.kept_experts = {int(k): sorted(int(e) for e in v) for k, v in sorted(self.kept_experts.items())}
        self.dropped_layers = sorted({int(i) for i in self.dropped_layers})
        self.dropped_blocks = sorted({int(i) for i in self.dropped_blocks})

    def to_json(self) -> dict[str, Any]:
        return {
            "kept_experts": {str(k): v for k, v in self.kept_experts.items()},
            "dropped_layers": list(self.dropped_layers),
            "dropped_blocks": list(self.dropped_blocks),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decisions:
        return cls(
            kept_experts={int(k): list(v) for k, v in data.get("kept_experts", {}).items()},
            dropped_layers=list(data.get("dropped_layers", [])),
            dropped_blocks=list(data.get("dropped_blocks", [])),
        )

    def is_empty(self) -> bool:
        return not (self.kept_experts or self.dropped_layers or self.dropped_blocks)

    def merge(self, other: Decisions) -> Decisions:
        """Both sets of removals; a layer whose experts both sides trimmed keeps the intersection.

        Entries for layers that a dropped block or dropped MoE sub-layer removes anyway are discarded.
        """
        blocks = set(self.dropped_blocks) | set(other.dropped_blocks)
        layers = (set(self.dropped_layers) | set(other.dropped_layers)) - blocks
        kept: dict[int, list[int]] = {}
        for layer in set(self.kept_experts) | set(other.kept_experts):
            if layer in blocks or layer in layers:
                continue
            sides = [set(d.kept_experts[layer]) for d in (self, other) if layer in d.kept_experts]
            kept[layer] = sorted(set.intersection(*sides))
        return Decisions(kept_experts=kept, dropped_layers=sorted(layers), dropped_blocks=sorted(blocks))

    def for_trimmed_model(self, num_layers: int) -> Decisions:
        """The same structure in the trimmed model's own numbering (no dropped blocks; a layer's kept
        experts are 0..k-1): apply this to a model built from the trimmed config, e.g. in remote code."""
        new_index = {old: new for new, old in enumerate(self.kept_blocks(num_layers))}
        return Decisions(
            kept_experts={new_index[i]: list(range(len(v))) for i, v in self.kept_experts.items() if i in new_index},
            dropped_layers=[new_index[i] for i in self.dropped_layers if i in new_index],
        )

    def kept_blocks(self, num_layers: int) -> list[int]:
        """Original indices of the decoder blocks that remain, in order."""
        dropped = set(self.dropped_blocks)
        return [i for i in range(num_layers) if i not in dropped]


@dataclass(frozen=True)
class ModuleLayout:
    """Where an MoE family keeps the parts that trimming touches (paths are dotted module paths).

    Per-expert tensors are fused 3-D parameters with the expert on axis 0 (transformers >= 5:
    ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``); router tensors also have the expert on
    axis 0 (``weight [E, H]``, DeepSeek's ``e_score_correction_bias [E]``). Any other tensor indexed
    by expert is named in ``expert_indexed`` with its axis (ERNIE's ``moe_statics`` bias ``[1, E]``
    under the router, MiniMax-M2's ``e_score_correction_bias [E]`` on the MoE block).

    Routers return a tuple whose ``router_logits_output``-th item is the logits ``[T, E]`` (most families:
    ``(logits, top-k weights, top-k indices)``; Llama 4: ``(scores, logits)``). ``moe_output_tuple``: the MoE
    block returns ``(hidden, router_logits)`` and its decoder layer unpacks it (Llama 4), so a dropped MoE
    must return a pair too.
    """

    layers: str = "model.layers"  # from the *ForCausalLM root
    attention: str = "self_attn"  # the rest relative to a decoder layer
    # other token mixers a layer may hold instead of ``attention`` (Qwen3-Next's gated-DeltaNet "linear_attn",
    # as its config's layer_types says); block drop renumbers whichever the layer has
    token_mixers: tuple[str, ...] = ()
    layer_indexed: tuple[str, ...] = ()  # other modules whose layer_idx follows block drop (DeepSeek-V3.2's indexer)
    post_attention_norm: str = "post_attention_layernorm"
    # (norm, linear) paths from the decoder layer: linears that read a norm's output besides the usual ones
    # (DeepSeek-V3.2's indexer reads the input norm and q_a_layernorm); AWQ scales them with the norm
    norm_readers: tuple[tuple[str, str], ...] = ()
    norm_weight_offset: float = 0.0  # the decoder norms scale by (offset + weight): 1.0 for Qwen3-Next's (1 + w)
    mlp: str = "mlp"
    router: str = "mlp.gate"
    experts: str = "mlp.experts"
    expert_tensors: tuple[str, ...] = ("gate_up_proj", "down_proj")
    router_logits_output: int = 0  # which item of the router's output tuple is the logits [T, E]
    moe_output_tuple: bool = False  # the MoE block returns (hidden, router_logits)
    router_tensors: tuple[str, ...] = ("weight",)
    expert_indexed: tuple[tuple[str, int], ...] = ()  # (path from the decoder layer, expert axis) of other tensors
    expert_count_attrs: tuple[str, ...] = ("num_experts",)  # set on the router and the experts module
    router_group_attrs: tuple[str, ...] = ()  # group-limited routing: reset to 1 group once experts are dropped
    num_experts_key: str = "num_experts"  # config key of the routed expert count
    config_group_keys: tuple[str, ...] = ()  # config keys reset to 1 with router_group_attrs
    config_layer_lists: tuple[str, ...] = ("layer_types",)  # per-layer config lists, shortened by block drop
    config_dense_layers_key: str | None = None  # explicit dense layer list (Qwen "mlp_only_layers")
    config_sparse_step_key: str | None = None  # Qwen "decoder_sparse_step": set to 1 once the list is explicit
    config_dense_prefix_key: str | None = None  # DeepSeek "first_k_dense_replace"
    # ERNIE: (start, end, interval) keys; MoE layers are start <= i <= end with (i + 1) % interval == 0
    config_moe_range_keys: tuple[str, ...] = ()
    config_moe_layers_key: str | None = None  # explicit list of MoE layers (Llama 4 "moe_layers")
    # How the fused experts hold their weights, for the slimming passes (trimming slices axis 0 either way):
    # input-major ``gate_up_proj [E, H, 2I]`` / ``down_proj [E, I, H]`` (gpt-oss, Llama 4) instead of
    # ``[E, 2I, H]`` / ``[E, H, I]``; gate and up alternating along 2I (gpt-oss) instead of concatenated.
    experts_input_major: bool = False
    gate_up_interleaved: bool = False
    # How the experts module is called: ``routed`` experts(hidden [T, H], top_k_index [T, k], ...);
    # ``every_token`` experts(x [E * T, H]): every expert runs every token, scaled by its router score, so a
    # token not routed to expert e reaches e as a row of zeros (Llama 4).
    experts_call: str = "routed"
    # The down projection's input from gate_up's output (biases included): ``act_fn`` = act_fn(gate) * up on
    # the two halves; otherwise the name of the experts module's own method (gpt-oss's clamped ``_apply_gate``,
    # (up + 1) * glu: not linear in up, so AWQ does not smooth up -> down there).
    expert_activation: str = "act_fn"

    def experts_output_major(self, param: str, tensor: torch.Tensor) -> torch.Tensor:
        """A fused experts tensor as stored in the module -> ``[E, out, in]``, gate rows then up rows."""
        if not self.experts_input_major:
            return tensor
        tensor = tensor.transpose(-1, -2)
        if param == "gate_up_proj" and self.gate_up_interleaved:
            tensor = torch.cat([tensor[:, 0::2], tensor[:, 1::2]], dim=1)
        return tensor

    def experts_stored(self, param: str, tensor: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`experts_output_major`: ``[E, out, in]`` -> the module's own layout."""
        if not self.experts_input_major:
            return tensor
        if param == "gate_up_proj" and self.gate_up_interleaved:
            tensor = interleave_halves(tensor)
        return tensor.transpose(-1, -2)

    def per_expert_tensors(self) -> dict[str, int]:
        """Path from a decoder layer -> expert axis, for every tensor that has one row (slice) per expert."""
        fused = {f"{self.experts}.{t}": 0 for t in self.expert_tensors}
        router = {f"{self.router}.{t}": 0 for t in self.router_tensors}
        return {**fused, **router, **dict(self.expert_indexed)}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModuleLayout:
        def frozen(value: Any) -> Any:
            return tuple(frozen(v) for v in value) if isinstance(value, list) else value

        return cls(**{k: frozen(v) for k, v in data.items()})


def interleave_halves(tensor: torch.Tensor) -> torch.Tensor:
    """[E, 2n, ...] holding rows a_0..a_n-1 then b_0..b_n-1 -> [E, 2n, ...] holding a_0, b_0, a_1, b_1, ..."""
    experts, rows = tensor.shape[:2]
    return tensor.reshape(experts, 2, rows // 2, *tensor.shape[2:]).transpose(1, 2).reshape(tensor.shape)


class DroppedMLP(nn.Module):
    """Stands in for a removed MoE: contributes exactly zero to the residual stream.

    ``as_pair``: return ``(zeros, None)`` where the decoder layer unpacks the MoE's (hidden, router_logits).
    """

    def __init__(self, as_pair: bool = False) -> None:
        super().__init__()
        self.as_pair = as_pair

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        zeros = torch.zeros_like(hidden_states)
        return (zeros, None) if self.as_pair else zeros


def decoder_layers(model: nn.Module, layout: ModuleLayout) -> nn.ModuleList:
    layers = model.get_submodule(layout.layers)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{layout.layers} is a {type(layers).__name__}, not a ModuleList")
    return layers


def is_moe_layer(layer: nn.Module, layout: ModuleLayout) -> bool:
    """True when the layer has routed experts (not a dense MLP, not a dropped MoE)."""
    try:
        layer.get_submodule(layout.experts)
    except AttributeError:
        return False
    return True


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _slice_tensor(root: nn.Module, path: str, index: torch.Tensor, axis: int = 0) -> None:
    """Keep slices ``index`` (along ``axis``) of a parameter or buffer, preserving its kind."""
    parent, _, name = path.rpartition(".")
    module = root.get_submodule(parent) if parent else root
    old = getattr(module, name, None)
    if old is None:
        return
    new = old.detach().index_select(axis, index.to(old.device))
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        persistent = name not in module._non_persistent_buffers_set
        module.register_buffer(name, new, persistent=persistent)


def slice_experts(layer: nn.Module, kept: list[int], layout: ModuleLayout) -> None:
    """Keep only experts ``kept`` (current numbering of this layer) in the experts and the router."""
    experts = layer.get_submodule(layout.experts)
    router = layer.get_submodule(layout.router)
    if sorted(kept) == list(range(_count(experts, layout))):
        return  # every expert kept: the layer, group-limited routing included, stays as it is
    index = torch.tensor(sorted(kept), dtype=torch.long)
    for path, axis in layout.per_expert_tensors().items():
        _slice_tensor(layer, path, index, axis)
    for module in (experts, router):
        for attr in layout.expert_count_attrs:
            if hasattr(module, attr):
                setattr(module, attr, len(kept))
    for attr in layout.router_group_attrs:
        # Groups of unequal size cannot be expressed: routing becomes plain top-k over the kept experts.
        setattr(router, attr, 1)


def _count(experts: nn.Module, layout: ModuleLayout) -> int:
    return getattr(experts, layout.expert_tensors[0]).shape[0]


def drop_moe_sublayer(layer: nn.Module, layout: ModuleLayout) -> None:
    """Make the layer compute exactly h + Attention(Norm(h)): identity norm, zero MLP branch."""
    _set_module(layer, layout.post_attention_norm, nn.Identity())
    _set_module(layer, layout.mlp, DroppedMLP(as_pair=layout.moe_output_tuple))


def drop_blocks(model: nn.Module, blocks: list[int], layout: ModuleLayout) -> None:
    """Delete decoder blocks (original indices) and renumber the rest, attention layer_idx and config."""
    layers = decoder_layers(model, layout)
    dropped = set(blocks)
    kept = [i for i in range(len(layers)) if i not in dropped]
    remaining = [layers[i] for i in kept]
    for new_idx, layer in enumerate(remaining):
        for path in (layout.attention, *layout.token_mixers, *layout.layer_indexed):
            mixer: Any = _submodule_or_none(layer, path)
            if hasattr(mixer, "layer_idx"):
                mixer.layer_idx = new_idx  # the KV (or recurrent) cache is indexed by position in the stack
    _set_module(model, layout.layers, nn.ModuleList(remaining))
    config = getattr(model, "config", None)
    if config is not None:
        _renumber_config(config, kept, [_is_dense(layer, layout) for layer in remaining], layout)


def _submodule_or_none(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _is_dense(layer: nn.Module, layout: ModuleLayout) -> bool:
    """A dense MLP layer; a dropped MoE sub-layer still counts as sparse for the config."""
    return not is_moe_layer(layer, layout) and not isinstance(layer.get_submodule(layout.mlp), DroppedMLP)


def _renumber_config(config: Any, kept: list[int], dense_flags: list[bool], layout: ModuleLayout) -> None:
    config.num_hidden_layers = len(kept)
    for key in layout.config_layer_lists:
        values = getattr(config, key, None)
        if isinstance(values, list):
            setattr(config, key, [values[i] for i in kept])
    dense = [i for i, flag in enumerate(dense_flags) if flag]
    if layout.config_dense_layers_key:
        setattr(config, layout.config_dense_layers_key, dense)
    if layout.config_sparse_step_key:
        setattr(config, layout.config_sparse_step_key, 1)  # the explicit list now says it all
    if layout.config_dense_prefix_key:
        setattr(config, layout.config_dense_prefix_key, len(dense))  # dense layers stay a prefix
    sparse = [i for i, flag in enumerate(dense_flags) if not flag]
    if layout.config_moe_layers_key:
        setattr(config, layout.config_moe_layers_key, sparse)
    if layout.config_moe_range_keys:
        _set_moe_range(config, sparse, layout.config_moe_range_keys)


def _set_moe_range(config: Any, sparse: list[int], keys: tuple[str, ...]) -> None:
    """Express the remaining MoE layers as (start, end, interval); refuse a set no such range describes."""
    start_key, end_key, interval_key = keys
    n = config.num_hidden_layers
    if not sparse:
        setattr(config, start_key, n)
        setattr(config, end_key, n)  # no layer index reaches start: no MoE layer
        return
    start, end = sparse[0], sparse[-1]
    for interval in dict.fromkeys((getattr(config, interval_key, 1) or 1, 1)):
        if sparse == [i for i in range(start, end + 1) if (i + 1) % interval == 0]:
            setattr(config, start_key, start)
            setattr(config, end_key, end)
            setattr(config, interval_key, interval)
            return
    raise ValueError(
        f"the remaining MoE layers {sparse} cannot be written as {start_key}/{end_key}/{interval_key}: "
        "drop blocks that keep the MoE layers evenly spaced"
    )


def apply_decisions(model: nn.Module, decisions: Decisions, layout: ModuleLayout) -> None:
    """Apply trimming decisions in place (works on real and on ``meta`` tensors)."""
    layers = decoder_layers(model, layout)
    for idx, kept in decisions.kept_experts.items():
        if idx in decisions.dropped_blocks or idx in decisions.dropped_layers:
            continue
        if not is_moe_layer(layers[idx], layout):
            raise ValueError(f"layer {idx} has no routed experts to drop")
        slice_experts(layers[idx], kept, layout)
    for idx in decisions.dropped_layers:
        if idx not in decisions.dropped_blocks:
            drop_moe_sublayer(layers[idx], layout)
    if decisions.dropped_blocks:
        drop_blocks(model, decisions.dropped_blocks, layout)
    config = getattr(model, "config", None)
    if config is not None and decisions.kept_experts:
        _update_expert_config(model, config, layout)


def expert_counts(model: nn.Module, layout: ModuleLayout) -> dict[int, int]:
    """Current layer index -> number of routed experts, for layers that still have them."""
    layers = decoder_layers(model, layout)
    return {
        i: _count(layer.get_submodule(layout.experts), layout)
        for i, layer in enumerate(layers)
        if is_moe_layer(layer, layout)
    }


def _update_expert_config(model: nn.Module, config: Any, layout: ModuleLayout) -> None:
    """Record the expert count in the config when every MoE layer has the same one."""
    counts = set(expert_counts(model, layout).values())
    if len(counts) == 1:
        setattr(config, layout.num_experts_key, counts.pop())
    for key in layout.config_group_keys:
        setattr(config, key, 1)


def layout_to_string(layout: ModuleLayout) -> str:
    return json.dumps(layout.to_json(), sort_keys=True)
