"""A real tmpfs of a given size, for the tests that fill a disk (planning refusals, disk-full faults)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path``; a machine that cannot mount fails the test (it never skips)."""
    assert os.geteuid() == 0, "the disk tests mount a tmpfs: run them as root (as here and in CI)"
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    done = subprocess.run(mount, capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs at {path}: {done.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)
