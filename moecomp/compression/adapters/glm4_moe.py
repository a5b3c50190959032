"""GLM-4.5 to 4.7 and GLM-4.5-Air (``glm4_moe``): DeepSeek-V3's router, shared experts and dense first layers.

Sigmoid router with ``e_score_correction_bias`` (selection only), group-limited top-k, the selected
affinities renormalised (``norm_topk_prob``) and scaled by ``routed_scaling_factor``. The first
``first_k_dense_replace`` layers are dense; ``shared_experts`` is never dropped. Once experts are
dropped, routing becomes plain top-k over the kept experts (1 group), as for DeepSeek-V3.
"""

from moecomp.compression.adapters.family import MoEFamily, first_k_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="glm4_moe",
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
)
