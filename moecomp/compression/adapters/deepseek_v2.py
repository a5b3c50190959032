"""DeepSeek-V2 and V2-Lite (``deepseek_v2``): softmax router over all experts, shared experts, dense first layers.

Top-k is greedy, or group-limited (``topk_method="group_limited_greedy"``: the best ``topk_group`` of
``n_group`` groups by their best expert); the weights are the softmax probabilities of the selected
experts times ``routed_scaling_factor``, not renormalised. Once experts are dropped the groups can no
longer be of equal size, so routing becomes plain top-k over the kept experts (1 group). The first
``first_k_dense_replace`` layers are dense; ``shared_experts`` is never dropped.
"""

from moecomp.compression.adapters.family import LATENT_ATTENTION_SMOOTHING, MoEFamily, first_k_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="deepseek_v2",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=("shared_experts",),
    dense_layers=first_k_dense_layers,
    layout=ModuleLayout(
        router_group_attrs=("num_group", "topk_group"),
        num_experts_key="n_routed_experts",
        config_group_keys=("n_group", "topk_group"),
        config_layer_lists=(),
        config_dense_prefix_key="first_k_dense_replace",
    ),
    attention_smoothing=LATENT_ATTENTION_SMOOTHING,
)
