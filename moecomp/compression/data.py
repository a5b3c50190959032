"""Calibration (and evaluation) text: read documents from a source and pack them into token blocks.

Packing follows the study (He et al. 2024, arXiv 2406.02500) and the usual GPTQ/AWQ practice:
each document is tokenized without special tokens and followed by EOS; the documents of all
sources are concatenated in order and cut into ``seq_len`` blocks; the first ``samples`` blocks
are taken. With a seed, the blocks of the first ``SEEDED_POOL_TOKENS`` tokens are shuffled first.

Sources (``CalibrationSpec.sources``):
  bundled:NAME                  moecomp/assets/text/NAME.txt.gz or NAME.txt (bundled:heldout = held-out text)
  /path/file.txt[.gz]           documents separated by form feed (\\f); no form feed = one document
  /path/file.jsonl[.gz]         one JSON object per line with a ``text`` field
  hub:DATASET[:CONFIG]:SPLIT    the ``text`` column of a Hugging Face dataset, streamed: only the
                                records packing needs are downloaded, never the whole split
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moecomp.assets import TEXTS
from moecomp.compression.recipe import CalibrationSpec
from moecomp.compression.sources import HUB_ID

FORM_FEED = "\f"
# Documents are tokenized in batches of this many: the fast tokenizer parallelises a batch.
_TOKENIZE_BATCH = 64
# A seeded draw shuffles the blocks of at most this many tokens, so a large corpus (a hub split) is read and
# tokenized only this far. 16x the largest request a job may make (2^20 tokens); all bundled text fits.
SEEDED_POOL_TOKENS = 2**24


class CalibrationSourceError(ValueError):
    """A calibration source that cannot be read: unknown name, missing file, unreachable hub dataset."""


@dataclass(frozen=True)
class HubDataset:
    dataset: str
    config: str | None
    split: str


def parse_hub_source(source: str) -> HubDataset:
    """Parse ``hub:DATASET[:CONFIG]:SPLIT``; DATASET is a hub id (``name`` or ``org/name``), never a path."""
    parts = source.removeprefix("hub:").split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise CalibrationSourceError(f"hub source {source!r} must look like 'hub:DATASET[:CONFIG]:SPLIT'")
    # datasets.load_dataset reads a path as a local folder: a hub source must not reach the worker's files.
    if not HUB_ID.match(parts[0]):
        raise CalibrationSourceError(f"hub source {source!r}: DATASET must be a hub id like 'org/name', not a path")
    if len(parts) == 2:
        return HubDataset(dataset=parts[0], config=None, split=parts[1])
    return HubDataset(dataset=parts[0], config=parts[1], split=parts[2])


def bundled_names() -> list[str]:
    """Names usable as ``bundled:NAME``."""
    return sorted({p.name.split(".")[0] for p in TEXTS.iterdir() if p.name.endswith((".txt", ".txt.gz"))})


def _bundled_path(name: str) -> Path:
    for candidate in (TEXTS / f"{name}.txt.gz", TEXTS / f"{name}.txt"):
        # A name with a separator could escape the assets folder: only plain names are looked up.
        if "/" not in name and "\\" not in name and candidate.is_file():
            return candidate
    raise CalibrationSourceError(f"unknown bundled text {name!r}; available: {', '.join(bundled_names())}")


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _split_form_feed(text: str) -> list[str]:
    return [doc for doc in text.split(FORM_FEED) if doc.strip()]


def _read_jsonl(text: str, path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CalibrationSourceError(f"{path}:{lineno}: each JSONL line needs a string 'text' field")
        if record["text"].strip():
            docs.append(record["text"])
    return docs


def _read_file(path: Path) -> list[str]:
    if not path.is_file():
        raise CalibrationSourceError(f"calibration file {path} does not exist")
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1]
    if kind == "txt":
        return _split_form_feed(_read_text(path))
    if kind == "jsonl":
        return _read_jsonl(_read_text(path), path)
    raise CalibrationSourceError(f"calibration file {path} must be .txt, .jsonl or their .gz")


def _read_hub(source: str) -> Iterator[str]:
    hub = parse_hub_source(source)
    if Path(hub.dataset).exists():  # a relative name of a folder in the worker's working directory
        raise CalibrationSourceError(f"hub source {source!r} names a folder on this machine, not a hub dataset")
    yield from stream_dataset_texts(hub.dataset, hub.config, hub.split)


def stream_dataset_texts(path: str, config: str | None, split: str) -> Iterator[str]:
    """The non-empty ``text`` values of a ``datasets`` dataset, streamed: records are fetched as they are read."""
    where = f"dataset {path!r} (config {config!r}, split {split!r})"
    count = 0
    try:
        import datasets

        for record in datasets.load_dataset(path, config, split=split, streaming=True):
            if "text" not in record:
                raise CalibrationSourceError(f"{where} has no 'text' column: {sorted(record)}")
            count += 1
            if isinstance(record["text"], str) and record["text"].strip():
                yield record["text"]
    except CalibrationSourceError:
        raise
    except Exception as exc:  # network, auth, unknown dataset, a bad file: all end the same way for the caller
        raise CalibrationSourceError(
            f"could not load {where} after {count} records: {type(exc).__name__}: {exc}. Check the name and "
            "that this machine can reach the hub; otherwise calibrate on bundled or local text."
        ) from exc


def read_documents(source: str | Path) -> Iterable[str]:
    """The documents of one source (see the module docstring for its forms): a list, or a stream for the hub."""
    text = str(source)
    if text.startswith("bundled:"):
        return _read_file(_bundled_path(text.removeprefix("bundled:")))
    if text.startswith("hub:"):
        return _read_hub(text)
    return _read_file(Path(text).expanduser())


def _token_stream(docs: Iterable[str], tokenizer: Any, eos_id: int) -> Iterator[list[int]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == _TOKENIZE_BATCH:
            yield from _encode(batch, tokenizer, eos_id)
            batch = []
    if batch:
        yield from _encode(batch, tokenizer, eos_id)


def _encode(batch: list[str], tokenizer: Any, eos_id: int) -> Iterator[list[int]]:
    for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
        yield [*ids, eos_id]


def pack_documents(
    docs: Iterable[str],
    tokenizer: Any,
    *,
    samples: int,
    seq_len: int,
    seed: int | None = None,
    pool_tokens: int = SEEDED_POOL_TOKENS,
) -> torch.Tensor:
    """Tokenize, append EOS, concatenate and cut into blocks -> LongTensor [samples, seq_len].

    Only as much text is tokenized as the first ``samples`` blocks need, or with a seed, as the blocks of
    the first ``pool_tokens`` tokens (at least ``samples`` blocks) need.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token: documents cannot be separated when packing")
    needed = samples * seq_len if seed is None else max(pool_tokens, samples * seq_len)
    flat: list[int] = []
    for ids in _token_stream(docs, tokenizer, eos_id):
        flat.extend(ids)
        if len(flat) >= needed:
            break
    n_blocks = min(len(flat), needed) // seq_len
    if n_blocks < samples:
        raise ValueError(
            f"calibration text too short: {len(flat)} tokens make {n_blocks} blocks of {seq_len} tokens, "
            f"but {samples} samples were requested; add sources or lower samples/seq_len"
        )
    blocks = torch.tensor(flat[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
    if seed is not None:
        order = list(range(n_blocks))
        random.Random(seed).shuffle(order)
        blocks = blocks[torch.tensor(order[:samples])]
    return blocks[:samples].contiguous()


def _documents(sources: Iterable[str]) -> Iterator[str]:
    # Lazy across sources: a later source is read only when the earlier ones were not enough.
    for source in sources:
        yield from read_documents(source)


def load_calibration(spec: CalibrationSpec, tokenizer: Any) -> torch.Tensor:
    """The calibration batch a recipe asks for: LongTensor [spec.samples, spec.seq_len]."""
    return pack_documents(
        _documents(spec.sources), tokenizer, samples=spec.samples, seq_len=spec.seq_len, seed=spec.seed
    )
