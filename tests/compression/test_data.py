"""Calibration text: every source form reads the right documents; packing matches a direct reference."""

import gzip
import itertools
import json

import pytest
import torch
from transformers import AutoTokenizer

from moecomp.compression.data import (
    CalibrationSourceError,
    HubDataset,
    load_calibration,
    pack_documents,
    parse_hub_source,
    read_documents,
    stream_dataset_texts,
)
from moecomp.compression.recipe import CalibrationSpec


@pytest.fixture(scope="module")
def tokenizer(tiny_mixtral_dir):
    return AutoTokenizer.from_pretrained(tiny_mixtral_dir)


def reference_blocks(docs, tokenizer, seq_len):
    """The obvious way: encode one document at a time, EOS after each, cut the concatenation."""
    flat = []
    for doc in docs:
        flat += tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len]).view(n, seq_len)


def test_bundled_texts_split_on_form_feed(heldout_text):
    held = read_documents("bundled:heldout")
    assert len(held) == 115
    assert held == [d for d in heldout_text.read_text().split("\f") if d.strip()]
    assert len(read_documents("bundled:fortunes")) > 100


def test_unknown_bundled_name_lists_the_available_ones():
    with pytest.raises(CalibrationSourceError, match="shakespeare"):
        read_documents("bundled:nope")
    with pytest.raises(CalibrationSourceError):
        read_documents("bundled:../text/heldout")


def test_local_txt_jsonl_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_text("one\fTwo two\f\f  \fthree")
    (tmp_path / "plain.txt").write_text("no form feed\nat all")
    lines = [json.dumps({"text": t}) for t in ("alpha", "beta")]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("x\fy")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(lines[0])
    assert read_documents(tmp_path / "a.txt") == ["one", "Two two", "three"]
    assert read_documents(str(tmp_path / "plain.txt")) == ["no form feed\nat all"]
    assert read_documents(tmp_path / "b.jsonl") == ["alpha", "beta"]
    assert read_documents(tmp_path / "c.txt.gz") == ["x", "y"]
    assert read_documents(tmp_path / "d.jsonl.gz") == ["alpha"]


def test_bad_local_sources_are_named(tmp_path):
    with pytest.raises(CalibrationSourceError, match="does not exist"):
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CalibrationSourceError, match="must be .txt, .jsonl"):
        read_documents(tmp_path / "x.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(CalibrationSourceError, match="bad.jsonl:2"):
        read_documents(tmp_path / "bad.jsonl")


def test_hub_source_parse():
    assert parse_hub_source("hub:wikitext:wikitext-2-raw-v1:train") == HubDataset(
        "wikitext", "wikitext-2-raw-v1", "train"
    )
    assert parse_hub_source("hub:allenai/c4:validation") == HubDataset("allenai/c4", None, "validation")
    for bad in ("hub:onlyname", "hub:a:b:c:d", "hub::train"):
        with pytest.raises(CalibrationSourceError, match="DATASET"):
            parse_hub_source(bad)


def test_hub_source_offline_error_is_clear(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CalibrationSourceError, match="could not load dataset 'someorg/nothing'"):
        list(read_documents("hub:someorg/nothing:train"))


@pytest.mark.parametrize("dataset", ["/etc", "../srv/data", "~/data", "a/b/c"])
def test_a_hub_source_is_never_a_path(dataset):
    with pytest.raises(CalibrationSourceError, match="hub id like 'org/name', not a path"):
        parse_hub_source(f"hub:{dataset}:train")


def test_a_hub_source_naming_a_local_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "var").mkdir()
    monkeypatch.chdir(tmp_path)  # datasets would read ./var from the worker's working directory
    with pytest.raises(CalibrationSourceError, match="names a folder on this machine"):
        list(read_documents("hub:var:train"))


def test_datasets_are_streamed_as_far_as_packing_reads(tokenizer, tmp_path):
    # A local folder stands in for the hub (the same datasets.load_dataset call, no network). Its second file
    # is not JSON: reading the split whole would fail, streaming stops before it.
    (tmp_path / "ds").mkdir()
    docs = [f"document number {i} of the streamed split" for i in range(200)]
    (tmp_path / "ds" / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "ds" / "b.jsonl").write_text("this line is not JSON\n")
    stream = stream_dataset_texts(str(tmp_path / "ds"), None, "train")
    blocks = pack_documents(stream, tokenizer, samples=4, seq_len=32)
    assert torch.equal(blocks, reference_blocks(docs, tokenizer, 32)[:4])
    stream = stream_dataset_texts(str(tmp_path / "ds"), None, "train")
    seeded = pack_documents(stream, tokenizer, samples=4, seq_len=32, seed=0, pool_tokens=16 * 32)
    pool = {tuple(r.tolist()) for r in reference_blocks(docs, tokenizer, 32)[:16]}
    assert all(tuple(r.tolist()) in pool for r in seeded)
    with pytest.raises(CalibrationSourceError, match=r"after 200 records: ArrowInvalid"):
        list(stream_dataset_texts(str(tmp_path / "ds"), None, "train"))
    (tmp_path / "nt").mkdir()
    (tmp_path / "nt" / "a.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(CalibrationSourceError, match=r"has no 'text' column: \['content'\]"):
        list(stream_dataset_texts(str(tmp_path / "nt"), None, "train"))


def test_a_seeded_draw_reads_a_bounded_pool(tokenizer):
    endless = itertools.cycle(["an endless corpus of the same few words"])  # a huge hub split, in effect
    blocks = pack_documents(endless, tokenizer, samples=4, seq_len=32, seed=1, pool_tokens=4096)
    assert blocks.shape == (4, 32)


def test_packing_equals_reference(tokenizer):
    docs = [doc[:300] for doc in read_documents("bundled:heldout")[:20]]
    blocks = pack_documents(docs, tokenizer, samples=6, seq_len=64)
    expected = reference_blocks(docs, tokenizer, 64)
    assert blocks.dtype == torch.long and blocks.shape == (6, 64)
    assert torch.equal(blocks, expected[:6])
    # EOS separates documents inside the stream
    assert (blocks == tokenizer.eos_token_id).any()


def test_seeded_packing_shuffles_whole_blocks_deterministically(tokenizer):
    docs = read_documents("bundled:heldout")[:20]
    every = reference_blocks(docs, tokenizer, 32)
    a = pack_documents(docs, tokenizer, samples=8, seq_len=32, seed=3)
    b = pack_documents(docs, tokenizer, samples=8, seq_len=32, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, every[:8])
    rows = {tuple(r.tolist()) for r in every}
    assert all(tuple(r.tolist()) in rows for r in a)


def test_too_little_text_says_how_many_blocks(tokenizer):
    with pytest.raises(ValueError, match=r"tokens make \d blocks of 16 tokens, but 5 samples"):
        pack_documents(["a short document of some twenty odd chars"], tokenizer, samples=5, seq_len=16)


def test_load_calibration_takes_sources_in_order(tokenizer, tmp_path):
    (tmp_path / "first.txt").write_text("the first document\fthe second one")
    spec = CalibrationSpec(sources=[str(tmp_path / "first.txt"), "bundled:heldout"], samples=4, seq_len=32)
    ids = load_calibration(spec, tokenizer)
    docs = read_documents(tmp_path / "first.txt") + read_documents("bundled:heldout")[:5]
    assert torch.equal(ids, reference_blocks(docs, tokenizer, 32)[:4])
