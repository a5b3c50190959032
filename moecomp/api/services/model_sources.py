"""Resolve and check a job's model source, and check a recipe against the model's config where readable
(through the family table of compression/adapters, so no family name appears here).

A local path must resolve (symlinks followed) under one of settings.allowed_model_roots, so neither
``..`` nor a symlink can reach outside them, and outside the data folder (other teams' uploads and
artifacts); uploads must belong to the caller's team.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy.orm import Session

from moecomp.api.errors import Invalid
from moecomp.api.schemas import HubSource, LocalSource, UploadSource
from moecomp.compression.adapters import UnsupportedModel, get_adapter
from moecomp.compression.methods.base import ModelShape, ShapeError
from moecomp.compression.recipe import Recipe
from moecomp.compression.sources import config_dict, remote_code_config
from moecomp.persistence.models import Team
from moecomp.persistence.uploads import find_upload, upload_path
from moecomp.settings import Settings

LOC = ("body", "model")


@dataclass
class ResolvedSource:
    stored: dict[str, Any]  # what the job row keeps (a local path made absolute)
    ref: str  # what the `model` filter matches
    config: dict[str, Any] | None  # config.json when it is on this machine


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root.resolve()) for root in roots)


def _local_candidates(path: str, roots: list[Path]) -> list[Path]:
    p = Path(path)
    # A relative path may name a model inside a root ("tiny-mixtral") or one relative to the working directory.
    return [p] if p.is_absolute() else [root / p for root in roots] + [Path.cwd() / p]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _read_config(folder: Path, loc: tuple[str, ...]) -> dict[str, Any]:
    try:
        return config_dict(folder)
    except ValueError as exc:
        raise Invalid(loc, str(exc)) from None


def refuse_remote_code(folder: Path, loc: tuple[str, ...]) -> None:
    """422 at ``loc`` when a config of ``folder`` names remote code (auto_map); for settings.allow_remote_code off."""
    try:
        name = remote_code_config(folder)
    except ValueError as exc:
        raise Invalid(loc, str(exc)) from None
    if name is not None:
        raise Invalid(loc, f"{name} asks for remote code (auto_map), which this server does not allow")


def _resolve(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, ValueError):  # a NUL byte, a name too long, a symlink loop
        return None


def resolve_local(source: LocalSource, settings: Settings) -> ResolvedSource:
    loc = (*LOC, "path")
    roots = settings.allowed_model_roots
    resolved = [_resolve(c) for c in _local_candidates(source.path, roots)]
    # The data folder holds every team's uploads and artifacts: never a local model, even under a model root.
    private = settings.data_dir.resolve()
    inside = [c for c in resolved if c is not None and _under(c, roots) and not c.is_relative_to(private)]
    if not inside:
        raise Invalid(loc, "path must lie under an allowed model root, outside the service's data folder", source.path)
    folder = next((c for c in inside if _is_file(c / "config.json")), None)
    if folder is None:
        raise Invalid(loc, "no model folder with a config.json at this path", source.path)
    if not settings.allow_remote_code:
        refuse_remote_code(folder, loc)
    return ResolvedSource({"kind": "local", "path": str(folder)}, str(folder), _read_config(folder, loc))


def resolve_upload(source: UploadSource, session: Session, settings: Settings, team: Team) -> ResolvedSource:
    upload = find_upload(session, team.id, source.upload_id)
    if upload is None:
        raise Invalid((*LOC, "upload_id"), "no upload with this id", source.upload_id)
    folder = upload_path(settings, upload)
    if not settings.allow_remote_code:  # checked at upload too; the setting may have been switched off since
        refuse_remote_code(folder, (*LOC, "upload_id"))
    config = _read_config(folder, (*LOC, "upload_id"))
    return ResolvedSource(source.model_dump(), f"upload:{upload.id}", config)


def resolve_source(
    source: LocalSource | HubSource | UploadSource, session: Session, settings: Settings, team: Team
) -> ResolvedSource:
    """Check ``source`` and return what to store; raises Invalid at ["body", "model", ...]."""
    if isinstance(source, LocalSource):
        return resolve_local(source, settings)
    if isinstance(source, UploadSource):
        return resolve_upload(source, session, settings, team)
    return ResolvedSource(source.model_dump(), source.id, None)


def _shape(config: dict[str, Any]) -> ModelShape | None:
    """The model's shape from its config through the family table; None where the config lacks a key."""
    namespace = SimpleNamespace(**config)
    try:
        family = get_adapter(namespace)
    except UnsupportedModel as exc:
        raise Invalid(LOC, str(exc), config.get("model_type")) from None
    try:
        return ModelShape(
            family.num_experts(namespace),
            family.top_k(namespace),
            len(family.moe_layers(namespace)),
            int(namespace.num_hidden_layers),
        )
    except (AttributeError, TypeError, ValueError):  # an odd config: the worker reports what is wrong
        return None


def check_recipe_fits(recipe: Recipe, config: dict[str, Any]) -> None:
    """Refuse stages that ask for more than the model has, walking the stages in order (422 at the field)."""
    if not recipe.stages:
        return  # re-export and evaluation need no family adapter
    shape = _shape(config)
    if shape is None:
        return
    for i, stage in enumerate(recipe.stages):
        try:
            stage.check(shape)  # each stage's own bounds (methods/*.py), walked in order
        except ShapeError as exc:
            raise Invalid(("body", "recipe", "stages", i, exc.field), str(exc), exc.value) from None
