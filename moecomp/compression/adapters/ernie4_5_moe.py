"""ERNIE 4.5 MoE (``ernie4_5_moe``): softmax router with a selection bias, shared experts, an MoE layer range.

The router's probabilities are a softmax over all experts; ``moe_statics.e_score_correction_bias``
(``[1, E]``: the expert on axis 1) is added only to choose the top-k, whose probabilities are then
renormalised. MoE layers are ``moe_layer_start_index <= i <= moe_layer_end_index`` with
``(i + 1) % moe_layer_interval == 0``; the others are dense. ``shared_experts`` is never dropped.
On disk the bias sits on the MoE block (``mlp.moe_statics``), in memory under the router.
"""

from moecomp.compression.adapters.family import DiskLayout, MoEFamily, moe_range_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="ernie4_5_moe",
    top_k_key="moe_k",
    routing="softmax",
    shared_experts=("shared_experts",),
    dense_layers=moe_range_dense_layers,
    layout=ModuleLayout(
        expert_indexed=(("mlp.gate.moe_statics.e_score_correction_bias", 1),),
        num_experts_key="moe_num_experts",
        config_layer_lists=(),
        config_moe_range_keys=("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"),
    ),
    disk=DiskLayout(renames=((".mlp.moe_statics.", ".mlp.gate.moe_statics."),)),
)
