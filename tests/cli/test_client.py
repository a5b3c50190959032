"""submit / status / watch / download / delete against the real API (uvicorn in a thread, SQLite, SQLite broker).

The job itself is run in-process by the worker's task body with a small stand-in body, so that
these tests are about the client, not about compression.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from moecomp.cli.client import model_source
from moecomp.cli.main import main
from moecomp.worker.lifecycle import run_job_once
from moecomp.worker.runner import JobOutput


def small_body(inp, workdir: Path, reporter, device: str, cache: Path) -> JobOutput:
    ctx = reporter.context()
    for layer in range(1, 5):
        ctx.progress("expert_drop", layer, 4)
    checkpoint = workdir / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text('{"model_type": "mixtral"}')
    (checkpoint / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    (checkpoint / "moecomp.json").write_text("{}")
    return JobOutput(checkpoint=checkpoint, manifest={})


def submit(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str], recipe: dict | None = None) -> str:
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe or {"stages": []}))
    assert main(["submit", "--model", str(model), "--recipe", str(tmp_path / "recipe.yaml")]) == 0
    return capsys.readouterr().out.strip()


def test_submit_watch_download_verifies_sha256(service, tmp_path, tiny_mixtral_dir, capsys):
    job_id = submit(tmp_path, tiny_mixtral_dir, capsys)
    assert main(["status", job_id]) == 0
    assert "queued" in capsys.readouterr().out
    run_job_once(service, job_id, body=small_body)
    assert main(["watch", job_id]) == 0
    out = capsys.readouterr().out
    assert "[expert_drop] 4/4 done" in out and "succeeded" in out
    assert main(["watch", job_id, "--poll"]) == 0
    assert main(["download", job_id, "--out", str(tmp_path)]) == 0
    tar = tmp_path / "checkpoint.tar"
    assert f"sha256 {hashlib.sha256(tar.read_bytes()).hexdigest()} (verified)" in capsys.readouterr().out


def test_download_refuses_a_corrupted_artifact_and_leaves_nothing(service, tmp_path, tiny_mixtral_dir, capsys):
    job_id = submit(tmp_path, tiny_mixtral_dir, capsys)
    run_job_once(service, job_id, body=small_body)
    stored = next(service.artifacts_dir.glob(f"{job_id}/*/checkpoint/model.safetensors"))  # served inside the tar
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit flipped: only the sha256 can tell
    stored.write_bytes(bytes(data))
    out = tmp_path / "out.tar"
    assert main(["download", job_id, "--out", str(out)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*.part"))


def test_validation_errors_are_shown_with_their_location(service, tmp_path, tiny_mixtral_dir, capsys):
    (tmp_path / "bad.yaml").write_text("stages: [{method: expert_drop, keep: 0}]")
    assert main(["submit", "--model", str(tiny_mixtral_dir), "--recipe", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert "HTTP 422" in err and "recipe.stages.0" in err


def test_failed_job_makes_watch_exit_non_zero(service, tmp_path, tiny_mixtral_dir, capsys):
    job_id = submit(tmp_path, tiny_mixtral_dir, capsys)

    def broken(*_args) -> JobOutput:
        raise FileNotFoundError("weights went missing")

    run_job_once(service, job_id, body=broken)
    assert main(["watch", job_id]) == 1
    assert "model_not_found" in capsys.readouterr().out


def test_delete_refuses_a_queued_job_then_removes_an_ended_one(service, tmp_path, tiny_mixtral_dir, capsys):
    job_id = submit(tmp_path, tiny_mixtral_dir, capsys)
    assert main(["delete", job_id]) == 1
    assert "HTTP 409" in capsys.readouterr().err and main(["status", job_id]) == 0
    run_job_once(service, job_id, body=small_body)
    assert (service.artifacts_dir / job_id).is_dir()
    assert main(["delete", job_id]) == 0
    assert not (service.artifacts_dir / job_id).exists()
    assert main(["status", job_id]) == 1 and "HTTP 404" in capsys.readouterr().err


def test_model_source_kinds(tmp_path):
    assert model_source(str(tmp_path), "main") == {"kind": "local", "path": str(tmp_path.resolve())}
    assert model_source("upload:abc", "main") == {"kind": "upload", "upload_id": "abc"}
    assert model_source("mistralai/Mixtral-8x7B-v0.1", "v1") == {
        "kind": "hub",
        "id": "mistralai/Mixtral-8x7B-v0.1",
        "revision": "v1",
    }
