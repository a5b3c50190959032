"""One table of supported MoE families, keyed by ``config.model_type``."""

from __future__ import annotations

from typing import Any

from moecomp.compression.adapters import (
    deepseek_v2,
    deepseek_v3,
    deepseek_v32,
    ernie4_5_moe,
    glm4_moe,
    gpt_oss,
    llama4,
    minimax_m2,
    mixtral,
    olmoe,
    qwen2_moe,
    qwen3_5_moe,
    qwen3_moe,
    qwen3_next,
)
from moecomp.compression.adapters.family import DiskLayout, MoEFamily, RefusedMethod, SmoothingPair

FAMILIES: dict[str, MoEFamily] = {
    module.FAMILY.model_type: module.FAMILY
    for module in (
        mixtral,
        qwen2_moe,
        qwen3_moe,
        olmoe,
        deepseek_v3,
        deepseek_v2,
        glm4_moe,
        minimax_m2,
        ernie4_5_moe,
        llama4,
        qwen3_next,
        qwen3_5_moe,
        deepseek_v32,
        gpt_oss,
    )
}


class UnsupportedModel(ValueError):
    """The model is not one of the supported MoE families."""


def get_adapter(config: Any) -> MoEFamily:
    """The family description for a transformers config (or anything with ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)  # type: ignore[arg-type]
    if family is None:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedModel(f"model_type {model_type!r} is not a supported MoE family; supported: {supported}")
    return family


__all__ = ["FAMILIES", "DiskLayout", "MoEFamily", "RefusedMethod", "SmoothingPair", "UnsupportedModel", "get_adapter"]
