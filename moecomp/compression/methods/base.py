"""What every recipe stage config shares."""

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from moecomp.compression.observers import Trimmer


@dataclass
class ModelShape:
    """What the stages so far leave of a model: upper bounds where a stage's choice is not known yet."""

    experts: int  # routed experts per MoE layer
    top_k: int
    moe_layers: int
    blocks: int  # decoder blocks


class ShapeError(ValueError):
    """A stage asks for more than the model has: ``field`` of the stage, its ``value``, and why."""

    def __init__(self, field: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.field, self.value = field, value


class StageConfig(BaseModel):
    """Base of every stage config: unknown fields are an error, never silently ignored. Each stage narrows
    ``method`` to its own name (the recipe's discriminator) and says which pass ``family`` runs it; a trimming
    stage also says how the engine runs it (:meth:`trimmer`), so that a new stage needs no edit outside its module
    but its registration row (:mod:`moecomp.compression.methods.registry`)."""

    model_config = ConfigDict(extra="forbid")

    family: ClassVar[str]  # "trimming" or "slimming"
    method: str

    def check(self, shape: ModelShape) -> None:
        """Refuse (ShapeError) what this stage asks beyond ``shape``, before any work, and leave in ``shape``
        what the model is after it. The engine's own bounds (each method's select) say the same at run time."""

    def trimmer(self) -> Trimmer:
        """How the streaming engine scores and selects for this stage (family "trimming"): its module's TRIMMER."""
        raise TypeError(f"{self.method} is a {self.family} stage: only trimming stages have a trimmer")


# Upper bounds on the counts a request sets, far above any MoE model's shape, so that no request carries an
# absurd number (consecutive block_drop keeps `drop` copies of the calibration activations); the model's own
# shape is checked at submit where its config is readable (api/services/model_sources.py) and by each select().
MAX_BLOCKS = 256  # decoder blocks (or MoE sub-layers) dropped by one stage
MAX_EXPERTS = 1024  # routed experts per MoE layer
MAX_BLOCK_SIZE = 4096  # columns per GPTQ / SparseGPT block
MAX_GROUP_SIZE = 8192  # input columns per quantization scale


Backend = Literal["moecomp", "llmcompressor"]
BACKEND_DESCRIPTION = (
    "moecomp: streamed layer by layer, every expert of a layer at once (bounded host memory); "
    "llmcompressor: plain llm-compressor oneshot on the whole model loaded in host memory (the reference)"
)
