"""What every recipe stage config shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from moecomp.compression.observers import Trimmer

if TYPE_CHECKING:  # type-only: planning imports the stages (through the recipe), the slimming passes import them
    from moecomp.compression.adapters import MoEFamily
    from moecomp.compression.planning import Setting
    from moecomp.compression.sizes import Sizes
    from moecomp.compression.slimming.targets import Scope, Target


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
    stage also says how the engine runs it (:meth:`trimmer`), and every stage what it does to the checkpoint's
    size (:meth:`resized`), what host memory it adds to its pass (:meth:`host_buffers`) and where it cannot run
    (:meth:`check_device`), so that a new stage needs no edit outside its module but its registration row
    (:mod:`moecomp.compression.methods.registry`)."""

    model_config = ConfigDict(extra="forbid")

    family: ClassVar[str]  # "trimming" or "slimming"
    method: str

    def check(self, shape: ModelShape) -> None:
        """Refuse (ShapeError) what this stage asks beyond ``shape``, before any work, and leave in ``shape``
        what the model is after it. The engine's own bounds (each method's select) say the same at run time."""

    def trimmer(self) -> Trimmer:
        """How the streaming engine scores and selects for this stage (family "trimming"): its module's TRIMMER."""
        raise TypeError(f"{self.method} is a {self.family} stage: only trimming stages have a trimmer")

    def resized(self, sizes: Sizes) -> Sizes:
        """The checkpoint's bytes after this stage, as its config says (:mod:`moecomp.compression.sizes`); by
        default unchanged (pruning stores its zeros dense)."""
        return sizes

    def host_buffers(self, setting: Setting, before: Sizes, item: int) -> dict[str, int]:
        """Host bytes, by name, this stage keeps beside its streamed pass's own (:mod:`moecomp.compression.planning`),
        on the model ``before`` it, computing with ``item`` bytes per element."""
        return {}

    def check_device(self, device: str) -> None:
        """Refuse (ValueError) a device this stage cannot run on, before any work."""

    def pass_kind(self) -> str:
        """The pass that runs this stage (``pipeline.split_passes``): its family's by default."""
        return self.family


class SlimmingConfig(StageConfig):
    """Base of the slimming stages: what the streamed pass (:mod:`moecomp.compression.slimming.run`) and the
    llm-compressor pass ask of a stage. The kernels are imported when a pass asks for them, never with the
    config: they pull in llm-compressor (seconds per process) and import the configs themselves."""

    family: ClassVar[str] = "slimming"
    uses_data: ClassVar[bool]  # needs a calibration run of the layer (input statistics) before it slims
    quantizes: ClassVar[bool]  # writes packed low-bit weights (else dense weights, pruned)
    smooths: ClassVar[bool] = False  # rescales the layer's norms and linears (AWQ) before it quantizes
    actorder: ClassVar[str | None] = None  # the activation ordering llm-compressor records for the scheme
    if TYPE_CHECKING:  # fields every slimming stage declares (each where its schema wants it)
        backend: Backend
        scope: list[Scope]

    def pass_kind(self) -> str:
        return "slimming" if self.backend == "moecomp" else "slimming_llmcompressor"

    def slimmer(self) -> Callable[..., Any]:
        """The streamed pass's kernel: ``slim(config, weight [B, out, in], stats, group_size, scale_dtype)`` ->
        ``Slimmed`` (stats None for data-free methods; group size and scale dtype used by quantization only)."""
        raise NotImplementedError

    def llmcompressor_modifiers(self, model: Any, family: MoEFamily, targets: list[Target]) -> list[Any]:
        """The llm-compressor modifiers that carry this stage out on ``targets`` of a linearized ``model``."""
        raise NotImplementedError(f"{self.method} has no llm-compressor modifier")


def hessians(setting: Setting, before: Sizes) -> dict[str, int]:
    """GPTQ's and SparseGPT's host buffers on the CPU: H = X^T X of every routed expert of a layer, for its hidden
    and its intermediate width, in float32 (on a GPU they stay on the device)."""
    if setting.device.startswith("cuda"):
        return {}
    config = setting.config
    width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    return {"Hessians": max(before.moe, default=0) * (config.hidden_size**2 + width**2) * 4}


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
