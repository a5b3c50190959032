"""Block Drop (He et al. 2024, arXiv 2406.02500, Sec. 3.2).

discrete:    sim[i] = mean over tokens of cos(h_i, h_{i+1}); drop the ``drop`` blocks with the highest sim.
consecutive: sim[i] = mean over tokens of cos(h_i, h_{i+drop}); drop blocks i .. i+drop-1 for the best i.
h_i = the hidden state entering decoder block i (h_n = the output of the last block).
"""

from typing import ClassVar, Literal

from pydantic import Field

from moecomp.compression.methods.base import StageConfig


class BlockDropConfig(StageConfig):
    family: ClassVar[str] = "trimming"
    method: Literal["block_drop"] = "block_drop"
    drop: int = Field(5, ge=1, description="Number of decoder blocks to remove.")
    mode: Literal["discrete", "consecutive"] = "discrete"
    iterative: bool = Field(False, description="Re-score after each drop instead of one pass (discrete only).")
