"""Where a job's files come from and go: the shared data folder (the embedded default) or the API over HTTP.

``SharedVolume``: the worker sees the API's data_dir; it reads uploads there and writes artifacts into
``<artifacts_dir>/<job>/<attempt>/`` itself (artifacts.py), recording each under the lease.
``OverHttp`` (settings.api_url set): the worker shares nothing with the API but the database, the broker and
HTTP; it fetches uploads from the API and sends each artifact to the API's store (remote.py), which records it
under the same lease. Both keep one set of artifacts per job: an attempt removes its predecessors' files at its
start and once more after its end.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from moecomp.persistence import jobs
from moecomp.persistence.database import Database
from moecomp.persistence.jobs import Lease
from moecomp.persistence.models import Artifact, Upload
from moecomp.settings import Settings
from moecomp.worker import artifacts, tar_stream
from moecomp.worker.db_retry import retrying
from moecomp.worker.errors import LeaseLost
from moecomp.worker.remote import ApiClient, Bytes, body_sha256
from moecomp.worker.reporter import JobReporter
from moecomp.worker.runner import JobOutput
from moecomp.worker.tar_stream import FileView

CHECKPOINT = "checkpoint.tar"


class Store(Protocol):
    def prepare(self) -> None: ...
    def upload_folder(self, upload: Upload) -> Path: ...
    def write(self, out: JobOutput) -> None: ...
    def write_log(self, data: bytes) -> None: ...
    def drop(self) -> None: ...
    def after_end(self) -> None: ...
    def close(self) -> None: ...


def output_files(folder: Path, out: JobOutput) -> list[tuple[str, Path]]:
    """The artifacts beside the checkpoint: manifest, model card, reports (kind, file)."""
    files: list[tuple[str, Path]] = [("manifest", folder / "moecomp.json"), ("model_card", folder / "README.md")]
    return files + [("report_html" if p.suffix == ".html" else "report", p) for p in out.report_files]


@dataclass
class SharedVolume:
    settings: Settings
    db: Database
    lease: Lease
    reporter: JobReporter

    @property
    def artifact_dir(self) -> Path:
        return artifacts.attempt_dir(self.settings.artifacts_dir, self.lease.job_id, self.lease.attempt)

    def prepare(self) -> None:
        artifacts.remove_other_attempts(self.settings.artifacts_dir, self.lease.job_id, self.lease.attempt)

    def upload_folder(self, upload: Upload) -> Path:
        return self.settings.uploads_dir / upload.relpath

    def _record(self, kind: str, written: artifacts.WrittenFile, name: str | None = None) -> None:
        relpath = written.path.relative_to(self.settings.artifacts_dir).as_posix()
        name, size, sha256 = name or written.path.name, written.size, written.sha256

        def record() -> Artifact | None:
            with self.db.session() as s:
                return jobs.record_artifact(
                    s, self.lease, kind=kind, name=name, relpath=relpath, size=size, sha256=sha256
                )

        if retrying(record) is None:
            raise LeaseLost()

    def write(self, out: JobOutput) -> None:
        """Move the checkpoint folder into the attempt's artifact folder and index it as a tar (served from the
        folder, never written: tar_stream), then copy the manifest, card and report beside it."""
        folder = self.artifact_dir / "checkpoint"
        files = output_files(folder, out)
        total = 1 + len(files)
        self.reporter.sink("progress", "artifacts", {"step": 0, "total": total})
        artifacts.move_folder(out.checkpoint, folder)
        index = tar_stream.write_index(folder, self.artifact_dir / f"{CHECKPOINT}{tar_stream.INDEX_SUFFIX}", "model")
        self._record("checkpoint", index, name=CHECKPOINT)
        self.reporter.sink("progress", "artifacts", {"step": 1, "total": total})
        for i, (kind, src) in enumerate(files, 2):
            if src.is_file():
                self._record(kind, artifacts.copy_file(src, self.artifact_dir / src.name))
            self.reporter.sink("progress", "artifacts", {"step": i, "total": total})

    def write_log(self, data: bytes) -> None:
        self._record("log", artifacts.write_bytes(data, self.artifact_dir / "job.log"))

    def drop(self) -> None:
        shutil.rmtree(self.artifact_dir, ignore_errors=True)

    def after_end(self) -> None:
        # A zombie of an older attempt may have written files after this attempt began; one set remains.
        self.prepare()

    def close(self) -> None:
        pass


@dataclass
class OverHttp:
    settings: Settings
    lease: Lease
    reporter: JobReporter
    client: ApiClient

    def prepare(self) -> None:
        self.client.prune(self.lease)

    def upload_folder(self, upload: Upload) -> Path:
        self.reporter.message("download", f"fetching upload {upload.id} ({upload.bytes} bytes) from the API")
        folder = self.client.fetch_upload(upload.id)
        self.reporter.message("download", f"upload {upload.id} is on this host at {folder}")
        return folder

    def write(self, out: JobOutput) -> None:
        """Send the checkpoint as the tar of its folder (streamed from it, never written here), then the manifest,
        card and report; the API records each under the lease."""
        files = output_files(out.checkpoint, out)
        total = 1 + len(files)
        self.reporter.sink("progress", "artifacts", {"step": 0, "total": total})
        view = tar_stream.layout(out.checkpoint, "model")
        self.client.send(self.lease, CHECKPOINT, "checkpoint", view, body_sha256(view))
        self.reporter.sink("progress", "artifacts", {"step": 1, "total": total})
        for i, (kind, src) in enumerate(files, 2):
            if src.is_file():
                self.client.send(self.lease, src.name, kind, FileView(src))
            self.reporter.sink("progress", "artifacts", {"step": i, "total": total})

    def write_log(self, data: bytes) -> None:
        self.client.send(self.lease, "job.log", "log", Bytes(data))

    def drop(self) -> None:
        self.client.prune(self.lease, keep_own=False)

    def after_end(self) -> None:
        self.client.prune(self.lease)

    def close(self) -> None:
        self.client.close()


def store_for(settings: Settings, db: Database, lease: Lease, reporter: JobReporter) -> Store:
    if settings.api_url:
        return OverHttp(settings, lease, reporter, ApiClient(settings))
    return SharedVolume(settings, db, lease, reporter)
