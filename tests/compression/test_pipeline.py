"""compress(): every trimming recipe of the study on both fixtures gives a checkpoint that reloads in a fresh
interpreter (without moecomp) and reproduces the model the engine decided, applied in memory."""

import json
from typing import ClassVar, Literal

import pytest
import torch
from test_export import IDS, decided_logits, reload_isolated

from moecomp.compression import pipeline
from moecomp.compression.context import Cancelled, RunContext
from moecomp.compression.export import export_trimmed
from moecomp.compression.manifest import SCHEMA, verify_files
from moecomp.compression.methods.base import StageConfig
from moecomp.compression.methods.block_drop import BlockDropConfig
from moecomp.compression.methods.expert_drop import ExpertDropConfig
from moecomp.compression.methods.layer_drop import LayerDropConfig
from moecomp.compression.pipeline import PASS_RUNNERS, PassResult, compress, split_passes, to_original
from moecomp.compression.recipe import CalibrationSpec, Recipe
from moecomp.compression.structure import Decisions

CALIBRATION = {"sources": ["bundled:shakespeare", "bundled:python"], "samples": 4, "seq_len": 64}
RECIPES = {
    "expert_drop_layerwise6": ([{"method": "expert_drop", "keep": 6}], "stock"),
    "expert_drop_global6": ([{"method": "expert_drop", "mode": "global", "keep": 6}], "remote_code"),
    "layer_drop2": ([{"method": "layer_drop", "drop": 2}], "remote_code"),
    "block_drop2": ([{"method": "block_drop", "drop": 2}], "stock"),
    "layer_drop2_then_expert_drop6": (
        [{"method": "layer_drop", "drop": 2}, {"method": "expert_drop", "keep": 6}],
        None,
    ),
}
FIXTURES = ("tiny_mixtral_dir", "tiny_qwen2_moe_dir")


class CopyStage(StageConfig):
    """A stage of another family, to exercise the pass seam with a real runner (re-export unchanged)."""

    family: ClassVar[str] = "copy"
    method: Literal["copy"] = "copy"


def copy_pass(job):
    export_trimmed(job.model_dir, Decisions(), job.out_dir, manifest=job.manifest, ctx=job.ctx)
    return PassResult([{"method": "copy", "config": {}}], job.decisions)


@pytest.fixture(scope="module")
def compressed(request, tmp_path_factory):
    """Every recipe on both fixtures, compressed once; all reloaded in ONE isolated interpreter."""
    root = tmp_path_factory.mktemp("compress")
    jobs, done = {}, {}
    for fixture in FIXTURES:
        source = request.getfixturevalue(fixture)
        for name, (stages, _) in RECIPES.items():
            events = []
            recipe = Recipe.model_validate({"stages": stages, "calibration": CALIBRATION})
            out = root / f"{fixture}-{name}" / "checkpoint"
            manifest = compress(source, recipe, out, ctx=RunContext(sink=lambda *e, ev=events: ev.append(e)))
            decisions = Decisions.from_json(manifest["decisions"])
            jobs[f"{fixture}-{name}"] = (str(out), manifest["output"]["loading"] == "remote_code")
            done[f"{fixture}-{name}"] = (manifest, out, events, decided_logits(source, decisions))
    return done, reload_isolated(root, jobs)


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_checkpoint_reloads_and_reproduces_logits(compressed, fixture, recipe):
    done, results = compressed
    manifest, out, events, expected = done[f"{fixture}-{recipe}"]
    assert results["isolated"]
    torch.testing.assert_close(results[f"{fixture}-{recipe}"], expected, atol=1e-5, rtol=0)
    loading = RECIPES[recipe][1] or manifest["output"]["loading"]
    assert manifest["output"]["loading"] == loading
    assert manifest["schema"] == SCHEMA and verify_files(out, manifest) == []
    assert [s["method"] for s in manifest["stages"]] == [s["method"] for s in RECIPES[recipe][0]]
    assert sorted(p.name for p in out.parent.iterdir()) == ["checkpoint"]  # scratch removed


