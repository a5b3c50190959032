"""Export: trimmed checkpoints reload in a fresh interpreter WITHOUT moecomp and reproduce the in-memory logits.

Decisions here are hand-made (every kind of removal, uneven counts included); the pipeline tests
take them from the engine.
"""

import json
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from tiny_moe import FAMILY_CONFIGS, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

from moecomp.compression.adapters import get_adapter
from moecomp.compression.export import TensorPlan, export_trimmed, plan_tensor, source_tensors
from moecomp.compression.manifest import SCHEMA, read_manifest, verify_files
from moecomp.compression.structure import Decisions, apply_decisions

CASES = {
    # name: (decisions for E experts, loading)
    "layerwise_keep6": (
        lambda e: Decisions(kept_experts={i: sorted({(3 * i + k) % e for k in range(6)}) for i in range(8)}),
        "stock",
    ),
    "global_uneven": (
        lambda e: Decisions(kept_experts={i: list(range(i % 3, i % 3 + 5 + i % 2)) for i in range(8)}),
        "remote_code",
    ),
    "layer_drop2": (lambda e: Decisions(dropped_layers=[2, 5]), "remote_code"),
    "block_drop2": (lambda e: Decisions(dropped_blocks=[1, 6]), "stock"),
    "layer_then_experts": (
        lambda e: Decisions(
            dropped_layers=[3, 5], kept_experts={i: [0, 2, 3, 4, 6, 7] for i in range(8) if i not in (3, 5)}
        ),
        "remote_code",
    ),
}
FIXTURES = ("tiny_mixtral_dir", "tiny_qwen2_moe_dir")
IDS = torch.randint(0, 8192, (2, 24), generator=torch.Generator().manual_seed(0))

RELOAD = textwrap.dedent(
    """
    import json, sys
    sys.path.append({site!r})
    try:
        import moecomp  # noqa: F401
        isolated = False
    except ImportError:
        isolated = True
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads({threads})  # the parent's: float sums split across threads round apart
    jobs = json.loads(open("jobs.json").read())
    ids = torch.load("ids.pt")
    results = {{}}
    for name, (path, trust) in jobs.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust)
        with torch.no_grad():
            results[name] = model(ids).logits
        results[name + ":class"] = type(model).__name__
        results[name + ":kernels"] = (model.config._attn_implementation, model.config._experts_implementation)
    results["isolated"] = isolated
    torch.save(results, "results.pt")
    """
)


def reload_isolated(tmp_path, jobs: dict[str, tuple[str, bool]], ids: torch.Tensor = IDS) -> dict:
    """Load checkpoints in ``python -I -S`` with only site-packages on sys.path: moecomp is not importable."""
    work = tmp_path / "isolated"
    work.mkdir(parents=True)
    (work / "jobs.json").write_text(json.dumps(jobs))
    torch.save(ids, work / "ids.pt")
    script = RELOAD.format(site=sysconfig.get_paths()["purelib"], threads=torch.get_num_threads())
    (work / "reload.py").write_text(script)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "", "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "reload.py"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(work / "results.pt")


