"""The tar served from a folder (tar_stream) against the tar ``tar_folder`` writes: the same bytes, any range."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from moecomp.worker.artifacts import tar_folder
from moecomp.worker.tar_stream import FileChangedError, read_index, write_index


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A checkpoint-like folder: sizes on and off the 512-byte blocks, an empty file, a name past ustar's 100."""
    src = tmp_path / "checkpoint"
    (src / "nested").mkdir(parents=True)
    (src / "config.json").write_bytes(b'{"model_type": "mixtral"}')
    (src / "model-00001-of-00002.safetensors").write_bytes(os.urandom(3 * 512))
    (src / "model-00002-of-00002.safetensors").write_bytes(os.urandom(70_001))
    (src / "empty").write_bytes(b"")
    (src / "nested" / ("n" * 140 + ".bin")).write_bytes(os.urandom(999))
    (src / "link").symlink_to(src / "config.json")  # tar_folder leaves symlinks out; so does the index
    return src


def test_streamed_tar_is_byte_identical_to_tar_folder_and_extracts(folder: Path, tmp_path: Path) -> None:
    reference = tar_folder(folder, tmp_path / "reference.tar", "model")
    written = write_index(folder, tmp_path / "checkpoint.tar.index.json", "model")
    view = read_index(tmp_path / "checkpoint.tar.index.json")
    streamed = b"".join(view.chunks())
    expected = (tmp_path / "reference.tar").read_bytes()
    assert streamed == expected
    assert (written.size, written.sha256) == (reference.size, reference.sha256) == (view.size, written.sha256)
    assert hashlib.sha256(streamed).hexdigest() == reference.sha256
    with tarfile.open(fileobj=io.BytesIO(streamed)) as tar:
        names = tar.getnames()
        assert (
            tar.extractfile("model/nested/" + "n" * 140 + ".bin").read()
            == (  # type: ignore[union-attr]
                folder / "nested" / ("n" * 140 + ".bin")
            ).read_bytes()
        )
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    assert names == sorted(f"model/{p.relative_to(folder).as_posix()}" for p in files)


def test_every_range_matches_the_written_tar(folder: Path, tmp_path: Path) -> None:
    tar_folder(folder, tmp_path / "reference.tar", "model")
    expected = (tmp_path / "reference.tar").read_bytes()
    write_index(folder, tmp_path / "index.json", "model")
    view = read_index(tmp_path / "index.json")
    size = len(expected)
    cuts = sorted({0, 1, 511, 512, 513, 2048, size // 3, size // 2, size - 10241, size - 1024, size - 1})
    for start in cuts:
        for end in cuts:
            if end >= start:
                assert b"".join(view.chunks(start, end)) == expected[start : end + 1], (start, end)


def test_a_changed_or_missing_file_is_noticed_before_serving(folder: Path, tmp_path: Path) -> None:
    write_index(folder, tmp_path / "index.json", "model")
    with (folder / "config.json").open("ab") as f:
        f.write(b" ")
    with pytest.raises(FileChangedError, match="config.json"):
        read_index(tmp_path / "index.json")
    (folder / "config.json").unlink()
    with pytest.raises(FileChangedError, match="config.json"):
        read_index(tmp_path / "index.json")
