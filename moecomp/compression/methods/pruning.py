"""Expert Slimming by weight pruning (He et al. 2024, arXiv 2406.02500, Sec. 3.1).

For a linear W [out, in] and its calibration inputs X [tokens, in] (for a routed expert: only the tokens
the router sends to it, as in the study), the weights with the lowest score are set to zero:

- ``magnitude``: score = |W_ij|, lowest over the whole matrix (unstructured);
- ``wanda`` (Sun et al. 2023): score = |W_ij| * ||X_:,j||_2, lowest per output row i;
- ``sparsegpt`` (Frantar & Alistarh 2023): score = W_ij^2 / [H^-1]_jj^2 with H = 2 X^T X, per block of
  columns, and the surviving weights are updated to compensate (OBS), as in GPTQ.

``sparsity`` s prunes a fraction s of each linear; ``pattern`` "N:M" prunes N of every M consecutive
input weights of each row (2:4 and 4:8 are 50%), the layout sparse tensor cores use.
An expert that received no token has no statistics: Wanda and SparseGPT fall back to magnitude for it
(reported). Pruned weights are stored dense: in the saved checkpoint unstructured or N:M sparsity
saves neither disk nor memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from moecomp.compression.methods.base import BACKEND_DESCRIPTION, MAX_BLOCK_SIZE, Backend, SlimmingConfig, hessians
from moecomp.compression.slimming.targets import SCOPES, Scope

if TYPE_CHECKING:
    from moecomp.compression.adapters import MoEFamily
    from moecomp.compression.planning import Setting
    from moecomp.compression.sizes import Sizes
    from moecomp.compression.slimming.targets import Target

Pattern = Literal["2:4", "4:8"]


class _PruningConfig(SlimmingConfig):
    quantizes: ClassVar[bool] = False
    uses_data: ClassVar[bool] = True
    sparsity: float | None = Field(
        None, gt=0, lt=1, description="Fraction of each linear's weights set to zero (0.5 when no pattern)."
    )
    pattern: Pattern | None = Field(None, description="N:M semi-structured sparsity instead of `sparsity`.")
    scope: list[Scope] = Field(
        default_factory=lambda: list[Scope](["routed_experts"]),
        max_length=len(SCOPES),
        description="Which linears to prune: routed_experts (default), shared_experts, attention. Never the router.",
    )
    backend: Backend = Field("moecomp", description=BACKEND_DESCRIPTION)

    @field_validator("scope")
    @classmethod
    def _non_empty(cls, value: list[Scope]) -> list[Scope]:
        if not value:
            raise ValueError("scope must name at least one of " + ", ".join(SCOPES))
        return sorted(set(value), key=SCOPES.index)

    @model_validator(mode="after")
    def _one_of_sparsity_or_pattern(self) -> _PruningConfig:
        if self.pattern is not None and self.sparsity is not None:
            raise ValueError("give either `sparsity` or `pattern`, not both (an N:M pattern fixes the sparsity)")
        if self.pattern is None and self.sparsity is None:
            self.sparsity = 0.5
        return self

    @property
    def n_m(self) -> tuple[int, int]:
        """(N, M) for a pattern, (0, 0) for unstructured pruning."""
        if self.pattern is None:
            return 0, 0
        n, m = self.pattern.split(":")
        return int(n), int(m)

    @property
    def target_sparsity(self) -> float:
        n, m = self.n_m
        return n / m if m else float(self.sparsity or 0.0)


class MagnitudeConfig(_PruningConfig):
    uses_data: ClassVar[bool] = False
    method: Literal["magnitude"] = "magnitude"

    def slimmer(self) -> Callable[..., Any]:
        from moecomp.compression.slimming import magnitude

        return magnitude.slim


class WandaConfig(_PruningConfig):
    method: Literal["wanda"] = "wanda"

    def slimmer(self) -> Callable[..., Any]:
        from moecomp.compression.slimming import wanda

        return wanda.slim

    def llmcompressor_modifiers(self, model: Any, family: MoEFamily, targets: list[Target]) -> list[Any]:
        from moecomp.compression.slimming.llmcompressor_modifiers import wanda_modifiers

        return wanda_modifiers(self, targets)


class SparseGPTConfig(_PruningConfig):
    method: Literal["sparsegpt"] = "sparsegpt"
    block_size: int = Field(128, ge=1, le=MAX_BLOCK_SIZE, description="Columns pruned per SparseGPT block.")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Added to H's diagonal, as a fraction of its mean.")

    def host_buffers(self, setting: Setting, before: Sizes, item: int) -> dict[str, int]:
        return hessians(setting, before)

    def slimmer(self) -> Callable[..., Any]:
        from moecomp.compression.slimming import sparsegpt

        return sparsegpt.slim

    def llmcompressor_modifiers(self, model: Any, family: MoEFamily, targets: list[Target]) -> list[Any]:
        from moecomp.compression.slimming.llmcompressor_modifiers import sparsegpt_modifiers

        return sparsegpt_modifiers(self, targets)


PruningStage = MagnitudeConfig | WandaConfig | SparseGPTConfig


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where pruned: the ``n`` lowest scores of every ``m`` consecutive columns of each row."""
    rows, cols = score.shape  # [out, in]
    if cols % m:
        raise ValueError(f"an {n}:{m} pattern needs the input width ({cols}) to be a multiple of {m}")
    groups = score.reshape(rows, cols // m, m)  # [out, in/m, m]
    lowest = groups.topk(n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
    return mask.reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """True where pruned by |W|: the lowest ``sparsity`` fraction of the whole matrix, or N:M per row."""
    score = weight.detach().abs().float()  # [out, in]
    if m:
        return nm_mask(score, n, m)
    k = int(score.numel() * sparsity)
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    mask[score.flatten().argsort(stable=True)[:k]] = True
    return mask.view_as(score)


def wanda_mask(weight: torch.Tensor, inputs: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """Reference Wanda mask (slow, obvious): score |W_ij| * ||X_:,j||_2, lowest per row or N:M."""
    norms = inputs.float().pow(2).sum(dim=0).sqrt()  # [in]
    score = weight.detach().abs().float() * norms[None, :]  # [out, in]
    if m:
        return nm_mask(score, n, m)
    k = int(score.shape[1] * sparsity)
    order = score.argsort(dim=1, stable=True)[:, :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)


def realized_sparsity(weight: torch.Tensor) -> float:
    """Fraction of exactly-zero weights."""
    return float((weight == 0).sum()) / weight.numel()


def pattern_holds(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every ``m`` consecutive input weights of every row hold at least ``n`` zeros."""
    rows, cols = weight.shape
    zeros = (weight == 0).reshape(rows, cols // m, m).sum(dim=-1)
    return bool((zeros >= n).all())
