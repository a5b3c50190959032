"""Expert Drop (He et al. 2024, arXiv 2406.02500, Sec. 3.2).

score[l, e] = mean over calibration tokens t of softmax(router_l(x_t))[e]   (over all experts, not top-k)
Keep the ``keep`` best experts of each MoE layer (layerwise), or the ``keep * n_moe_layers`` best
across the model (global; per-layer counts may differ). Shared experts are never dropped.
"""

from typing import ClassVar, Literal

from pydantic import Field

from moecomp.compression.methods.base import StageConfig


class ExpertDropConfig(StageConfig):
    family: ClassVar[str] = "trimming"
    method: Literal["expert_drop"] = "expert_drop"
    mode: Literal["layerwise", "global"] = "layerwise"
    keep: int = Field(6, ge=1, description="Experts kept per MoE layer (global: on average).")
    iterative: bool = Field(False, description="Re-score after each layer's drop instead of one pass.")
