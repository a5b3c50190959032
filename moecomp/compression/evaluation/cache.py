"""The original's results, cached so that ten jobs compressing one model evaluate it once.

One entry per (model identity, measurement, the settings that measurement depends on): a job asking
for one more task than an earlier one measures only that task. Entries are JSON files named by the
sha256 of their key; tensors (the fidelity reference) sit next to them as ``.pt`` files. Writes go
through a temporary file and a rename, so a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def entry_key(identity: dict[str, Any], kind: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"identity": identity, "kind": kind, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """Cached measurements under ``root``; ``root=None`` caches nothing."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) / "baseline" if root is not None else None

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None or not (self.root / f"{key}.json").is_file():
            return None
        return json.loads((self.root / f"{key}.json").read_text())

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.root is not None:
            self._write(self.root / f"{key}.json", json.dumps(value).encode())

    def get_tensors(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.root is None or not (self.root / f"{key}.pt").is_file():
            return None
        return torch.load(self.root / f"{key}.pt", weights_only=True)

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        torch.save(tensors, tmp)
        os.replace(tmp, self.root / f"{key}.pt")

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
