"""Layer Drop (He et al. 2024, arXiv 2406.02500, Sec. 3.2).

sim[l] = mean over tokens t of cos(x_t, x_t + MoE_l(Norm_l(x_t)))   (metric "residual")
sim[l] = mean over tokens t of cos(Norm_l(x_t), MoE_l(Norm_l(x_t)))  (metric "moe_only")
x = the residual stream entering layer l's post-attention norm. The ``drop`` most similar MoE
sub-layers (norm and MoE) are removed; the layer then computes exactly h + Attention(...).
Dense layers are never candidates.
"""

from typing import ClassVar, Literal

from pydantic import Field

from moecomp.compression.methods.base import StageConfig


class LayerDropConfig(StageConfig):
    family: ClassVar[str] = "trimming"
    method: Literal["layer_drop"] = "layer_drop"
    drop: int = Field(8, ge=1, description="Number of MoE sub-layers to remove.")
    metric: Literal["residual", "moe_only"] = "residual"
    iterative: bool = Field(False, description="Re-score after each drop instead of one pass.")
