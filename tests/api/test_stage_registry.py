"""A stage added from outside the library (tests/stage_plugin.py, one module) with one registration row is
validated by the recipe, listed by GET /v1/methods, refused at its field by POST /v1/jobs, and run by the engine;
taken out again, it is gone everywhere. The app is created before the stage is registered: nothing is frozen at
import or at startup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from transformers import AutoConfig, AutoModelForCausalLM

from moecomp.compression.methods.registry import register_stage, registered_stage, stage_configs
from moecomp.compression.pipeline import compress
from moecomp.compression.recipe import Recipe
from moecomp.compression.structure import Decisions
from tests.api.helpers import job_body
from tests.stage_plugin import METHOD, DropListedExpertsConfig

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # validation is database-blind
STAGE = ("stages", 0, METHOD)


@pytest.fixture
def plugin() -> Iterator[type[DropListedExpertsConfig]]:
    with registered_stage(DropListedExpertsConfig) as config:
        yield config
    assert DropListedExpertsConfig not in stage_configs()  # nothing leaks into other tests


def stages(*stages: dict[str, object]) -> dict[str, object]:
    return {"stages": list(stages), "calibration": {"samples": 4, "seq_len": 64}}


def test_the_recipe_validates_a_registered_stage_with_its_errors_at_its_fields(plugin: type) -> None:
    recipe = Recipe.model_validate(stages({"method": METHOD, "experts": [1, 5]}))
    assert type(recipe.stages[0]) is plugin and recipe.stages[0].experts == [1, 5]  # type: ignore[attr-defined]
    assert Recipe.model_validate_json(recipe.model_dump_json()) == recipe
    with pytest.raises(ValidationError) as bad:
        Recipe.model_validate(stages({"method": METHOD, "experts": [-1]}))
    assert [e["loc"] for e in bad.value.errors()] == [(*STAGE, "experts", 0)]
    with pytest.raises(ValidationError) as unknown:
        Recipe.model_validate(stages({"method": "no_such_method"}))
    assert "'expert_drop', 'layer_drop'" in unknown.value.errors()[0]["msg"] and f"'{METHOD}'" in str(unknown.value)


def test_a_stage_taken_out_is_refused_and_a_taken_name_cannot_be_registered_twice() -> None:
    with registered_stage(DropListedExpertsConfig):
        Recipe.model_validate(stages({"method": METHOD}))
    with pytest.raises(ValidationError) as gone:
        Recipe.model_validate(stages({"method": METHOD}))
    (error,) = gone.value.errors()
    assert error["type"] == "union_tag_invalid" and METHOD not in error["ctx"]["expected_tags"]

    class Impostor(DropListedExpertsConfig):
        pass

    with registered_stage(DropListedExpertsConfig), pytest.raises(ValueError, match="already registered"):
        register_stage(Impostor)


@SQLITE
def test_get_methods_lists_the_stage_while_it_is_registered(client: TestClient, auth: dict[str, str]) -> None:
    def listed() -> tuple[list[str], dict[str, str]]:
        answer = client.get("/v1/methods", headers=auth).json()
        mapping = answer["recipe_schema"]["properties"]["stages"]["items"]["discriminator"]["mapping"]
        return [m["name"] for m in answer["methods"]], mapping

    names, mapping = listed()
    assert METHOD not in names and METHOD not in mapping
    with registered_stage(DropListedExpertsConfig):
        names, mapping = listed()
        assert names[-1] == METHOD and set(mapping) == set(names)  # the recipe schema describes every stage
        method = client.get("/v1/methods", headers=auth).json()["methods"][-1]
        assert method["family"] == "trimming" and method["defaults"] == {"method": METHOD, "experts": [0]}
        assert "experts" in method["schema"]["properties"] and "plugin" in method["description"]
    assert METHOD not in listed()[0]


@SQLITE
@pytest.mark.parametrize(
    ("experts", "loc"),
    [
        ([-1], ["body", "recipe", *STAGE, "experts", 0]),  # the config's own bound
        ([8], ["body", "recipe", "stages", 0, "experts"]),  # the stage's check against tiny-mixtral's 8 experts
    ],
)
def test_a_job_with_a_bad_value_for_the_stage_is_a_422_at_its_field(
    client: TestClient, auth: dict[str, str], experts: list[int], loc: list[object]
) -> None:
    with registered_stage(DropListedExpertsConfig):
        body = job_body(recipe=stages({"method": METHOD, "experts": experts}))
        refused = client.post("/v1/jobs", json=body, headers=auth)
        assert refused.status_code == 422 and [e["loc"] for e in refused.json()["detail"]] == [loc], refused.text
        body = job_body(recipe=stages({"method": METHOD, "experts": [7]}))
        assert client.post("/v1/jobs", json=body, headers=auth).status_code == 201


def test_the_engine_runs_the_stage_on_the_bundled_model(plugin: type, tiny_mixtral_dir: Path, tmp_path: Path) -> None:
    recipe = Recipe.model_validate(stages({"method": METHOD, "experts": [1, 5]}))
    manifest = compress(tiny_mixtral_dir, recipe, tmp_path / "out")
    kept = [0, 2, 3, 4, 6, 7]
    assert Decisions.from_json(manifest["decisions"]).kept_experts == {layer: kept for layer in range(8)}
    assert [s["method"] for s in manifest["stages"]] == [METHOD] and manifest["output"]["loading"] == "stock"
    assert AutoConfig.from_pretrained(tmp_path / "out").num_local_experts == 6
    before = AutoModelForCausalLM.from_pretrained(tiny_mixtral_dir, dtype=torch.float32)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    for old, new in zip(before.model.layers, after.model.layers, strict=True):  # the listed experts, and only them
        torch.testing.assert_close(new.mlp.gate.weight, old.mlp.gate.weight[kept], atol=0, rtol=0)
        torch.testing.assert_close(new.mlp.experts.gate_up_proj, old.mlp.experts.gate_up_proj[kept], atol=0, rtol=0)
        torch.testing.assert_close(new.mlp.experts.down_proj, old.mlp.experts.down_proj[kept], atol=0, rtol=0)
