"""The table of recipe stages, keyed by ``method``, read whenever a stage is validated, described or run.

A stage is one module (its config, a :class:`~moecomp.compression.methods.base.StageConfig`) and one
``register_stage`` row. Nothing is derived from the table at import time: the recipe validates each stage
against the table as it is then (:data:`Stage`), ``GET /v1/methods`` describes it as it is then, and the engine
asks the stage itself how it runs. A stage registered later (a test's) is therefore accepted everywhere, and
:func:`registered_stage` takes it out again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Any, Union

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from moecomp.compression.methods.base import SlimmingConfig, StageConfig

_STAGES: dict[str, type[StageConfig]] = {}


def method_name(config: type[StageConfig]) -> str:
    """The ``method`` a stage config answers to: the default of its narrowed ``method`` field."""
    name = config.model_fields["method"].default
    if not isinstance(name, str):
        raise TypeError(f"{config.__qualname__}.method needs its method name as default, e.g. Literal['x'] = 'x'")
    return name


def register_stage(config: type[StageConfig]) -> type[StageConfig]:
    """Add ``config`` to the table under its method name; a name taken by another config is refused."""
    name = method_name(config)
    known = _STAGES.setdefault(name, config)
    if known is not config:
        raise ValueError(f"stage method {name!r} is already registered by {known.__qualname__}")
    return config


def unregister_stage(config: type[StageConfig]) -> None:
    if _STAGES.get(method_name(config)) is config:
        del _STAGES[method_name(config)]


@contextmanager
def registered_stage(config: type[StageConfig]) -> Iterator[type[StageConfig]]:
    """``config`` in the table for the ``with`` block only (a test's stage must not outlive its test)."""
    register_stage(config)
    try:
        yield config
    finally:
        unregister_stage(config)


def stage_configs() -> tuple[type[StageConfig], ...]:
    """The registered stage configs, in registration order (the order forms and error messages list them)."""
    return tuple(_STAGES.values())


def slimming_stages(stages: Sequence[StageConfig]) -> list[SlimmingConfig]:
    """``stages`` for a slimming pass, refused (ValueError, naming the slimming methods) unless all are slimming."""
    slimming = [stage for stage in stages if isinstance(stage, SlimmingConfig)]
    if len(slimming) < len(stages):
        others = [stage.method for stage in stages if not isinstance(stage, SlimmingConfig)]
        known = ", ".join(method_name(c) for c in stage_configs() if issubclass(c, SlimmingConfig))
        raise ValueError(f"not slimming stages: {others}; slimming methods: {known}")
    return slimming


def stage_union() -> TypeAdapter[Any]:
    """pydantic's discriminated union of the stages registered now: its errors (an unknown method names the known
    ones; a bad field is at ``<method>.<field>``) and its JSON schema are the recipe's."""
    return _union(stage_configs())


@lru_cache(maxsize=8)  # rebuilt only when the table changes: building it costs milliseconds, validating does not
def _union(configs: tuple[type[StageConfig], ...]) -> TypeAdapter[Any]:
    members: Any = Union[configs]  # noqa: UP007 (a union built from a tuple)
    return TypeAdapter(Annotated[members, Field(discriminator="method")])


class _RegisteredStage:
    """pydantic hooks of :data:`Stage`: validate, and describe, with the union of the table as it is at the time."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(lambda value: stage_union().validate_python(value))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(stage_union().core_schema)


Stage = Annotated[StageConfig, _RegisteredStage()]
"""A recipe stage: any registered stage config, chosen by ``method``."""
