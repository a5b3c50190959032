"""No code from an input model runs unless an admin allows it (settings.allow_remote_code).

The model folders here are real checkpoints (the bundled tiny Mixtral's weights) whose config names remote
code (auto_map) in a module that creates a marker file when imported. With default settings the API refuses
them at submit or upload, and transformers, loaded the way the worker loads an input (no trust_remote_code),
never imports the module either.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from transformers import AutoConfig, AutoModelForCausalLM

from moecomp.api.app import create_app
from moecomp.assets import MODELS
from moecomp.compression.manifest import MANIFEST_NAME
from moecomp.compression.sources import HUB_ALLOW_PATTERNS
from moecomp.persistence.database import Database
from moecomp.persistence.models import Job, Upload
from moecomp.settings import Settings
from tests.api.helpers import count
from tests.api.test_api_uploads import TAR, add_file, make_tar

AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}


def evil_model(folder: Path, marker: Path, config_name: str = "config.json", weights: bool = True) -> Path:
    """The tiny Mixtral with an auto_map into evil.py, which creates ``marker`` on import; and a manifest.

    The manifest (moecomp.json) is what evaluation/loading.py takes as "our own export": it must not make
    an input model's code trusted either.
    """
    folder.mkdir(parents=True)
    source = MODELS / "tiny-mixtral"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(source / name, folder / name)
    if weights:
        (folder / "model.safetensors").symlink_to(source / "model.safetensors")
    config = json.loads((folder / config_name).read_text())
    (folder / config_name).write_text(json.dumps({**config, "auto_map": AUTO_MAP}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nEvilConfig = EvilModel = object\n")
    (folder / MANIFEST_NAME).write_text("{}")
    return folder


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_a_local_model_naming_remote_code_is_refused_at_submit(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings, tmp_path: Path, config_name: str
) -> None:
    marker = tmp_path / "pwned"
    evil_model(settings.allowed_model_roots[1] / "evil", marker, config_name)
    body = {"model": {"kind": "local", "path": "evil"}, "recipe": {"stages": [{"method": "expert_drop", "keep": 4}]}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "model", "path"] and "auto_map" in error["msg"] and config_name in error["msg"]
    assert count(db, Job) == 0 and not marker.exists()


def test_an_admin_may_allow_remote_code(settings: Settings, auth: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil_model(settings.allowed_model_roots[1] / "evil", marker)
    settings.allow_remote_code = True
    body = {"model": {"kind": "local", "path": "evil"}, "recipe": {"stages": []}}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/jobs", json=body, headers=auth).status_code == 201
    assert not marker.exists()  # accepting the job runs nothing; the worker would, by the admin's choice


def test_an_uploaded_model_naming_remote_code_is_refused_and_leaves_nothing(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    folder = evil_model(tmp_path / "src" / "m", marker, weights=False)  # under the tests' 2 MiB upload limit

    def add(archive):  # type: ignore[no-untyped-def]
        for path in sorted(folder.iterdir()):
            add_file(archive, f"m/{path.name}", path.read_bytes())

    response = client.post("/v1/models", content=make_tar(add), headers={**auth, **TAR})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert list(settings.uploads_dir.iterdir()) == [] and count(db, Upload) == 0 and not marker.exists()


def test_transformers_loads_an_input_the_way_the_worker_does_without_running_its_code(tmp_path: Path) -> None:
    """compress() reads an input with AutoConfig / AutoModelForCausalLM and no trust_remote_code: stock classes."""
    marker = tmp_path / "pwned"
    folder = evil_model(tmp_path / "evil", marker)
    assert AutoConfig.from_pretrained(folder).model_type == "mixtral"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "MixtralForCausalLM" and not marker.exists()
    # The control: importing the module does create the marker, so its absence above means it never ran.
    spec = importlib.util.spec_from_file_location("evil_control", folder / "evil.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert marker.exists()


def test_hub_downloads_never_fetch_code_or_a_manifest() -> None:
    """Hub inputs come without *.py and without moecomp.json, so evaluation never trusts their code either."""
    for name in ("modeling_evil.py", "evil.py", "sub/evil.py", MANIFEST_NAME):
        assert not any(fnmatch(name, pattern) for pattern in HUB_ALLOW_PATTERNS), name
