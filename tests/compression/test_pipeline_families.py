"""Every trimming method through compress() on every supported family (tiny random weights): the checkpoint
reloads in a fresh interpreter without moecomp and reproduces the decided model; an empty recipe re-exports
the original exactly. (Slimming on every family: test_slimming_families.py.)"""

from __future__ import annotations

import pytest
import torch
from test_export import decided_logits, reload_isolated
from transformers import AutoConfig, AutoTokenizer

from moecomp.compression.adapters import get_adapter
from moecomp.compression.pipeline import compress
from moecomp.compression.recipe import Recipe
from moecomp.compression.structure import Decisions
from tests.compression.tiny_moe import FAMILY_CONFIGS, tiny_model

KEEP = 3  # experts per MoE layer: above every tiny config's top-k (2), below its expert count (>= 4)
RECIPES = {
    "expert_drop_layerwise": [{"method": "expert_drop", "keep": KEEP}],
    "expert_drop_global": [{"method": "expert_drop", "mode": "global", "keep": KEEP}],
    "layer_drop": [{"method": "layer_drop", "drop": 1}],
    "block_drop": [{"method": "block_drop", "drop": 1}],
    "block_drop_consecutive": [{"method": "block_drop", "mode": "consecutive", "drop": 2}],
    "empty": [],
}
CALIBRATION = {"sources": ["bundled:shakespeare"], "samples": 4, "seq_len": 32}
IDS = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_mixtral_dir):
    """Every recipe on every family, compressed once; all reloaded in ONE isolated interpreter."""
    root = tmp_path_factory.mktemp("families")
    tokenizer = AutoTokenizer.from_pretrained(tiny_mixtral_dir)
    jobs, done = {}, {}
    for model_type in FAMILY_CONFIGS:
        source = root / model_type
        tiny_model(model_type, vocab_size=8192).save_pretrained(source)  # the tokenizer's vocabulary
        tokenizer.save_pretrained(source)
        for name, stages in RECIPES.items():
            recipe = Recipe.model_validate({"stages": stages, "calibration": CALIBRATION})
            out = root / f"{model_type}-{name}"
            manifest = compress(source, recipe, out)
            decisions = Decisions.from_json(manifest["decisions"])
            jobs[f"{model_type}-{name}"] = (str(out), manifest["output"]["loading"] == "remote_code")
            done[f"{model_type}-{name}"] = (manifest, decided_logits(source, decisions, ids=IDS))
    return done, reload_isolated(root, jobs, ids=IDS)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("model_type", FAMILY_CONFIGS)
def test_every_trimming_method_on_every_family_reloads_without_moecomp(compressed, model_type, recipe):
    done, results = compressed
    manifest, expected = done[f"{model_type}-{recipe}"]
    assert results["isolated"]
    atol = 0 if recipe == "empty" else 1e-5  # a re-export is the original model, bit for bit
    torch.testing.assert_close(results[f"{model_type}-{recipe}"], expected, atol=atol, rtol=0)
    assert [s["method"] for s in manifest["stages"]] == [s["method"] for s in RECIPES[recipe]]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILY_CONFIGS)
def test_decisions_have_the_shape_each_recipe_asks_on_every_family(compressed, model_type):
    done, _ = compressed
    config = AutoConfig.for_model(model_type, **FAMILY_CONFIGS[model_type])
    family = get_adapter(config)
    moe, n_layers = family.moe_layers(config), config.num_hidden_layers

    def decisions(name: str) -> Decisions:
        return Decisions.from_json(done[f"{model_type}-{name}"][0]["decisions"])

    layerwise = decisions("expert_drop_layerwise").kept_experts
    assert sorted(layerwise) == moe and all(len(v) == KEEP for v in layerwise.values())
    experts = done[f"{model_type}-expert_drop_global"][0]["output"]["experts_per_layer"]
    assert sum(experts.values()) == KEEP * len(moe) and min(experts.values()) >= family.top_k(config)
    assert len(decisions("layer_drop").dropped_layers) == 1 and decisions("layer_drop").dropped_layers[0] in moe
    assert len(decisions("block_drop").dropped_blocks) == 1
    run = decisions("block_drop_consecutive").dropped_blocks
    assert len(run) == 2 and run[1] == run[0] + 1 and run[1] < n_layers
    assert decisions("empty").is_empty() and done[f"{model_type}-empty"][0]["output"]["loading"] == "stock"
    assert done[f"{model_type}-expert_drop_layerwise"][0]["stages"][0]["affinity"] == family.routing
