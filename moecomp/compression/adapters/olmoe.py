"""OLMoE: softmax router, fused experts, every layer sparse, no shared expert."""

from moecomp.compression.adapters.family import MoEFamily, no_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="olmoe",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=(),
    dense_layers=no_dense_layers,
    layout=ModuleLayout(num_experts_key="num_experts", config_layer_lists=()),
)
