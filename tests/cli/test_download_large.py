"""A 2.5 GB checkpoint through the real task body, API and client: served as a tar streamed from its folder (no
tar on disk, bounded memory), and a download stopped after 1 GB resumed by ``moecomp download`` to its sha256.

The weights are sparse files (a few bytes written, the rest a hole), so the folder costs no disk; the downloaded
tar does (2.5 GB, removed at the end).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from moecomp.cli.client import connect
from moecomp.cli.main import main
from moecomp.settings import Settings
from moecomp.worker.lifecycle import run_job_once
from moecomp.worker.runner import JobOutput
from tests.cli.test_client import submit

GB, MB = 10**9, 10**6
WEIGHTS = {"model-00001-of-00002.safetensors": 1_300_000_000, "model-00002-of-00002.safetensors": 1_200_000_000}


def sparse_body(inp, workdir: Path, reporter, device: str, cache: Path) -> JobOutput:
    """A checkpoint of two sparse weight files, each with a mark at its start, middle and end."""
    checkpoint = workdir / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text('{"model_type": "mixtral"}')
    (checkpoint / "moecomp.json").write_text("{}")
    for name, size in WEIGHTS.items():
        with open(checkpoint / name, "wb") as f:
            f.write(f"start {name}".encode())
            f.seek(size // 2)
            f.write(b"middle")
            f.truncate(size - 3)
            f.seek(size - 3)
            f.write(b"end")
    return JobOutput(checkpoint=checkpoint, manifest={})


def status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


def files_of_at_least(root: Path, size: int) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and p.stat().st_size >= size)


def allocated_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


@pytest.fixture
def out_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the download goes; its 2.5 GB are removed right after the test, not left for pytest's tmp keeping."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    yield folder
    for path in folder.iterdir():
        path.unlink()


def test_a_multi_gb_checkpoint_streams_without_a_tar_on_disk_and_resumes(
    service: Settings, tmp_path: Path, tiny_mixtral_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = submit(tmp_path, tiny_mixtral_dir, capsys)
    run_job_once(service, job_id, body=sparse_body)
    with connect() as client:
        items = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    artifact = next(a for a in items if a["kind"] == "checkpoint")
    assert artifact["name"] == "checkpoint.tar" and artifact["bytes"] > sum(WEIGHTS.values())
    assert files_of_at_least(service.data_dir, GB) == sorted(WEIGHTS)  # the weights themselves, no tar of them

    dest, part = out_dir / "checkpoint.tar", out_dir / ".checkpoint.tar.part"
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS count (VmHWM) from here
    rss_before = status_kib("VmRSS")
    with connect() as client, client.stream("GET", artifact["url"]) as response, open(part, "wb") as out:
        for chunk in response.iter_bytes(1 << 20):  # a download that stops after 1 GB, as a broken one does
            out.write(chunk)
            if out.tell() >= GB:
                break
        # Mid-download: the server streams from the folder; nothing of the tar's size exists on its disk.
        assert files_of_at_least(service.data_dir, artifact["bytes"]) == []
        assert allocated_bytes(service.data_dir) < 50 * MB
    stopped_at = part.stat().st_size
    assert GB <= stopped_at < artifact["bytes"]

    assert main(["download", job_id, "--out", str(dest)]) == 0
    captured = capsys.readouterr()
    assert f"resuming checkpoint.tar at {stopped_at} of {artifact['bytes']} bytes" in captured.err
    assert f"sha256 {artifact['sha256']} (verified)" in captured.out
    peak_mb = (status_kib("VmHWM") - rss_before) * 1024 / MB
    assert peak_mb < 200, f"API and client together grew by {peak_mb:.0f} MB while streaming 2.5 GB"
    assert dest.stat().st_size == artifact["bytes"] and not part.exists()
    with tarfile.open(dest) as tar:  # reads the headers, seeking over the data
        name = "model-00002-of-00002.safetensors"
        assert sorted(tar.getnames()) == sorted(f"model/{n}" for n in [*WEIGHTS, "config.json", "moecomp.json"])
        member = tar.extractfile(f"model/{name}")
        assert member is not None and member.read(40).startswith(f"start {name}".encode())
        member.seek(WEIGHTS[name] - 3)
        assert member.read() == b"end"
