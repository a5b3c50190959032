"""``moecomp compress``: flags override the recipe's calibration, the decisions and checkpoint are printed."""

import json
import subprocess
import sys

import yaml

from moecomp.cli.main import main
from moecomp.compression.manifest import read_manifest


def write_recipe(path, stages):
    path.write_text(yaml.safe_dump({"stages": stages, "calibration": {"samples": 64, "seq_len": 2048}}))
    return path


def test_compress_block_drop_with_flag_overrides(tiny_mixtral_dir, tmp_path, capsys):
    (tmp_path / "calib.txt").write_text("\f".join(["a small calibration document"] * 40))
    recipe = write_recipe(tmp_path / "r.yaml", [{"method": "block_drop", "drop": 2}])
    out = tmp_path / "out"
    code = main(
        ["compress", "--model", str(tiny_mixtral_dir), "--recipe", str(recipe), "--out", str(out),
         "--calibration", f"{tmp_path / 'calib.txt'},bundled:heldout", "--samples", "4", "--seq-len", "32"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = read_manifest(out)
    calibration = manifest["recipe"]["calibration"]
    assert calibration == {"sources": [str(tmp_path / "calib.txt"), "bundled:heldout"], "samples": 4,
                           "seq_len": 32, "seed": None}  # fmt: skip
    dropped = manifest["decisions"]["dropped_blocks"]
    assert f"blocks dropped: {dropped}" in captured.out
    assert f"checkpoint: {out} (stock; 6 layers)" in captured.out
    assert "export" in captured.err  # the progress bar


def test_remote_code_result_says_how_to_load(tiny_qwen2_moe_dir, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.json", [{"method": "layer_drop", "drop": 1}])
    out = tmp_path / "out"
    args = ["compress", "--model", str(tiny_qwen2_moe_dir), "--recipe", str(recipe), "--out", str(out)]
    assert main([*args, "--samples", "2", "--seq-len", "32", "--dtype", "float32"]) == 0
    captured = capsys.readouterr()
    assert "MoE sub-layers dropped: [" in captured.out and "trust_remote_code=True" in captured.out
    assert json.loads((out / "config.json").read_text())["model_type"] == "moecomp_qwen2_moe"


def test_bad_recipe_and_busy_output_exit_non_zero(tiny_mixtral_dir, tmp_path, capsys):
    bad = write_recipe(tmp_path / "bad.yaml", [{"method": "expert_drop", "keep": 6, "colour": "red"}])
    assert main(["compress", "--model", str(tiny_mixtral_dir), "--recipe", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "invalid recipe" in capsys.readouterr().err
    empty = write_recipe(tmp_path / "empty.yaml", [])
    args = ["compress", "--model", str(tiny_mixtral_dir), "--recipe", str(empty), "--out", str(tmp_path)]
    assert main(args) == 1
    assert "not empty" in capsys.readouterr().err


def test_module_runs_on_its_own(tiny_mixtral_dir, tmp_path):
    """``python -m moecomp.cli.compress`` works without the moecomp entry point (empty recipe: a re-export)."""
    recipe = write_recipe(tmp_path / "empty.yaml", [])
    cmd = [sys.executable, "-m", "moecomp.cli.compress", "--model", str(tiny_mixtral_dir), "--recipe", str(recipe)]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "nothing removed" in proc.stdout and (tmp_path / "out" / "model.safetensors").is_file()
