"""Text sources named by strings: 'bundled:heldout', 'bundled:NAME', a local .txt/.jsonl(.gz) path, 'hub:...'.

The export engineer's ``moecomp.compression.data.read_documents`` is the project's one reader; this
module defers to it when it exists and otherwise reads the same formats itself (documents separated
by form feed in text files, the ``text`` field in JSON lines).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from moecomp.assets import HELDOUT_TEXT, TEXTS


def read_documents(source: str) -> list[str]:
    """The documents of ``source``, in file order."""
    try:
        from moecomp.compression.data import read_documents as shared_reader
    except ImportError:
        return _read_documents(source)
    return shared_reader(source)


def _read_documents(source: str) -> list[str]:
    if source == "bundled:heldout":
        return _split(HELDOUT_TEXT.read_text(encoding="utf-8"))
    if source.startswith("bundled:"):
        return _split(_read_text(TEXTS / f"{source.removeprefix('bundled:')}.txt.gz"))
    if source.startswith("hub:"):
        return _read_hub(source.removeprefix("hub:"))
    path = Path(source)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return [json.loads(line)["text"] for line in _read_text(path).splitlines() if line.strip()]
    return _split(_read_text(path))


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _split(text: str) -> list[str]:
    return [doc for doc in text.split("\f") if doc.strip()]


def _read_hub(spec: str) -> list[str]:
    """'DATASET[:CONFIG]:SPLIT', e.g. 'wikitext:wikitext-2-raw-v1:test' (needs network or a local HF cache)."""
    import datasets

    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"hub source must be 'hub:DATASET[:CONFIG]:SPLIT', got 'hub:{spec}'")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    rows = datasets.load_dataset(name, config, split=split)
    return [row["text"] for row in rows if row["text"].strip()]
