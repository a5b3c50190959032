"""Mixtral: softmax top-k router ``mlp.gate``, fused experts ``mlp.experts``; on disk ``block_sparse_moe`` w1/w3/w2."""

from moecomp.compression.adapters.family import DiskLayout, MoEFamily, no_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="mixtral",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=(),
    dense_layers=no_dense_layers,
    layout=ModuleLayout(num_experts_key="num_local_experts", config_layer_lists=()),
    disk=DiskLayout(renames=((".block_sparse_moe.", ".mlp."),), gate="w1", up="w3", down="w2"),
)