@pytest.mark.parametrize("fixture", FIXTURES)
def test_decisions_have_the_shape_each_recipe_asks(compressed, fixture):
    done, _ = compressed

    def decisions(name):
        return done[f"{fixture}-{name}"][0]["decisions"]

    layerwise = decisions("expert_drop_layerwise6")["kept_experts"]
    assert len(layerwise) == 8 and all(len(v) == 6 for v in layerwise.values())
    total = sum(len(v) for v in decisions("expert_drop_global6")["kept_experts"].values())
    experts = done[f"{fixture}-expert_drop_global6"][0]["output"]["experts_per_layer"]
    assert sum(experts.values()) == 6 * 8 and total <= 6 * 8
    assert len(decisions("layer_drop2")["dropped_layers"]) == 2
    assert len(decisions("block_drop2")["dropped_blocks"]) == 2
    both = decisions("layer_drop2_then_expert_drop6")
    assert len(both["dropped_layers"]) == 2 and set(both["kept_experts"]).isdisjoint(map(str, both["dropped_layers"]))
    assert all(len(v) == 6 for v in both["kept_experts"].values()) and len(both["kept_experts"]) == 6


def test_progress_goes_through_every_stage(compressed):
    done, _ = compressed
    _, _, events, _ = done["tiny_mixtral_dir-layer_drop2_then_expert_drop6"]
    stages = list(dict.fromkeys(stage for kind, stage, _ in events if kind == "progress"))
    assert stages == ["load", "calibrate", "layer_drop", "expert_drop", "export"]
    last = [data for kind, stage, data in events if kind == "progress" and stage == "export"][-1]
    assert (last["step"], last["total"]) == (8, 8)


def test_empty_recipe_re_exports_the_model(tiny_qwen2_moe_dir, tmp_path):
    manifest = compress(tiny_qwen2_moe_dir, Recipe(), tmp_path / "out")
    assert manifest["output"]["loading"] == "stock" and manifest["stages"] == []
    assert manifest["decisions"] == Decisions().to_json()
    assert manifest["source"]["model"] == str(tiny_qwen2_moe_dir)
    reloaded = pipeline.AutoConfig.from_pretrained(tmp_path / "out")
    assert reloaded.num_experts == 16
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)(IDS).logits
    torch.testing.assert_close(got, decided_logits(tiny_qwen2_moe_dir, Decisions()), atol=0, rtol=0)


