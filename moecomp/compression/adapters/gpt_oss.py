"""gpt-oss (``gpt_oss``): softmax over the top-k router logits, experts with biases, sinks, alternating windows.

The router is a biased linear (``mlp.router``: ``weight [E, H]``, ``bias [E]``, both sliced with the experts);
the gate weights are a softmax over the chosen experts' logits, i.e. the softmax over all experts renormalised
over the chosen ones, so expert_drop scores the softmax over all experts. The experts
(``gate_up_proj [E, H, 2I]`` with gate and up interleaved along the last axis, ``down_proj [E, I, H]``, and
their biases ``[E, 2I]`` / ``[E, H]``) are sliced on the expert axis like any per-expert tensor. The MoE block
returns ``(hidden, router_scores)``, which its decoder layer unpacks. Attention sinks (``self_attn.sinks``,
one logit per head) are the layer's own weights; ``layer_types`` (sliding / full attention, alternating) is
shortened by block drop. Every layer is sparse.

Slimming is refused: the passes quantize and prune output-major ``[E, 2I, H]`` experts with concatenated
gate/up and no biases. Hub checkpoints store the experts as mxfp4 (``*_blocks`` / ``*_scales``): they are read
dequantized to bf16, one layer at a time, by transformers' own decoder (``dequantize_on_read``, see
:mod:`moecomp.compression.stored_quantization`), so trimming runs on them and writes a plain bf16 checkpoint.
"""

from moecomp.compression.adapters.family import MoEFamily, no_dense_layers
from moecomp.compression.structure import ModuleLayout

SLIMMING_REFUSED = (
    "gpt-oss experts are input-major (gate_up_proj [E, H, 2I]) with gate and up interleaved and per-expert "
    "biases, a layout the slimming passes do not quantize or prune yet; trimming is supported"
)

FAMILY = MoEFamily(
    model_type="gpt_oss",
    top_k_key="num_experts_per_tok",
    routing="softmax",
    shared_experts=(),
    dense_layers=no_dense_layers,
    layout=ModuleLayout(
        router="mlp.router",
        expert_tensors=("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"),
        router_tensors=("weight", "bias"),
        moe_output_tuple=True,
        num_experts_key="num_local_experts",
        config_layer_lists=("layer_types",),
    ),
    attn_implementation="eager",  # attention sinks: transformers' sdpa path does not take them
    refused=(("slimming", SLIMMING_REFUSED),),
    dequantize_on_read=("mxfp4",),  # as published: the experts' mxfp4 blocks and scales
)
