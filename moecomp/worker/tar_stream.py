"""A folder served as the uncompressed tar ``artifacts.tar_folder`` would write, without ever writing it.

A tar of regular files is a sequence of segments: each member's header (512-byte ustar blocks, with a PAX
extended header before it where a name is long), the file's bytes, zeros up to the next 512-byte block; then
two zero blocks and zeros up to a 10240-byte record. Headers depend only on the member's name, size, mode and
mtime (``member_info``), so the layout follows from the folder's listing alone. At job end the worker reads
the files once to hash the tar's bytes and writes the layout as a small JSON index beside the folder; the API
streams any byte range of the tar from the folder and the index. A real-size checkpoint (tens of GB) thus
needs no second copy on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from moecomp.worker.artifacts import CHUNK, WrittenFile, member_info, members, write_bytes

INDEX_SUFFIX = ".index.json"  # checkpoint.tar -> checkpoint.tar.index.json
VERSION = 1


@dataclass(frozen=True)
class Segment:
    """``size`` bytes of the tar at ``offset``: literal bytes (headers), a file's bytes, or zeros."""

    offset: int
    size: int
    data: bytes | None = None
    file: str | None = None  # relative to the folder, POSIX separators


class Body(Protocol):
    """Bytes served or sent in chunks: a size and the chunks of any inclusive range (FileView, TarView)."""

    @property
    def size(self) -> int: ...

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class FileView:
    """A plain file, read ``CHUNK`` bytes at a time (what a TarView is for a folder)."""

    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        left = (self.size if end is None else end + 1) - start
        with open(self.path, "rb") as f:
            f.seek(start)
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk


@dataclass(frozen=True)
class TarView:
    """The tar of ``folder`` as ``segments``: ``size`` bytes in all."""

    folder: Path
    segments: list[Segment]

    @property
    def size(self) -> int:
        last = self.segments[-1]
        return last.offset + last.size

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The tar's bytes ``start..end`` (inclusive; ``end`` None: to the last byte), at most CHUNK at a time."""
        stop = self.size if end is None else end + 1
        for seg in self.segments:
            lo, hi = max(start, seg.offset), min(stop, seg.offset + seg.size)
            if lo < hi:
                yield from _segment_chunks(self.folder, seg, lo - seg.offset, hi - seg.offset)


def _segment_chunks(folder: Path, seg: Segment, lo: int, hi: int) -> Iterator[bytes]:
    if seg.data is not None:
        yield seg.data[lo:hi]
    elif seg.file is None:
        for pos in range(lo, hi, CHUNK):
            yield bytes(min(CHUNK, hi - pos))
    else:
        with open(folder / seg.file, "rb") as f:
            f.seek(lo)
            while lo < hi and (chunk := f.read(min(CHUNK, hi - lo))):
                lo += len(chunk)
                yield chunk
        if lo < hi:
            raise FileChangedError(f"{folder / seg.file} is shorter than when its tar was indexed")


class FileChangedError(OSError):
    """A file of an indexed folder changed size since the index was written."""


def layout(folder: Path, arcname: str) -> TarView:
    """The segments of ``tar_folder(folder, ..., arcname)``'s output, from the folder's listing (no reads)."""
    segments: list[Segment] = []
    offset = 0

    def add(size: int, data: bytes | None = None, file: str | None = None) -> None:
        nonlocal offset
        if size:
            segments.append(Segment(offset, size, data, file))
            offset += size

    for path in members(folder):
        info = member_info(path, f"{arcname}/{path.relative_to(folder).as_posix()}")
        header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        add(len(header), data=header)
        add(info.size, file=path.relative_to(folder).as_posix())
        add(-info.size % tarfile.BLOCKSIZE)
    add(2 * tarfile.BLOCKSIZE)  # the end-of-archive marker
    add(-offset % tarfile.RECORDSIZE)
    return TarView(folder, segments)


def write_index(folder: Path, dest: Path, arcname: str) -> WrittenFile:
    """Hash the tar of ``folder`` (one read of its files) and write its layout to ``dest``.

    Returns ``dest`` with the tar's size and sha256: what the artifact row records.
    """
    view = layout(folder, arcname)
    digest = hashlib.sha256()
    for chunk in view.chunks():
        digest.update(chunk)
    rel = folder.relative_to(dest.parent).as_posix()  # the folder lies beside its index
    index = {"version": VERSION, "folder": rel, "size": view.size, "sha256": digest.hexdigest()}
    index["segments"] = [_segment_json(s) for s in view.segments]
    write_bytes(json.dumps(index, separators=(",", ":")).encode(), dest)
    return WrittenFile(dest, view.size, digest.hexdigest())


def _segment_json(seg: Segment) -> dict[str, object]:
    out: dict[str, object] = {"offset": seg.offset, "size": seg.size}
    if seg.data is not None:
        out["data"] = base64.b64encode(seg.data).decode()
    if seg.file is not None:
        out["file"] = seg.file
    return out


def read_index(path: Path) -> TarView:
    """The tar view an index describes; FileChangedError if a file is missing or not the size indexed."""
    index = json.loads(path.read_text())
    folder = (path.parent / index["folder"]).resolve()
    if not folder.is_relative_to(path.parent.resolve()):
        raise FileChangedError(f"{path}: the indexed folder lies outside the index's own")
    segments = []
    for s in index["segments"]:
        data = base64.b64decode(s["data"]) if "data" in s else None
        segments.append(Segment(s["offset"], s["size"], data, s.get("file")))
        if s.get("file") is not None and _size(folder / s["file"]) != s["size"]:
            raise FileChangedError(f"{folder / s['file']} is missing or changed since its tar was indexed")
    return TarView(folder, segments)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def is_index(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIX)
