"""GLM-4.5 to 4.7 and GLM-4.5-Air (``glm4_moe``): DeepSeek-V3's router, shared experts and dense first layers.

Sigmoid router with ``e_score_correction_bias`` (selection only), group-limited top-k, the selected
affinities renormalised (``norm_topk_prob``) and scaled by ``routed_scaling_factor``. The first
``first_k_dense_replace`` layers are dense; ``shared_experts`` is never dropped. Once experts are
dropped, routing becomes plain top-k over the kept experts (1 group), as for DeepSeek-V3: the same
description under another model_type, but with standard attention (q, k, v, o), not DeepSeek's latent one.
"""

from dataclasses import replace

from moecomp.compression.adapters import deepseek_v3
from moecomp.compression.adapters.family import STANDARD_ATTENTION_SMOOTHING

FAMILY = replace(deepseek_v3.FAMILY, model_type="glm4_moe", attention_smoothing=STANDARD_ATTENTION_SMOOTHING)