def test_trimming_after_another_pass_reports_original_numbering(tiny_mixtral_dir, tmp_path, monkeypatch):
    """block drop | copy pass | expert drop: the second trimming pass runs on the renumbered checkpoint."""
    monkeypatch.setitem(PASS_RUNNERS, "copy", copy_pass)
    stages = [BlockDropConfig(drop=1), CopyStage(), ExpertDropConfig(keep=6)]
    recipe = Recipe.model_construct(version=1, stages=stages, calibration=CalibrationSpec(**CALIBRATION))
    manifest = compress(tiny_mixtral_dir, recipe, tmp_path / "out")
    assert [p["family"] for p in manifest["timings"]["passes"]] == ["trimming", "copy", "trimming"]
    decisions = Decisions.from_json(manifest["decisions"])
    (block,) = decisions.dropped_blocks
    assert sorted(decisions.kept_experts) == [i for i in range(8) if i != block]
    reloaded = reload_isolated(tmp_path, {"x": (str(tmp_path / "out"), False)})
    torch.testing.assert_close(reloaded["x"], decided_logits(tiny_mixtral_dir, decisions), atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["isolated", "out"]


def test_split_passes_groups_consecutive_families():
    a, b, c = ExpertDropConfig(), CopyStage(), LayerDropConfig()
    assert split_passes([a, c, b, a]) == [("trimming", [a, c]), ("copy", [b]), ("trimming", [a])]
    assert split_passes([]) == [("trimming", [])]


def test_to_original_maps_through_earlier_decisions():
    earlier = Decisions(kept_experts={0: [1, 3, 4, 6], 2: [0, 2, 5, 7]}, dropped_blocks=[1])
    later = Decisions(kept_experts={0: [0, 2, 3], 1: [1, 3]}, dropped_layers=[2], dropped_blocks=[5])
    mapped = to_original(later, earlier, num_layers=8)
    assert mapped.kept_experts == {0: [1, 4, 6], 2: [2, 7]}
    assert mapped.dropped_layers == [3] and mapped.dropped_blocks == [1, 6]


def test_bad_inputs_fail_before_any_work(tiny_mixtral_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(FileExistsError):
        compress(tiny_mixtral_dir, Recipe(), tmp_path / "busy")
    with pytest.raises(ValueError, match="dtype"):
        compress(tiny_mixtral_dir, Recipe(), tmp_path / "o1", dtype="int3")
    with pytest.raises(FileNotFoundError):
        compress(tmp_path / "missing", Recipe(), tmp_path / "o2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_a_failed_or_cancelled_run_leaves_nothing(tiny_mixtral_dir, tmp_path):
    recipe = Recipe.model_validate({"stages": [{"method": "expert_drop", "keep": 8}], "calibration": CALIBRATION})
    with pytest.raises(ValueError, match="keep"):
        compress(tiny_mixtral_dir, recipe, tmp_path / "out")
    recipe = Recipe.model_validate({"stages": [{"method": "layer_drop", "drop": 1}], "calibration": CALIBRATION})
    (tmp_path / "given").mkdir()
    steps = []
    ctx = RunContext(sink=lambda kind, stage, data: steps.append(stage), should_cancel=lambda: "layer_drop" in steps)
    with pytest.raises(Cancelled):
        compress(tiny_mixtral_dir, recipe, tmp_path / "given", ctx=ctx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given"] and not any((tmp_path / "given").iterdir())


def test_trimming_then_slimming_passes(tiny_mixtral_dir, tmp_path):
    """block drop (stock result) then RTN through the real slimming runner: one manifest, original numbering."""
    stages = [{"method": "block_drop", "drop": 1}, {"method": "rtn", "bits": 4}]
    recipe = Recipe.model_validate({"stages": stages, "calibration": CALIBRATION})
    manifest = compress(tiny_mixtral_dir, recipe, tmp_path / "out")
    assert [p["family"] for p in manifest["timings"]["passes"]] == ["trimming", "slimming"]
    assert [s["method"] for s in manifest["stages"]] == ["block_drop", "rtn"]
    assert len(manifest["decisions"]["dropped_blocks"]) == 1 and verify_files(tmp_path / "out", manifest) == []
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 7 and config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_slimming_after_a_remote_code_trim_is_refused_clearly(tiny_mixtral_dir, tmp_path):
    # Whether a global expert drop leaves MoE layers with different expert counts is known once it ran.
    stages = [{"method": "expert_drop", "mode": "global", "keep": 5}, {"method": "rtn", "bits": 4}]
    recipe = Recipe.model_validate({"stages": stages, "calibration": CALIBRATION})
    with pytest.raises(ValueError, match="not supported yet; put the slimming stages first"):
        compress(tiny_mixtral_dir, recipe, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fixture", FIXTURES)
def test_compress_writes_the_model_card_of_its_manifest(compressed, fixture):
    """The library writes the card (the CLI and the service leave the same one), shapes read by the family's
    adapter: after global expert drop to 6 and a layer drop, the trimmed checkpoint's own figures."""
    done, _ = compressed
    manifest, out, _, _ = done[f"{fixture}-layer_drop2_then_expert_drop6"]
    card = (out / "README.md").read_text()
    assert card.startswith(f"# Compressed {manifest['source']['model'].rsplit('/', 1)[-1]}")
    assert f"Made by moecomp from `{manifest['source']['model']}`." in card
    for stage in manifest["recipe"]["stages"]:
        assert f"- `{json.dumps(stage)}`" in card
    top_k = json.loads((out / "config.json").read_text())["num_experts_per_tok"]  # both fixtures' key
    assert "| routed experts per MoE layer | 6 |" in card and f"| experts per token | {top_k} |" in card
    assert "No evaluation was run." in card
    assert "README.md" not in manifest["files"]  # a summary of the manifest, written after it
