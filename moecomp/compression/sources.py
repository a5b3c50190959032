"""Model sources: turn a local folder or a hub id into a folder holding config.json and safetensors.

Hub downloads fetch configuration, tokenizer and safetensors files only: never ``*.py``, so no
remote code ever comes in with an input model. Which local roots are allowed is the API's
business (settings.allowed_model_roots); here a source is only resolved.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# Copied beside the weights wherever a checkpoint is fetched or written: generation settings and every
# tokenizer file format in use.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Weights, config and side files only: never *.py, so no code from a hub model is fetched.
HUB_ALLOW_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", *SIDE_FILES]
# Configs whose auto_map makes transformers import Python shipped with the model (trust_remote_code).
REMOTE_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
# org/name or name, as the hub spells repository ids.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def remote_code_config(folder: Path) -> str | None:
    """The first config of ``folder`` that names remote code (``auto_map``), or None.

    Raises ValueError naming a config that is not valid JSON.
    """
    for name in REMOTE_CODE_CONFIGS:
        path = folder / name
        try:
            config = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            raise ValueError(f"{name} is not valid JSON") from None
        if isinstance(config, dict) and "auto_map" in config:
            return name
    return None


class ModelNotFoundError(FileNotFoundError):
    """The model source does not exist, cannot be fetched, or is not a usable checkpoint."""


def _check_checkpoint(folder: Path, label: str) -> Path:
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {label} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {label} has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise ModelNotFoundError(f"model folder {label} has no .safetensors weights (only safetensors are read)")
    return folder


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists()


def _download(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as exc:  # not found, gated, offline: the caller needs the reason, not the type
        raise ModelNotFoundError(
            f"could not fetch {repo_id!r} (revision {revision or 'main'}) from the hub: {type(exc).__name__}: {exc}"
        ) from exc
    return _check_checkpoint(Path(path), f"{repo_id}@{revision or 'main'}")


def _from_dict(source: dict[str, Any], revision: str | None) -> tuple[str, str, str | None]:
    kind = source.get("kind")
    if kind == "local":
        return "local", str(source["path"]), None
    if kind == "hub":
        return "hub", str(source["id"]), revision or source.get("revision")
    raise ModelNotFoundError(f"model source kind {kind!r} cannot be resolved here (use 'local' or 'hub')")


def resolve_model(
    source: dict[str, Any] | str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Return a local folder holding the model: ``source`` is a path, a hub id, or an API ModelSource dict.

    A string that exists on disk or starts with '/', './', '../' or '~' is a local path; otherwise a hub id.
    """
    if isinstance(source, dict):
        kind, text, revision = _from_dict(source, revision)
    else:
        text = str(source)
        kind = "local" if isinstance(source, Path) or _looks_local(text) else "hub"
    if kind == "local":
        return _check_checkpoint(Path(text).expanduser().resolve(), text)
    if not HUB_ID.match(text):
        raise ModelNotFoundError(f"{text!r} is neither an existing folder nor a hub id like 'org/name'")
    return _download(text, revision, cache_dir)
