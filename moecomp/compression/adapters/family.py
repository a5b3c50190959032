"""The declarative description of an MoE family: what the rest of the library may ask about a model.

Family names never appear in ``if``s elsewhere: code asks a :class:`MoEFamily` (chosen by
``config.model_type`` in :mod:`moecomp.compression.adapters`) for keys, paths and rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from moecomp.compression.structure import ModuleLayout


@dataclass(frozen=True)
class DiskLayout:
    """How a stock checkpoint names weights on disk.

    transformers 5 fuses experts in memory but saves (and most hub checkpoints hold) one tensor per
    expert: ``<layer>.<experts>.<e>.<gate|up|down>.weight``, with ``gate_up_proj = cat(gate, up)``
    along the output axis and ``down_proj = down``. ``renames`` maps disk substrings to module ones.
    """

    renames: tuple[tuple[str, str], ...] = ()
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"


def no_dense_layers(config: Any) -> frozenset[int]:
    return frozenset()


def qwen_dense_layers(config: Any) -> frozenset[int]:
    """Qwen-MoE: ``mlp_only_layers`` plus every layer off the ``decoder_sparse_step`` grid."""
    step = getattr(config, "decoder_sparse_step", 1) or 1
    explicit = set(getattr(config, "mlp_only_layers", None) or [])
    off_grid = {i for i in range(config.num_hidden_layers) if (i + 1) % step != 0}
    return frozenset(explicit | off_grid)


def first_k_dense_layers(config: Any) -> frozenset[int]:
    """DeepSeek: the first ``first_k_dense_replace`` layers have a dense MLP."""
    return frozenset(range(min(config.first_k_dense_replace or 0, config.num_hidden_layers)))


def moe_range_dense_layers(config: Any) -> frozenset[int]:
    """ERNIE: layers outside ``moe_layer_start_index..moe_layer_end_index`` or off the ``moe_layer_interval`` grid."""
    interval = config.moe_layer_interval or 1
    start, end = config.moe_layer_start_index, config.moe_layer_end_index
    moe = {i for i in range(config.num_hidden_layers) if (i + 1) % interval == 0 and start <= i <= end}
    return frozenset(set(range(config.num_hidden_layers)) - moe)


def listed_moe_dense_layers(config: Any) -> frozenset[int]:
    """Llama 4: every layer not in ``moe_layers`` (the config derives it from ``interleave_moe_layer_step``)."""
    return frozenset(set(range(config.num_hidden_layers)) - set(config.moe_layers))


@dataclass(frozen=True)
class SmoothingPair:
    """An AWQ smoothing pair (llm-compressor's ``AWQMapping``): ``smoothed``, a norm or a linear, whose output only
    the ``balances`` linears read, so dividing that output by s and multiplying their input columns by s leaves the
    layer's function unchanged. Paths are from the decoder layer. A balance the layer lacks is left out (one
    declaration covers a family's variants: DeepSeek-V2-Lite has ``q_proj`` where V2 has ``q_a_proj``), and a pair
    whose smoothed module or every balance the layer lacks is skipped (Qwen3-Next's gated-DeltaNet layers)."""

    smoothed: str
    balances: tuple[str, ...]

    def present(self, layer: Any) -> SmoothingPair | None:
        """This pair as ``layer`` (a decoder layer) holds it, or None where it holds none of it."""
        balances = tuple(path for path in self.balances if _has(layer, path))
        return SmoothingPair(self.smoothed, balances) if balances and _has(layer, self.smoothed) else None


def _has(layer: Any, path: str) -> bool:
    try:
        layer.get_submodule(path)
    except AttributeError:
        return False
    return True


# The attention's pairs (the MoE block's follow from the layout: post-attention norm -> router, shared and routed
# experts' gate/up; up -> down in each expert): the input norm feeds q, k, v; v feeds o where v's output is o's
# input (llm-compressor skips the pair under grouped-query attention, and so does moecomp's AWQ).
STANDARD_ATTENTION_SMOOTHING = (
    SmoothingPair("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    SmoothingPair("self_attn.v_proj", ("self_attn.o_proj",)),
)
# Multi-head latent attention (DeepSeek): the input norm feeds the down-projections (``q_proj`` where
# ``q_lora_rank`` is None), each latent norm its up-projection; no v -> o (o reads the attention's output).
LATENT_ATTENTION_SMOOTHING = (
    SmoothingPair("input_layernorm", ("self_attn.q_a_proj", "self_attn.q_proj", "self_attn.kv_a_proj_with_mqa")),
    SmoothingPair("self_attn.q_a_layernorm", ("self_attn.q_b_proj",)),
    SmoothingPair("self_attn.kv_a_layernorm", ("self_attn.kv_b_proj",)),
)


def quant_method(config: Any) -> str | None:
    """``quantization_config.quant_method`` of a config (dict or object), or None when it has none."""
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


class RefusedMethod(ValueError):
    """A method the family cannot run (or its checkpoint cannot express), refused before any work."""


@dataclass(frozen=True)
class MoEFamily:
    model_type: str
    top_k_key: str  # config key of the experts each token is routed to
    # what the router weighs the chosen experts by (expert_drop's docstring): softmax over all experts, sigmoid
    # affinities renormalised over the chosen ones, or the chosen experts' own sigmoid (Llama 4, top-1)
    routing: Literal["softmax", "sigmoid", "top1_sigmoid"]
    shared_experts: tuple[str, ...]  # module paths under the MoE block: always kept
    dense_layers: Callable[[Any], frozenset[int]]  # layers whose MLP is dense (never trimmed as MoE)
    layout: ModuleLayout
    disk: DiskLayout = field(default_factory=DiskLayout)
    base_model: str = "model"  # the decoder stack under *ForCausalLM
    embed_tokens: str = "model.embed_tokens"
    rotary_emb: str = "model.rotary_emb"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attn_implementation: str = "sdpa"  # what calibration runs ("eager" where sdpa cannot: gpt-oss's sinks)
    # (key, reason): what this family refuses up front; the key is a stage family ("slimming"), a method, or
    # either on one backend ("awq:llmcompressor", "slimming:llmcompressor")
    refused: tuple[tuple[str, str], ...] = ()
    # (quant_method, reason): checkpoints stored so are refused for every method
    refused_quantizations: tuple[tuple[str, str], ...] = ()
    # quant_methods of checkpoints read dequantized (moecomp.compression.stored_quantization: gpt-oss's mxfp4
    # experts): every stage sees, and the export writes, the dequantized weights; the manifest says so
    dequantize_on_read: tuple[str, ...] = ()
    attention_smoothing: tuple[SmoothingPair, ...] = STANDARD_ATTENTION_SMOOTHING  # AWQ's pairs in attention
    # Whether transformers' StaticCache gives this family the logits of its dynamic cache: the served runtime
    # (static cache, CUDA graph) needs it, and falls back to a dynamic cache, uncompiled, where it does not.
    static_cache: bool = True

    def num_experts(self, config: Any) -> int:
        return int(getattr(config, self.layout.num_experts_key))

    def attention_pairs(self, layer: Any) -> list[SmoothingPair]:
        """AWQ's attention pairs as ``layer`` holds them, for both backends. Every other linear that reads a
        smoothed norm (``layout.norm_readers``: DeepSeek-V3.2's indexer) is a balance too, or its input would
        silently change; a pair of one linear whose norm others read is left out (one linear's output measures
        its search, and the readers would not be searched for)."""
        readers: dict[str, list[str]] = {}
        for norm, path in self.layout.norm_readers:
            readers.setdefault(norm, []).append(path)
        pairs = []
        for declared in self.attention_smoothing:
            pair = declared.present(layer)
            if pair is None or (len(pair.balances) == 1 and pair.smoothed in readers):
                continue
            pairs.append(SmoothingPair(pair.smoothed, (*pair.balances, *readers.get(pair.smoothed, []))))
        return pairs

    def top_k(self, config: Any) -> int:
        return int(getattr(config, self.top_k_key))

    def check_methods(self, stages: Sequence[Any]) -> None:
        """Refuse recipe stages (their ``method`` or stage ``family``) this family cannot run, with the reason."""
        reasons = dict(self.refused)
        for stage in stages:
            backend = getattr(stage, "backend", None)
            keys = (f"{stage.method}:{backend}", stage.method, f"{stage.family}:{backend}", stage.family)
            reason = next((reasons[key] for key in keys if key in reasons), None)
            if reason:
                raise RefusedMethod(f"{stage.method} is not supported on {self.model_type}: {reason}")

    def check_checkpoint(self, config: Any) -> None:
        """Refuse a checkpoint whose quantization (``quantization_config.quant_method``) the family names."""
        method = quant_method(config)
        reason = dict(self.refused_quantizations).get(str(method))
        if reason:
            raise RefusedMethod(f"this {self.model_type} checkpoint is {method}-quantized: {reason}")

    def moe_layers(self, config: Any) -> list[int]:
        """Original indices of the layers with routed experts."""
        dense = self.dense_layers(config)
        return [i for i in range(config.num_hidden_layers) if i not in dense]
