"""A worker's side of the HTTP data path (settings.api_url): fetch an uploaded model, send artifacts back.

Fetch: the upload's tar streams into ``<data_dir>/cache/uploads/<id>.tar.part``, resuming with a Range request
after a dropped connection; its sha256 is checked against the API's, then it is unpacked (tarfile's "data"
filter) and renamed into ``<data_dir>/cache/uploads/<id>/``, where later jobs on this host find it. A file lock
makes the pool processes of one host fetch an upload once.

Send: each artifact goes in chunks of ``settings.transfer_chunk_bytes`` (api/services/worker_data.py has the
protocol). After a dropped connection or a 5xx the worker asks how much arrived and resumes there; a chunk sent
twice replaces itself, and a finished artifact sent again is answered with its record, so retries are harmless.
A 409 saying the lease is gone raises LeaseLost, as a fenced database write does.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from moecomp.persistence.jobs import Lease
from moecomp.settings import Settings
from moecomp.worker.artifacts import CHUNK
from moecomp.worker.errors import JobError, LeaseLost
from moecomp.worker.tar_stream import Body, FileView

T = TypeVar("T")
LEASE_LOST = "X-Moecomp-Lease"  # a 409 with this header: the lease is gone
RETRY_WITHIN_S = 300.0  # an API restart or a network blip; past this the job fails (and its next attempt retries)
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 5.0
UPLOAD_ARCNAME = "model"


@dataclass(frozen=True)
class Bytes:
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        yield self.data[start : len(self.data) if end is None else end + 1]


def body_sha256(body: Body) -> str:
    digest = hashlib.sha256()
    for data in body.chunks():
        digest.update(data)
    return digest.hexdigest()


class Retry(Exception):
    """A dropped connection or a 5xx: ask again after a pause."""


class ApiClient:
    """The API as a worker on another host sees it, with its worker credential."""

    def __init__(self, settings: Settings, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings, self.sleep = settings, sleep
        headers = {"Authorization": f"Bearer {settings.worker_key.get_secret_value()}"}
        timeout = httpx.Timeout(120.0, connect=10.0)
        self.http = httpx.Client(base_url=settings.api_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _retrying(self, call: Callable[[], T]) -> T:
        deadline, delay = time.monotonic() + RETRY_WITHIN_S, FIRST_DELAY_S
        while True:
            try:
                return call()
            except (Retry, httpx.TransportError) as exc:
                if time.monotonic() + delay > deadline:
                    message = f"the API at {self.settings.api_url} did not answer: {exc}"
                    raise JobError("api_unreachable", message) from exc
            self.sleep(delay)
            delay = min(MAX_DELAY_S, 2 * delay)

    def _checked(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code >= 500:
            raise Retry(f"{what}: {response.status_code}")
        if response.status_code == 409 and LEASE_LOST in response.headers:
            raise LeaseLost()
        if response.status_code >= 400 and response.status_code != 409:
            raise JobError("api_refused", f"{what}: the API answered {response.status_code} {response.text[:500]}")
        return response

    def refusal(self) -> str | None:
        """Why the API refuses this worker's credential (None: accepted, or the API not reachable yet).

        Asked at worker start, so that a wrong or revoked credential stops the worker at once instead of failing
        every job it takes with ``api_refused``.
        """
        try:
            response = self.http.head(f"/v1/worker/uploads/{'0' * 32}/content")  # 404 once the key is accepted
        except httpx.TransportError:
            return None
        if response.status_code in (401, 403):
            detail = self.http.get(f"/v1/worker/uploads/{'0' * 32}/content").json().get("detail")
            return f"the API at {self.settings.api_url} refuses MOECOMP_WORKER_KEY: {detail}"
        return None

    # -- fetch ---------------------------------------------------------------------------------------------------

    def fetch_upload(self, upload_id: str) -> Path:
        """The upload's model folder on this host, fetched from the API on first use (see the module docstring)."""
        root = self.settings.data_dir / "cache" / "uploads"
        root.mkdir(parents=True, exist_ok=True)
        folder = root / upload_id
        with open(root / f".{upload_id}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another pool process of this host may be fetching it
            if not folder.is_dir():
                tar = root / f"{upload_id}.tar.part"
                self._retrying(lambda: self._download(upload_id, tar))
                self._unpack(tar, folder)
        return folder / UPLOAD_ARCNAME

    def _download(self, upload_id: str, dest: Path) -> None:
        url = f"/v1/worker/uploads/{upload_id}/content"
        sha256 = self._checked(self.http.head(url), f"upload {upload_id}").headers["X-Checksum-Sha256"]
        size = dest.stat().st_size if dest.exists() else 0
        headers = {"Range": f"bytes={size}-"} if size else {}
        with self.http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416:  # all of it arrived already
                pass
            else:
                self._checked(response, f"upload {upload_id}")
                with open(dest, "ab" if response.status_code == 206 else "wb") as out:
                    for data in response.iter_bytes(CHUNK):
                        out.write(data)
        got = body_sha256(FileView(dest))
        if got != sha256:
            dest.unlink()
            raise Retry(f"upload {upload_id} arrived with sha256 {got}, not {sha256}")

    def _unpack(self, tar: Path, folder: Path) -> None:
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(tar, mode="r:") as archive:
            archive.extractall(tmp, filter="data")
        tmp.rename(folder)
        tar.unlink()

    # -- send ----------------------------------------------------------------------------------------------------

    def send(self, lease: Lease, name: str, kind: str, body: Body, sha256: str | None = None) -> str:
        """Send ``body`` as artifact ``name`` of the lease's attempt; returns the artifact's id once recorded."""
        sha256 = sha256 or body_sha256(body)
        url = f"/v1/worker/jobs/{lease.job_id}/attempts/{lease.attempt}/artifacts/{name}"
        headers = {"X-Moecomp-Worker": lease.worker, "X-Artifact-Kind": kind, "X-Checksum-Sha256": sha256}
        return self._retrying(lambda: self._send_once(url, headers, body))

    def _send_once(self, url: str, headers: dict[str, str], body: Body) -> str:
        """Ask how much arrived, send the rest chunk by chunk; the artifact's id. Retry on any interruption."""
        answer = self._checked(self.http.get(url, headers=headers), url).json()
        offset, step = answer["offset"], self.settings.transfer_chunk_bytes
        while answer.get("artifact_id") is None:
            offset = min(offset, max(0, body.size - 1))  # all there but not sealed (an answer lost): the last again
            end = min(body.size, offset + step) - 1
            span = f"bytes {offset}-{end}/{body.size}" if body.size else "bytes */0"
            chunk = headers | {"Content-Range": span, "Content-Type": "application/octet-stream"}
            # The last chunk's answer waits for the API to hash the whole file (about 1 GB/s; allow far less).
            timeout = self.http.timeout if end + 1 < body.size else httpx.Timeout(120.0 + body.size / 50e6, connect=10)
            put = self.http.put(url, content=body.chunks(offset, end), headers=chunk, timeout=timeout)
            response = self._checked(put, url)
            if response.status_code == 409:  # not where the API's part ends, or another request writes it
                raise Retry(f"{url}: {response.text[:200]}")
            answer = response.json()
            offset = answer["offset"]
        return answer["artifact_id"]

    def prune(self, lease: Lease, keep_own: bool = True) -> None:
        """Remove the job's other attempts' files from the API's store (and this one's unless ``keep_own``)."""
        url = f"/v1/worker/jobs/{lease.job_id}/attempts/{lease.attempt}/prune"
        params = {"keep_own": "true" if keep_own else "false"}
        headers = {"X-Moecomp-Worker": lease.worker}
        self._retrying(lambda: self._checked(self.http.post(url, params=params, headers=headers), url))
