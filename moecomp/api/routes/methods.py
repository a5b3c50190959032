"""/v1/methods: the stage methods a recipe may use, with JSON schemas for forms and clients."""

from __future__ import annotations

from fastapi import APIRouter

from moecomp.api.deps import TeamDep
from moecomp.api.responses import refusals
from moecomp.api.schemas import MethodsPublic
from moecomp.api.services.methods import describe_methods

router = APIRouter(tags=["methods"], responses=refusals(401))


@router.get("/methods", response_model=MethodsPublic, response_model_by_alias=True)
def list_methods(team: TeamDep) -> MethodsPublic:
    return describe_methods()
