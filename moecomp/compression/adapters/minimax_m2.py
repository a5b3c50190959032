"""MiniMax-M2 (``minimax_m2``): sigmoid router with a correction bias on the MoE block, every layer sparse.

Each expert's affinity is ``sigmoid(w_e . x)``; ``mlp.e_score_correction_bias`` (``[E]``, on the MoE
block, not the router) is added only to choose the top-k, whose affinities are then renormalised.
No shared expert, no groups. On disk as Mixtral: ``block_sparse_moe`` with ``w1``/``w3``/``w2``.
"""

from moecomp.compression.adapters.family import DiskLayout, MoEFamily, no_dense_layers
from moecomp.compression.structure import ModuleLayout

FAMILY = MoEFamily(
    model_type="minimax_m2",
    top_k_key="num_experts_per_tok",
    routing="sigmoid",
    shared_experts=(),
    dense_layers=no_dense_layers,
    layout=ModuleLayout(
        expert_indexed=(("mlp.e_score_correction_bias", 0),),
        num_experts_key="num_local_experts",
        config_layer_lists=(),
    ),
    disk=DiskLayout(renames=((".block_sparse_moe.", ".mlp."),), gate="w1", up="w3", down="w2"),
)
