"""The recipe is data: every stage config round-trips through JSON and YAML; bad input names its location."""

import json

import pytest
import yaml
from pydantic import ValidationError

from moecomp.compression.methods.registry import stage_configs
from moecomp.compression.recipe import Recipe, load_recipe


@pytest.mark.parametrize("config", stage_configs(), ids=lambda c: c.__name__)
def test_every_stage_config_round_trips_through_json(config):
    recipe = Recipe(stages=[config()])
    again = Recipe.model_validate(json.loads(recipe.model_dump_json()))
    assert again == recipe
    assert type(again.stages[0]) is config


def test_defaults_are_the_studys():
    recipe = Recipe()
    assert (recipe.calibration.samples, recipe.calibration.seq_len) == (128, 2048)
    assert recipe.stages == []


def test_yaml_and_json_files_load_the_same(tmp_path):
    data = {"stages": [{"method": "expert_drop", "mode": "global", "keep": 6}, {"method": "layer_drop", "drop": 8}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    assert load_recipe(tmp_path / "r.json") == load_recipe(tmp_path / "r.yaml")
    assert [s.method for s in load_recipe(tmp_path / "r.yaml").stages] == ["expert_drop", "layer_drop"]


@pytest.mark.parametrize(
    ("stage", "loc"),
    [
        ({"method": "no_such_method"}, ("stages", 0)),
        ({"method": "expert_drop", "keep": 0}, ("stages", 0, "expert_drop", "keep")),
        ({"method": "layer_drop", "drop": 2, "surprise": 1}, ("stages", 0, "layer_drop", "surprise")),
    ],
)
def test_bad_stages_are_refused_with_their_location(stage, loc):
    with pytest.raises(ValidationError) as err:
        Recipe.model_validate({"stages": [stage]})
    assert tuple(err.value.errors()[0]["loc"]) == loc


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (["gptq", "wanda"], "stage 1 (wanda) comes after the quantization stage 0 (gptq)"),
        (["rtn", "block_drop", "awq"], "stage 2 (awq) comes after the quantization stage 0 (rtn)"),
        (["gptq", "layer_drop", "magnitude"], "stage 2 (magnitude) comes after the quantization stage 0 (gptq)"),
    ],
)
def test_orders_the_engine_cannot_run_are_refused_up_front(methods, message):
    with pytest.raises(ValidationError) as err:
        Recipe.model_validate({"stages": [{"method": m} for m in methods]})
    assert tuple(err.value.errors()[0]["loc"]) == ("stages",) and message in err.value.errors()[0]["msg"]


@pytest.mark.parametrize(
    "methods",
    [
        ["wanda", "sparsegpt", "awq", "layer_drop", "block_drop"],
        ["expert_drop", "block_drop", "magnitude", "rtn"],
        ["layer_drop", "wanda", "gptq", "block_drop"],
    ],
)
def test_slimming_then_trimming_and_trimming_then_slimming_are_accepted(methods):
    assert [s.method for s in Recipe.model_validate({"stages": [{"method": m} for m in methods]}).stages] == methods
