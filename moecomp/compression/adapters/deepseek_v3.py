"""DeepSeek-V3: sigmoid router with ``e_score_correction_bias``, group-limited top-k, ``routed_scaling_factor``.

The first ``first_k_dense_replace`` layers are dense; ``shared_experts`` is never dropped. The
correction bias is sliced with the router rows. Once experts are dropped the expert groups can
no longer be of equal size, so routing becomes plain top-k over the kept experts (1 group).
"""

from moecomp.compression.adapters.family import LATENT_ATTENTION_SMOOTHING, MoEFamily, first_k_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="deepseek_v3",
    top_k_key="num_experts_per_tok",
    routing="sigmoid",
    shared_experts=("shared_experts",),
    dense_layers=first_k_dense_layers,
    layout=ModuleLayout(
        router_tensors=("weight", "e_score_correction_bias"),
        router_group_attrs=("num_group", "topk_group"),
        num_experts_key="n_routed_experts",
        config_group_keys=("n_group", "topk_group"),
        config_layer_lists=(),
        config_dense_prefix_key="first_k_dense_replace",
    ),
    attention_smoothing=LATENT_ATTENTION_SMOOTHING,
)
