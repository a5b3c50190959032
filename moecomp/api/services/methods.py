"""What a job can ask for, for forms and clients: each stage method with its JSON schema and defaults, and the
model families the adapters support."""

from __future__ import annotations

import inspect
import sys
from functools import lru_cache

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from moecomp.api.schemas import FamilyPublic, MethodPublic, MethodsPublic, RefusalPublic
from moecomp.compression.adapters import FAMILIES, MoEFamily
from moecomp.compression.evaluation.spec import EvaluationSpec
from moecomp.compression.methods.base import StageConfig
from moecomp.compression.methods.registry import stage_configs
from moecomp.compression.recipe import Recipe


def _description(config: type[BaseModel]) -> str:
    # A config's own docstring if it has one (not one inherited from StageConfig), else its module's,
    # which opens with the method's name, source and formula.
    own = config.__dict__.get("__doc__")
    doc = inspect.cleandoc(own) if own else inspect.getdoc(sys.modules[config.__module__])
    return (doc or "").strip()


def _defaults(config: type[BaseModel]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, field in config.model_fields.items():
        if field.default is not PydanticUndefined:
            out[name] = field.default
        elif field.default_factory is not None:
            out[name] = field.default_factory()  # type: ignore[call-arg]
    return out


def describe_method(config: type[BaseModel]) -> MethodPublic:
    defaults = _defaults(config)
    return MethodPublic(
        name=str(defaults["method"]),
        family=getattr(config, "family", "unknown"),
        description=_description(config),
        json_schema=config.model_json_schema(),
        defaults=defaults,
    )


def describe_family(family: MoEFamily) -> FamilyPublic:
    return FamilyPublic(
        model_type=family.model_type,
        refused=[RefusalPublic(applies_to=key, reason=reason) for key, reason in family.refused],
        refused_checkpoints=[RefusalPublic(applies_to=q, reason=reason) for q, reason in family.refused_quantizations],
        dequantized_checkpoints=list(family.dequantize_on_read),
    )


def describe_methods() -> MethodsPublic:
    """The stage table as it is now: a stage registered since the last call is listed (and in the recipe schema)."""
    return _describe(stage_configs())


@lru_cache(maxsize=4)  # one answer per stage table: building the schemas costs ~15 ms, the table rarely changes
def _describe(configs: tuple[type[StageConfig], ...]) -> MethodsPublic:
    return MethodsPublic(
        methods=[describe_method(c) for c in configs],
        families=[describe_family(f) for f in sorted(FAMILIES.values(), key=lambda f: f.model_type)],
        recipe_schema=Recipe.model_json_schema(),
        evaluation_schema=EvaluationSpec.model_json_schema(),
    )
