"""gpt-oss (``gpt_oss``): softmax over the top-k router logits, experts with biases, sinks, alternating windows.

The router is a biased linear (``mlp.router``: ``weight [E, H]``, ``bias [E]``, both sliced with the experts);
the gate weights are a softmax over the chosen experts' logits, i.e. the softmax over all experts renormalised
over the chosen ones, so expert_drop scores the softmax over all experts. The experts
(``gate_up_proj [E, H, 2I]`` with gate and up interleaved along the last axis, ``down_proj [E, I, H]``, and
their biases ``[E, 2I]`` / ``[E, H]``) are sliced on the expert axis like any per-expert tensor. The MoE block
returns ``(hidden, router_scores)``, which its decoder layer unpacks. Attention sinks (``self_attn.sinks``,
one logit per head) are the layer's own weights; ``layer_types`` (sliding / full attention, alternating) is
shortened by block drop. Every layer is sparse.

Slimming runs on moecomp's own passes: the experts are input-major (``gate_up_proj [E, H, 2I]``) with gate
and up interleaved, which the passes see as ``[E, 2I, H]`` (``ModuleLayout.experts_*``); the biases are kept
as they are. The down projection reads ``(clamp(up) + 1) * glu(clamp(gate))`` (the module's ``_apply_gate``),
which is not linear in up, so AWQ smooths norm -> router, experts but not up -> down. A quantized checkpoint
stores each expert's linears packed and carries the code that fuses them back on load; a pruned one keeps the
stock fused layout. llm-compressor's backend is refused (its gpt-oss calibration linearizes the experts into
modules moecomp's export does not write). Hub checkpoints store the experts as mxfp4 (``*_blocks`` /
``*_scales``): they are read dequantized to bf16, one layer at a time, by transformers' own decoder
(``dequantize_on_read``, see :mod:`moecomp.compression.stored_quantization`), and the manifest says so.
"""

from moecomp.compression.adapters.family import MoEFamily, no_dense_layers
from moecomp.compression.structure import ModuleLayout

LLMCOMPRESSOR_REFUSED = (
    "llm-compressor calibrates gpt-oss through its own linearized experts; run slimming with backend moecomp"
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
        experts_input_major=True,
        gate_up_interleaved=True,
        expert_activation="_apply_gate",
    ),
    attn_implementation="eager",  # attention sinks: transformers' sdpa path does not take them
    refused=(("slimming:llmcompressor", LLMCOMPRESSOR_REFUSED),),
    dequantize_on_read=("mxfp4",),  # as published: the experts' mxfp4 blocks and scales
)
