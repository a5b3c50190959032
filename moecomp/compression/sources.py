"""Model sources: turn a local folder or a hub id into a folder holding config.json and safetensors.

Hub downloads fetch configuration, tokenizer and safetensors files only: never ``*.py``, so no
remote code ever comes in with an input model. They go to the hub cache (``cache_dir``, else huggingface_hub's
own, shared by every job of a worker: a second job of the same model downloads nothing) and report their bytes
as "download" progress events. Which local roots are allowed is the API's
business (settings.allowed_model_roots); here a source is only resolved.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moecomp.compression.context import RunContext

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


def config_dict(folder: Path) -> dict[str, Any]:
    """``folder``'s config.json as a dict; ValueError saying why it cannot be read."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"config.json cannot be read: {exc.__class__.__name__}") from None
    if not isinstance(config, dict):
        raise ValueError("config.json is not a JSON object")
    return config


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


PROGRESS_EVERY_S = 2.0  # at most one download event this often, and one whenever the bytes so far are complete


def download_progress(ctx: RunContext, label: str) -> type[tqdm]:
    """A silent tqdm class for snapshot_download: its bar of bytes (whose total grows as each file starts)
    becomes "download" progress events, in MB."""

    class DownloadProgress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, file=io.StringIO(), **kwargs)
            self._last = (float("-inf"), -1.0)  # (when, bytes) of the last event

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self.unit != "B" or not self.total:  # the bar of files, or nothing to download
                return shown
            now, done = time.monotonic(), float(self.n)
            complete = done >= self.total and done != self._last[1]
            if complete or now - self._last[0] >= PROGRESS_EVERY_S:
                self._last = (now, done)
                ctx.progress("download", round(done / 1e6, 1), round(self.total / 1e6, 1), unit="MB", model=label)
            return shown

    return DownloadProgress


def _download(repo_id: str, revision: str | None, cache_dir: str | Path | None, ctx: RunContext) -> Path:
    from huggingface_hub import snapshot_download

    label = f"{repo_id}@{revision or 'main'}"
    try:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_ALLOW_PATTERNS,
            tqdm_class=download_progress(ctx, label),
        )  # fmt: skip
    except Exception as exc:  # not found, gated, offline: the caller needs the reason, not the type
        raise ModelNotFoundError(
            f"could not fetch {repo_id!r} (revision {revision or 'main'}) from the hub: {type(exc).__name__}: {exc}"
        ) from exc
    return _check_checkpoint(Path(path), label)


def _from_dict(source: dict[str, Any], revision: str | None) -> tuple[str, str, str | None]:
    kind = source.get("kind")
    if kind == "local":
        return "local", str(source["path"]), None
    if kind == "hub":
        return "hub", str(source["id"]), revision or source.get("revision")
    raise ModelNotFoundError(f"model source kind {kind!r} cannot be resolved here (use 'local' or 'hub')")


def resolve_model(
    source: dict[str, Any] | str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    ctx: RunContext | None = None,
) -> Path:
    """Return a local folder holding the model: ``source`` is a path, a hub id, or an API ModelSource dict;
    a hub download reports its progress to ``ctx``.

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
    return _download(text, revision, cache_dir, ctx or RunContext())
