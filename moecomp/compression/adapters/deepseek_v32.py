"""DeepSeek-V3.2 (``deepseek_v32``): DeepSeek-V3's router and experts, plus a sparse-attention indexer.

Sigmoid router with ``e_score_correction_bias`` (selection only), group-limited top-k, the selected
affinities renormalised and scaled by ``routed_scaling_factor``; once experts are dropped, routing becomes
plain top-k over the kept experts (1 group). ``shared_experts`` is never dropped. Each attention holds a
lightning indexer (``self_attn.indexer``: ``wq_b``, ``wk``, ``k_norm``, ``weights_proj``) that picks the
``index_topk`` keys each query attends to; its weights are the layer's and travel with it, and its
``layer_idx`` (its key cache) is renumbered by block drop. Dense layers: ``mlp_layer_types`` ("dense" /
"sparse"), derived from ``first_k_dense_replace``; block drop shortens it with ``layer_types``.
"""

from typing import Any

from moecomp.compression.adapters.family import LATENT_ATTENTION_SMOOTHING, MoEFamily
from moecomp.compression.structure import ModuleLayout


def mlp_layer_types_dense(config: Any) -> frozenset[int]:
    return frozenset(i for i, kind in enumerate(config.mlp_layer_types) if kind == "dense")


FAMILY = MoEFamily(
    model_type="deepseek_v32",
    top_k_key="num_experts_per_tok",
    routing="sigmoid",
    shared_experts=("shared_experts",),
    dense_layers=mlp_layer_types_dense,
    layout=ModuleLayout(
        layer_indexed=("self_attn.indexer",),
        norm_readers=(
            ("input_layernorm", "self_attn.indexer.wk"),
            ("input_layernorm", "self_attn.indexer.weights_proj"),
            ("self_attn.q_a_layernorm", "self_attn.indexer.wq_b"),
        ),
        router_tensors=("weight", "e_score_correction_bias"),
        router_group_attrs=("num_group", "topk_group"),
        num_experts_key="n_routed_experts",
        config_group_keys=("n_group", "topk_group"),
        config_layer_lists=("layer_types", "mlp_layer_types"),
        config_dense_prefix_key="first_k_dense_replace",
    ),
    attention_smoothing=LATENT_ATTENTION_SMOOTHING,
    # The indexer scores every slot of its key cache and takes the top index_topk: a query with fewer earlier
    # tokens than that then also picks empty static-cache slots where the dynamic cache offers later tokens
    # (masked either way), and the logits part (tiny model: 0.08 at the prefill).
    static_cache=False,
)
