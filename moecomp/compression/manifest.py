"""moecomp.json: what was done to a checkpoint, with what, and what came out (schema ``moecomp.manifest/1``).

Every layer and expert index in a manifest is the ORIGINAL model's numbering. ``files`` lists
every file written next to the manifest (relative path -> bytes, sha256); the manifest itself is
not in it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "moecomp.manifest/1"
MANIFEST_NAME = "moecomp.json"
_VERSIONED = ("moecomp", "torch", "transformers", "safetensors", "tokenizers", "llmcompressor", "compressed-tensors")
_CHUNK = 1 << 20


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a checkpoint (absent ones omitted)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {"bytes", "sha256"} for every file under ``folder`` except the manifest."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}


def build_manifest(
    *,
    recipe: dict[str, Any],
    source: dict[str, Any],
    stages: list[dict[str, Any]],
    decisions: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The manifest before export adds ``output`` and ``files``."""
    return {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "recipe": recipe,
        "stages": stages,
        "decisions": decisions,
        "versions": library_versions(),
        "timings": timings,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the digests of the files in ``folder`` and write moecomp.json there; return the manifest written."""
    manifest = {**manifest, "files": file_digests(folder)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def update_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    """Replace top-level fields of a written manifest; the file digests stay (the manifest is not among them)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder} has no {MANIFEST_NAME}")
    manifest.update(fields)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a checkpoint folder, or None when it has none."""
    path = folder / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def verify_files(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Names of files whose size or sha256 differs from the manifest (or that are missing)."""
    bad = []
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            bad.append(name)
    return bad
