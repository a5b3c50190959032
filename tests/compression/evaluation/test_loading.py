from __future__ import annotations

import json

from moecomp.compression.evaluation.loading import load_checkpoint, model_identity
from tests.compression.evaluation.helpers import copy_model

MODELING = """
from transformers import MixtralForCausalLM


class MarkedMixtralForCausalLM(MixtralForCausalLM):
    ran_bundled_code = True
"""


def with_bundled_code(src, dst):
    model_dir = copy_model(src, dst)
    (model_dir / "modeling_marked.py").write_text(MODELING)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_marked.MarkedMixtralForCausalLM"}
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def test_bundled_code_runs_only_for_checkpoints_moecomp_wrote(tiny_mixtral_dir, tmp_path):
    foreign = with_bundled_code(tiny_mixtral_dir, tmp_path / "foreign")
    assert not getattr(load_checkpoint(foreign).model, "ran_bundled_code", False)

    ours = with_bundled_code(tiny_mixtral_dir, tmp_path / "ours")
    (ours / "moecomp.json").write_text(json.dumps({"schema": "moecomp.manifest/1"}))
    assert load_checkpoint(ours).model.ran_bundled_code


def test_identity_changes_with_the_config_and_the_weights_not_with_other_files(tiny_mixtral_dir, tmp_path):
    model_dir = copy_model(tiny_mixtral_dir, tmp_path / "m")
    first = model_identity(model_dir)
    (model_dir / "README.md").write_text("notes")
    assert model_identity(model_dir) == first
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert model_identity(model_dir)["config_sha256"] != first["config_sha256"]
