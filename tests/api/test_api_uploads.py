"""POST /v1/models: a streamed tar becomes an upload a job can name; hostile archives leave nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from schemathesis.python.asgi import get_client, shutdown_lifespans

from moecomp.api.app import create_app
from moecomp.assets import MODELS
from moecomp.persistence.database import Database
from moecomp.persistence.models import Job, Upload
from moecomp.settings import Settings
from tests.api.helpers import count

TAR = {"Content-Type": "application/x-tar"}
CONFIG = (MODELS / "tiny-mixtral" / "config.json").read_bytes()


def make_tar(add: Callable[[tarfile.TarFile], None], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        add(archive)
    return buffer.getvalue()


def add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def model_tar(folder: str = "tiny", config: bytes = CONFIG) -> bytes:
    def add(archive: tarfile.TarFile) -> None:
        add_file(archive, f"{folder}/config.json", config)
        add_file(archive, f"{folder}/model.safetensors", b"\0" * 1000)

    return make_tar(add)


def test_upload_then_submit_a_job_on_it(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    body = model_tar()
    response = client.post("/v1/models", content=body, headers={**auth, **TAR})
    assert response.status_code == 201, response.text
    upload = response.json()
    assert upload["bytes"] == len(body) and upload["sha256"] == hashlib.sha256(body).hexdigest()
    assert (settings.uploads_dir / upload["id"] / "tiny" / "config.json").read_bytes() == CONFIG
    # The temp file is gone; the index of the upload's tar (served to workers on other hosts) is beside it.
    assert sorted(p.name for p in settings.uploads_dir.iterdir()) == [upload["id"], f"{upload['id']}.tar.index.json"]

    source = {"kind": "upload", "upload_id": upload["id"]}
    job = {"model": source, "recipe": {"stages": [{"method": "expert_drop", "keep": 9}]}}
    refused = client.post("/v1/jobs", json=job, headers=auth)  # the upload's config is checked too
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "recipe", "stages", 0, "keep"]
    job["recipe"] = {"stages": [{"method": "expert_drop", "keep": 4}]}
    created = client.post("/v1/jobs", json=job, headers=auth)
    assert created.status_code == 201 and created.json()["model"] == source
    assert created.json()["model_ref"] == f"upload:{upload['id']}"
    stolen = client.post("/v1/jobs", json=job, headers=other_auth)  # another team cannot name it
    assert stolen.status_code == 422 and stolen.json()["detail"][0]["loc"] == ["body", "model", "upload_id"]


def test_a_gzipped_archive_with_config_at_its_root_is_accepted(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    body = make_tar(lambda a: add_file(a, "config.json", CONFIG), mode="w:gz")
    response = client.post("/v1/models", content=body, headers={**auth, "Content-Type": "application/gzip"})
    assert response.status_code == 201, response.text
    assert (settings.uploads_dir / response.json()["id"] / "config.json").is_file()


def _symlink(archive: tarfile.TarFile) -> None:
    add_file(archive, "m/config.json", CONFIG)
    info = tarfile.TarInfo("m/weights")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive.addfile(info)


def _hardlink(archive: tarfile.TarFile) -> None:
    add_file(archive, "m/config.json", CONFIG)
    info = tarfile.TarInfo("m/weights")
    info.type, info.linkname = tarfile.LNKTYPE, "m/config.json"
    archive.addfile(info)


def _special(kind: bytes) -> Callable[[tarfile.TarFile], None]:
    def add(archive: tarfile.TarFile) -> None:
        add_file(archive, "m/config.json", CONFIG)
        info = tarfile.TarInfo("m/special")
        info.type = kind
        archive.addfile(info)

    return add


def _with_code(archive: tarfile.TarFile) -> None:
    add_file(archive, "m/config.json", CONFIG)
    add_file(archive, "m/modeling_evil.py", b"open('/tmp/moecomp-pwned', 'w')\n")


def _pax_bomb(archive: tarfile.TarFile) -> None:
    # A pax header of 3 MiB (tarfile reads it whole into memory) that gzip squeezes to a few KiB.
    info = tarfile.TarInfo("m/config.json")
    info.size, info.pax_headers = len(CONFIG), {"comment": " " * (3 * 1024**2)}
    archive.addfile(info, io.BytesIO(CONFIG))


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, mtime=0)


TOKENIZER_AUTO_MAP = json.dumps({"auto_map": {"AutoTokenizer": ["t.Tok", None]}}).encode()
HOSTILE = {
    "not a tar": (b"this is not a tar archive" * 100, 422),
    "not a tar, gzipped": (_gzip(b"this is not a tar archive" * 100), 422),
    "truncated tar": (model_tar()[:700], 422),
    "truncated gzip": (_gzip(model_tar())[:-40], 422),
    "fifo member": (make_tar(_special(tarfile.FIFOTYPE)), 422),
    "block device member": (make_tar(_special(tarfile.BLKTYPE)), 422),
    "python file": (make_tar(_with_code), 422),
    "tokenizer remote code": (
        make_tar(
            lambda a: (add_file(a, "m/config.json", CONFIG), add_file(a, "m/tokenizer_config.json", TOKENIZER_AUTO_MAP))
        ),
        422,
    ),
    "pax header bomb": (make_tar(_pax_bomb, mode="w:gz"), 413),
    "dotdot member": (make_tar(lambda a: add_file(a, "m/../../evil.txt", b"x")), 422),
    "absolute member": (make_tar(lambda a: add_file(a, "/tmp/evil.txt", b"x")), 422),
    "symlink member": (make_tar(_symlink), 422),
    "hardlink member": (make_tar(_hardlink), 422),
    "device member": (make_tar(_special(tarfile.CHRTYPE)), 422),
    "no config.json": (make_tar(lambda a: add_file(a, "m/weights.bin", b"x")), 422),
    "remote code": (model_tar(config=json.dumps({"auto_map": {"AutoModel": "m.Model"}}).encode()), 422),
    "too large": (model_tar() + b"\0" * (3 * 1024**2), 413),
    "gzip bomb": (make_tar(lambda a: add_file(a, "m/config.json", b" " * (3 * 1024**2)), mode="w:gz"), 413),
}


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder of the test's own for tempfile users, to show that nothing is left there either."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uploads_are_refused_and_leave_nothing(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings, own_tmp: Path, case: str
) -> None:
    body, status = HOSTILE[case]
    response = client.post("/v1/models", content=body, headers={**auth, **TAR})
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["detail"][0]["loc"] == ["body"]
        assert response.json()["detail"][0]["msg"]  # says what is wrong
    else:
        assert "limit" in response.json()["detail"]
    assert list(settings.uploads_dir.iterdir()) == [] and count(db, Upload) == 0 and count(db, Job) == 0
    assert list(own_tmp.iterdir()) == []
    assert not (settings.data_dir.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_python_files_are_accepted_when_an_admin_allows_remote_code(
    settings: Settings, db: Database, auth: dict[str, str]
) -> None:
    settings.allow_remote_code = True
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/models", content=make_tar(_with_code), headers={**auth, **TAR})
    assert response.status_code == 201, response.text
    assert (settings.uploads_dir / response.json()["id"] / "m" / "modeling_evil.py").is_file()


def test_streamed_body_over_the_limit_is_413_and_the_server_stops_reading(
    auth: dict[str, str], db: Database, settings: Settings
) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:  # a chunked body declares no length up front
        for _ in range(400):  # 40 MB, 20 times the limit
            sent.append(1)
            yield b"\0" * 100_000

    app = create_app(settings)
    try:
        # schemathesis's ASGI client hands the app one chunk per receive(), as a server does (TestClient reads
        # the whole body first), so the chunks drawn show where the server stopped reading.
        with get_client(app) as client:
            response = client.post("/v1/models", data=chunks(), headers={**auth, **TAR})
    finally:
        shutdown_lifespans()
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert len(sent) <= settings.upload_limit_bytes // 100_000 + 2  # stopped just past the limit
    assert list(settings.uploads_dir.iterdir()) == [] and count(db, Upload) == 0


def test_wrong_content_type_and_missing_auth(client: TestClient, auth: dict[str, str], db: Database) -> None:
    wrong = client.post("/v1/models", content=model_tar(), headers={**auth, "Content-Type": "application/json"})
    assert wrong.status_code == 415 and "application/x-tar" in wrong.json()["detail"]
    assert client.post("/v1/models", content=model_tar(), headers=TAR).status_code == 401
    assert count(db, Upload) == 0
