"""planning: the disk and host memory a job needs, from the checkpoint's headers and the recipe, checked before any
work. The estimate is compared with what real runs write; refusals use a real small tmpfs (we run as root, here and
in CI: a failing mount fails the test) or a monkeypatched MemAvailable, as the engine's own host-memory test does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moecomp.cli.main import main
from moecomp.compression import activations
from moecomp.compression.activations import HostMemoryError
from moecomp.compression.context import RunContext
from moecomp.compression.evaluation.spec import EvaluationSpec
from moecomp.compression.pipeline import compress
from moecomp.compression.planning import DiskSpaceError, plan
from moecomp.compression.recipe import Recipe
from moecomp.compression.sizes import model_sizes
from tests.tmpfs import tmpfs

CALIBRATION = {"sources": ["bundled:heldout"], "samples": 4, "seq_len": 32}
RECIPES = {
    "re-export": [],
    "layer_drop2": [{"method": "layer_drop", "drop": 2}],
    "expert_drop4_then_rtn": [{"method": "expert_drop", "keep": 4}, {"method": "rtn", "bits": 4}],
    "rtn_then_block_drop1": [{"method": "rtn", "bits": 4}, {"method": "block_drop", "drop": 1}],
}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (the tiny model's checkpoint is 17 MiB)."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        yield disk


def recipe(stages: list[dict]) -> Recipe:
    return Recipe.model_validate({"stages": stages, "calibration": CALIBRATION})


def written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", list(RECIPES))
def test_estimate_is_an_upper_bound_within_2x_of_what_a_real_run_writes(tiny_mixtral_dir, tmp_path, name):
    needs = plan(tiny_mixtral_dir, recipe(RECIPES[name]))
    compress(tiny_mixtral_dir, recipe(RECIPES[name]), tmp_path / "out")
    real = written(tmp_path / "out")
    assert real <= needs.output.bytes <= 2 * real, (real, needs.output.describe())


def test_sizes_come_from_the_headers(tiny_mixtral_dir):
    sizes = model_sizes(tiny_mixtral_dir)
    weights = (tiny_mixtral_dir / "model.safetensors").stat().st_size
    assert weights * 0.97 <= sizes.weights <= weights * 1.05  # the data, and a rounded-up entry per tensor
    assert sizes.moe == [8] * 8 and sizes.item == 2  # bf16
    quantized = plan(tiny_mixtral_dir, recipe([{"method": "gptq"}])).output.parts
    dense = plan(tiny_mixtral_dir, recipe([])).output.parts
    assert 0.25 < quantized["routed experts"] / dense["routed experts"] < 0.3  # 4 bits + a bf16 scale per 128
    assert quantized["embedding, head, final norm"] == dense["embedding, head, final norm"]  # never quantized


def test_intermediate_checkpoints_are_scratch_unless_the_next_pass_applies_the_trim(tiny_mixtral_dir):
    deferred = plan(tiny_mixtral_dir, recipe([{"method": "layer_drop", "drop": 2}, {"method": "rtn"}]))
    assert deferred.scratch.bytes == 0  # one checkpoint written: the slimming pass applies the layer drop
    written_twice = plan(tiny_mixtral_dir, recipe([{"method": "rtn"}, {"method": "layer_drop", "drop": 2}]))
    assert list(written_twice.scratch.parts) == ["pass 0 (slimming)"]
    assert written_twice.scratch.bytes > written_twice.output.bytes  # the quantized model before the drop


def test_evaluation_adds_its_cache_and_the_original_model_on_the_cpu(tiny_mixtral_dir):
    spec = EvaluationSpec(fidelity_tokens=4096, fidelity_topk=256)
    needs = plan(tiny_mixtral_dir, recipe([]), evaluation=spec)
    assert needs.evaluation_cache.parts["fidelity reference"] == 4096 * 256 * 12
    assert needs.host_memory.what == "evaluation" and needs.host_memory.parts["the original model"] > 16 * 2**20


def test_output_that_cannot_fit_the_disk_is_refused_before_any_work(tiny_mixtral_dir, small_disk):
    events: list[tuple] = []
    with pytest.raises(DiskSpaceError) as refused:
        compress(tiny_mixtral_dir, recipe([]), small_disk / "out", ctx=RunContext(sink=lambda *e: events.append(e)))
    message = str(refused.value)
    assert f"needs 0.018 GiB on the file system of {small_disk}" in message, message
    assert "output checkpoint 0.018 GiB (routed experts 0.012 GiB" in message and "0.004 GiB are free" in message
    assert refused.value.errno == 28  # ENOSPC, for callers that only know OSErrors
    assert [(kind, stage) for kind, stage, _ in events] == [("progress", "load"), ("message", "plan")]
    assert events[0][2]["step"] == 0
    assert list(small_disk.iterdir()) == []  # no output folder, no scratch


def test_layers_that_cannot_fit_host_memory_are_refused_before_any_work(tiny_mixtral_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "available_host_bytes", lambda: 64 * 2**20)
    events: list[tuple] = []
    stages = [{"method": "layer_drop", "drop": 2}]
    with pytest.raises(HostMemoryError) as refused:
        compress(tiny_mixtral_dir, Recipe.model_validate({"stages": stages}), tmp_path / "out",
                 ctx=RunContext(sink=lambda *e: events.append(e)))  # fmt: skip
    message = str(refused.value)
    # 128 x 2048 tokens x 128 hidden x bf16, twice: 0.125 GiB of activations on the CPU
    assert "needs 0.130 GiB for its largest step, pass 0 (trimming: layer_drop) 0.130 GiB" in message, message
    assert "activations 0.125 GiB" in message and "0.062 GiB are available" in message
    assert [(kind, stage) for kind, stage, _ in events] == [("progress", "load"), ("message", "plan")]
    assert list(tmp_path.iterdir()) == []
    smaller = {"stages": stages, "calibration": CALIBRATION}  # the advice followed: it fits and runs
    compress(tiny_mixtral_dir, Recipe.model_validate(smaller), tmp_path / "out")


def test_cli_refuses_with_the_numbers_and_writes_nothing(tiny_mixtral_dir, tmp_path, small_disk, capsys):
    (tmp_path / "r.json").write_text('{"stages": []}')
    args = ["compress", "--model", str(tiny_mixtral_dir), "--recipe", str(tmp_path / "r.json")]
    assert main([*args, "--out", str(small_disk / "out")]) == 1
    err = capsys.readouterr().err
    assert "moecomp compress: not enough disk space: this job needs 0.018 GiB" in err and "are free there" in err
    assert list(small_disk.iterdir()) == []
