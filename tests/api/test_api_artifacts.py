"""Artifact listing and downloads: full, single byte ranges (206/416), ETag = sha256, HEAD, 304; files, and
checkpoint folders streamed as the tar tar_folder would write."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from moecomp.persistence.database import Database
from moecomp.persistence.models import JobStatus
from moecomp.settings import Settings
from moecomp.worker.artifacts import tar_folder
from tests.api.helpers import add_artifact, add_tar_artifact, job_body, set_status

CONTENT = os.urandom(200_000)


@pytest.fixture
def artifact(client: TestClient, auth: dict[str, str], db: Database, settings: Settings) -> dict[str, str]:
    """A job with a checkpoint artifact on disk, recorded as the worker records one."""
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    return add_artifact(db, settings, job_id, CONTENT)


def test_list_artifacts(client: TestClient, auth: dict[str, str], artifact: dict[str, str]) -> None:
    items = client.get(f"/v1/jobs/{artifact['job_id']}/artifacts", headers=auth).json()["items"]
    assert len(items) == 1
    item = items[0]
    assert item | {"created_at": None} == {
        "id": artifact["id"],
        "job_id": artifact["job_id"],
        "kind": "checkpoint",
        "name": "tiny-mixtral-ed6.tar",
        "bytes": len(CONTENT),
        "sha256": artifact["sha256"],
        "created_at": None,
        "expired_at": None,
        "url": f"/v1/artifacts/{artifact['id']}/content",
    }


def test_full_download(client: TestClient, auth: dict[str, str], artifact: dict[str, str]) -> None:
    response = client.get(f"/v1/artifacts/{artifact['id']}/content", headers=auth)
    assert response.status_code == 200 and response.content == CONTENT
    assert response.headers["etag"] == f'"{artifact["sha256"]}"'
    assert response.headers["content-length"] == str(len(CONTENT))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-disposition"] == 'attachment; filename="tiny-mixtral-ed6.tar"'
    assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, len(CONTENT) - 1),
        ("bytes=-500", len(CONTENT) - 500, len(CONTENT) - 1),
        ("bytes=199990-999999", 199990, len(CONTENT) - 1),
    ],
)
def test_range_downloads(
    client: TestClient, auth: dict[str, str], artifact: dict[str, str], header: str, start: int, end: int
) -> None:
    response = client.get(f"/v1/artifacts/{artifact['id']}/content", headers={**auth, "Range": header})
    assert response.status_code == 206
    assert response.content == CONTENT[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(CONTENT)}"
    assert response.headers["content-length"] == str(end - start + 1)


def test_resumed_download_reassembles_the_file(
    client: TestClient, auth: dict[str, str], artifact: dict[str, str]
) -> None:
    url = f"/v1/artifacts/{artifact['id']}/content"
    head = client.get(url, headers={**auth, "Range": "bytes=0-65535"}).content
    tail = client.get(url, headers={**auth, "Range": f"bytes={len(head)}-"}).content
    assert hashlib.sha256(head + tail).hexdigest() == artifact["sha256"]


@pytest.mark.parametrize("header", ["bytes=200000-", "bytes=500-100", "bytes=-0", "lines=0-1", "bytes=abc"])
def test_bad_ranges_answer_416(client: TestClient, auth: dict[str, str], artifact: dict[str, str], header: str) -> None:
    response = client.get(f"/v1/artifacts/{artifact['id']}/content", headers={**auth, "Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(CONTENT)}"
    assert "detail" in response.json()


def test_head_and_conditional_get(client: TestClient, auth: dict[str, str], artifact: dict[str, str]) -> None:
    url = f"/v1/artifacts/{artifact['id']}/content"
    head = client.head(url, headers=auth)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(CONTENT)) and head.content == b""
    cached = client.get(url, headers={**auth, "If-None-Match": f'"{artifact["sha256"]}"'})
    assert cached.status_code == 304 and cached.content == b""
    # a list of tags, a weak one among them (RFC 9110): still the current body
    listed = client.get(url, headers={**auth, "If-None-Match": f'"0000", W/"{artifact["sha256"]}"'})
    assert listed.status_code == 304
    assert client.get(url, headers={**auth, "If-None-Match": '"0000"'}).status_code == 200


def test_another_teams_artifact_is_not_found(
    client: TestClient, other_auth: dict[str, str], artifact: dict[str, str]
) -> None:
    assert client.get(f"/v1/artifacts/{artifact['id']}/content", headers=other_auth).status_code == 404
    assert client.get(f"/v1/jobs/{artifact['job_id']}/artifacts", headers=other_auth).status_code == 404


def test_missing_file_is_404_not_500(
    client: TestClient, auth: dict[str, str], artifact: dict[str, str], settings: Settings
) -> None:
    (settings.artifacts_dir / artifact["job_id"] / "checkpoint.tar").unlink()
    response = client.get(f"/v1/artifacts/{artifact['id']}/content", headers=auth)
    assert response.status_code == 404 and response.json() == {"detail": "artifact file is missing on the server"}


FILES = {"config.json": b'{"model_type": "mixtral"}', "model.safetensors": os.urandom(300_001), "sub/x": b"x" * 513}


@pytest.fixture
def tar_artifact(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings, tmp_path: Path
) -> dict[str, str]:
    """A checkpoint folder served as a tar (as the worker leaves it), and the tar tar_folder writes of it."""
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    recorded = add_tar_artifact(db, settings, job_id, FILES)
    tar_folder(Path(recorded["folder"]), tmp_path / "reference.tar", "model")
    return recorded | {"url": f"/v1/artifacts/{recorded['id']}/content", "reference": str(tmp_path / "reference.tar")}


def test_a_checkpoint_folder_downloads_as_the_tar_tar_folder_writes(
    client: TestClient, auth: dict[str, str], tar_artifact: dict[str, str]
) -> None:
    expected = Path(tar_artifact["reference"]).read_bytes()
    response = client.get(tar_artifact["url"], headers=auth)
    assert response.status_code == 200 and response.content == expected
    assert response.headers["etag"] == f'"{tar_artifact["sha256"]}"' == f'"{hashlib.sha256(expected).hexdigest()}"'
    assert response.headers["content-length"] == str(len(expected))
    assert response.headers["content-type"] == "application/x-tar"
    assert response.headers["content-disposition"] == 'attachment; filename="checkpoint.tar"'
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        assert tar.extractfile("model/model.safetensors").read() == FILES["model.safetensors"]  # type: ignore[union-attr]
    head = client.head(tar_artifact["url"], headers=auth)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(expected))
    cached = client.get(tar_artifact["url"], headers={**auth, "If-None-Match": f'"{tar_artifact["sha256"]}"'})
    assert cached.status_code == 304


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=511-1536", "bytes=300000-", "bytes=-10240", "bytes=5-99999999"])
def test_ranges_of_a_checkpoint_folder(
    client: TestClient, auth: dict[str, str], tar_artifact: dict[str, str], header: str
) -> None:
    expected = Path(tar_artifact["reference"]).read_bytes()
    first, last = header.removeprefix("bytes=").split("-")
    start = len(expected) - int(last) if first == "" else int(first)
    end = len(expected) - 1 if first == "" or last == "" else min(int(last), len(expected) - 1)
    response = client.get(tar_artifact["url"], headers={**auth, "Range": header})
    assert response.status_code == 206 and response.content == expected[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(expected)}"
    assert response.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=999999999-", "bytes=9-8", "bytes=0-1,5-9", "bytes=", "pages=1-2"])
def test_bad_ranges_of_a_checkpoint_folder_answer_416(
    client: TestClient, auth: dict[str, str], tar_artifact: dict[str, str], header: str
) -> None:
    size = Path(tar_artifact["reference"]).stat().st_size
    response = client.get(tar_artifact["url"], headers={**auth, "Range": header})
    assert response.status_code == 416 and response.headers["content-range"] == f"bytes */{size}"
    assert "Range must be" in response.json()["detail"]


def test_a_changed_checkpoint_folder_is_404_and_deleting_the_job_removes_it(
    client: TestClient, auth: dict[str, str], db: Database, tar_artifact: dict[str, str]
) -> None:
    (Path(tar_artifact["folder"]) / "sub" / "x").write_bytes(b"shorter")
    response = client.get(tar_artifact["url"], headers=auth)
    assert response.status_code == 404 and response.json() == {"detail": "artifact file is missing on the server"}
    set_status(db, tar_artifact["job_id"], JobStatus.succeeded)
    assert client.delete(f"/v1/jobs/{tar_artifact['job_id']}", headers=auth).status_code == 204
    assert not Path(tar_artifact["folder"]).exists() and not Path(tar_artifact["folder"]).parent.exists()