def decided_logits(source, decisions, ids=IDS):
    """The reference: the source model loaded normally, decisions applied in memory by the engine's helpers."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    apply_decisions(model, decisions, get_adapter(model.config).layout)
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory):
    """Every case on both fixtures, exported once and reloaded in ONE isolated interpreter."""
    root = tmp_path_factory.mktemp("exports")
    jobs, expected = {}, {}
    for fixture in FIXTURES:
        source = request.getfixturevalue(fixture)
        experts = get_adapter(AutoConfig.from_pretrained(source)).num_experts(AutoConfig.from_pretrained(source))
        for case, (make, loading) in CASES.items():
            decisions = make(experts)
            out = export_trimmed(source, decisions, root / f"{fixture}-{case}", manifest={"schema": SCHEMA})
            jobs[f"{fixture}-{case}"] = (str(out), loading == "remote_code")
            expected[f"{fixture}-{case}"] = (decided_logits(source, decisions), out, loading)
    return expected, reload_isolated(root, jobs)


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("case", CASES)
def test_reload_without_moecomp_reproduces_logits(exported, fixture, case):
    expected, results = exported
    logits, out, loading = expected[f"{fixture}-{case}"]
    assert results["isolated"], "the reload interpreter could import moecomp"
    torch.testing.assert_close(results[f"{fixture}-{case}"], logits, atol=1e-5, rtol=0)
    manifest = read_manifest(out)
    assert manifest["output"]["loading"] == loading
    stock = loading == "stock"
    assert results[f"{fixture}-{case}:class"].startswith("Moecomp") is not stock
    assert (out / "modeling_moecomp.py").exists() is not stock


@pytest.mark.parametrize("fixture", FIXTURES)
def test_remote_code_checkpoint_runs_the_stock_kernels_in_a_fresh_interpreter(exported, fixture, request, tmp_path):
    # transformers caches "may this class choose its kernels" on the class, so a process that loaded the stock
    # family first answers for the subclass too: each checkpoint gets an interpreter of its own here.
    _, out, _ = exported[0][f"{fixture}-layer_drop2"]
    trimmed = reload_isolated(tmp_path / "trimmed", {"m": (str(out), True)})
    stock = reload_isolated(tmp_path / "stock", {"m": (str(request.getfixturevalue(fixture)), False)})
    assert trimmed["m:class"].startswith("Moecomp") and not stock["m:class"].startswith("Moecomp")
    assert trimmed["m:kernels"] == stock["m:kernels"] == ("sdpa", "grouped_mm")


def test_config_and_manifest_of_a_remote_code_checkpoint(exported):
    expected, _ = exported
    _, out, _ = expected["tiny_qwen2_moe_dir-layer_then_experts"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "moecomp_qwen2_moe"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_moecomp.MoecompQwen2MoeForCausalLM"
    assert config["moecomp_dropped_moe_layers"] == [3, 5]
    assert config["moecomp_experts_per_layer"] == {str(i): 6 for i in (0, 1, 2, 4, 6, 7)}
    manifest = read_manifest(out)
    assert manifest["schema"] == SCHEMA and verify_files(out, manifest) == []
    assert {"model.safetensors", "config.json", "tokenizer.json", "moecomp_structure.py"} <= set(manifest["files"])


def test_remote_code_checkpoint_is_refused_without_trust(exported):
    expected, _ = exported
    _, out, _ = expected["tiny_mixtral_dir-global_uneven"]
    with pytest.raises(ValueError):
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)


def test_block_drop_renumbers_stock_config(exported):
    expected, _ = exported
    _, out, _ = expected["tiny_qwen2_moe_dir-block_drop2"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_moe" and config["num_hidden_layers"] == 6
    assert len(config["layer_types"]) == 6 and "auto_map" not in config


def test_plan_tensor_on_disk_names(tiny_mixtral_dir):
    family = get_adapter(AutoConfig.from_pretrained(tiny_mixtral_dir))
    decisions = Decisions(kept_experts={3: [1, 5]}, dropped_layers=[4], dropped_blocks=[0])
    new = {old: old - 1 for old in range(1, 8)}
    moe = "model.layers.{}.block_sparse_moe"
    assert plan_tensor("model.embed_tokens.weight", decisions, family, new) == TensorPlan("model.embed_tokens.weight")
    assert plan_tensor("model.layers.0.self_attn.q_proj.weight", decisions, family, new) is None
    assert plan_tensor(f"{moe.format(3)}.experts.5.w2.weight", decisions, family, new) == TensorPlan(
        f"{moe.format(2)}.experts.1.w2.weight"
    )
    assert plan_tensor(f"{moe.format(3)}.experts.2.w1.weight", decisions, family, new) is None
    assert plan_tensor(f"{moe.format(3)}.gate.weight", decisions, family, new) == TensorPlan(
        f"{moe.format(2)}.gate.weight", [1, 5]
    )
    assert plan_tensor(f"{moe.format(4)}.experts.0.w1.weight", decisions, family, new) is None
    assert plan_tensor("model.layers.4.post_attention_layernorm.weight", decisions, family, new) is None
    assert plan_tensor("model.layers.4.self_attn.o_proj.weight", decisions, family, new) == TensorPlan(
        "model.layers.3.self_attn.o_proj.weight"
    )


def test_fused_source_and_small_shards(tiny_qwen2_moe_dir, tmp_path):
    """A checkpoint stored with fused experts on disk, re-exported into several shards, loads stock."""
    fused = tmp_path / "fused"
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_moe_dir)
    model.config.save_pretrained(fused)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, fused / "model.safetensors", {"format": "pt"})
    assert "model.layers.0.mlp.experts.gate_up_proj" in source_tensors(fused)
    decisions = Decisions(kept_experts={i: [0, 3, 5, 8, 9, 15] for i in range(8)})
    out = export_trimmed(fused, decisions, tmp_path / "out", manifest={}, max_shard_bytes=3 * 2**20)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert index["metadata"]["total_size"] < sum((out / s).stat().st_size for s in shards)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert reloaded.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 6
    # a sharded checkpoint (read through its index) as the source of a further export
    again = export_trimmed(
        out, Decisions(kept_experts={i: [1, 2, 3, 4, 5] for i in range(8)}), tmp_path / "again", manifest={}
    )
    assert AutoModelForCausalLM.from_pretrained(again).model.layers[0].mlp.experts.gate_up_proj.shape[0] == 5
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(IDS).logits, decided_logits(tiny_qwen2_moe_dir, decisions), atol=1e-5, rtol=0
        )


def test_refuses_a_non_empty_output(tiny_mixtral_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_trimmed(tiny_mixtral_dir, Decisions(), tmp_path, manifest={})


@pytest.fixture(scope="module")
def families_exported(tmp_path_factory):
    """Every supported family (tiny random weights, saved the stock way): one stock and one remote-code export."""
    root = tmp_path_factory.mktemp("families")
    jobs, expected = {}, {}
    for model_type in FAMILY_CONFIGS:
        source = root / model_type
        tiny_model(model_type).save_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        family = get_adapter(config)
        moe, n = family.moe_layers(config), family.num_experts(config)
        cases = {
            "stock": Decisions(kept_experts={i: list(range(1, n - 1)) for i in moe}, dropped_blocks=[0]),
            "remote_code": Decisions(
                kept_experts={moe[0]: [e for e in range(n) if e != 1], moe[-1]: list(range(2, n))},
                dropped_layers=[moe[1]],
            ),
        }
        for loading, decisions in cases.items():
            out = export_trimmed(source, decisions, root / f"{model_type}-{loading}", manifest={})
            assert read_manifest(out)["output"]["loading"] == loading
            jobs[f"{model_type}-{loading}"] = (str(out), loading == "remote_code")
            expected[f"{model_type}-{loading}"] = decided_logits(source, decisions, ids=IDS % 128)
    return expected, reload_isolated(root, jobs, ids=IDS % 128)


@pytest.mark.parametrize("model_type", FAMILY_CONFIGS)
@pytest.mark.parametrize("loading", ["stock", "remote_code"])
def test_every_family_reloads_without_moecomp(families_exported, model_type, loading):
    expected, results = families_exported
    assert results["isolated"]
    torch.testing.assert_close(
        results[f"{model_type}-{loading}"], expected[f"{model_type}-{loading}"], atol=1e-5, rtol=0
    )
