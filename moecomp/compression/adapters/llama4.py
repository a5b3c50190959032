"""Llama 4 text model (``llama4_text``, ``Llama4ForCausalLM``): top-1 sigmoid router, a shared expert, interleaved MoE.

The router (``feed_forward.router``, an ``nn.Linear``) returns ``(scores, logits)``: the chosen expert's score is
its own ``sigmoid(w_e . x)`` (no normalisation), which scales that expert's input; the shared expert sees every
token and is never dropped. MoE layers are the config's ``moe_layers`` (derived from
``interleave_moe_layer_step`` when not given); block drop writes the explicit list. The MoE block returns
``(hidden, router_logits)``, which its decoder layer unpacks. Per-layer attention lists follow block drop:
``no_rope_layers`` (NoPE layers) and ``layer_types`` (chunked vs full attention, ``attention_chunk_size``).
Experts are fused as ``gate_up_proj [E, H, 2I]`` / ``down_proj [E, I, H]`` (input-major, gate then up) and
run on every token, scaled by its router score (a token routed elsewhere reaches an expert as zeros): the
slimming passes see them as ``[E, 2I, H]`` and gather each expert's statistics over the tokens routed to it
(``ModuleLayout.experts_call = "every_token"``). A quantized checkpoint stores each expert's linears packed and
carries the code that fuses them back on load. llm-compressor's backend is refused. The multimodal ``llama4``
checkpoint (``Llama4ForConditionalGeneration``) is not this family.
"""

from moecomp.compression.adapters.family import MoEFamily, listed_moe_dense_layers
from moecomp.compression.structure import ModuleLayout

LLMCOMPRESSOR_REFUSED = (
    "llm-compressor calibrates Llama 4 through its own linearized experts; run slimming with backend moecomp"
)

FAMILY = MoEFamily(
    model_type="llama4_text",
    top_k_key="num_experts_per_tok",
    routing="top1_sigmoid",
    shared_experts=("shared_expert",),
    dense_layers=listed_moe_dense_layers,
    layout=ModuleLayout(
        mlp="feed_forward",
        router="feed_forward.router",
        experts="feed_forward.experts",
        expert_count_attrs=("num_experts", "out_features"),
        router_logits_output=1,
        moe_output_tuple=True,
        num_experts_key="num_local_experts",
        config_layer_lists=("layer_types", "no_rope_layers"),
        config_moe_layers_key="moe_layers",
        experts_input_major=True,
        experts_call="every_token",
    ),
    refused=(("slimming:llmcompressor", LLMCOMPRESSOR_REFUSED),),
)
