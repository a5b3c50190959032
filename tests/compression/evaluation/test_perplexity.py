from __future__ import annotations

import math

import torch

from moecomp.assets import HELDOUT_TEXT
from moecomp.compression.evaluation.perplexity import perplexity
from moecomp.compression.evaluation.texts import source_windows
from tests.compression.evaluation.helpers import SEQ_LEN, TOKENS


def hand_windows(tokenizer) -> torch.Tensor:
    docs = [d for d in HELDOUT_TEXT.read_text().split("\f") if d.strip()]
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = ids[:TOKENS]
    n = len(ids) // SEQ_LEN
    return torch.tensor(ids[: n * SEQ_LEN]).view(n, SEQ_LEN)


def test_windows_are_heldout_documents_plus_eos_cut_into_seq_len(mixtral32):
    wins = source_windows("bundled:heldout", mixtral32.tokenizer, SEQ_LEN, TOKENS)
    assert wins.shape == (TOKENS // SEQ_LEN, SEQ_LEN)
    assert torch.equal(wins, hand_windows(mixtral32.tokenizer))


def test_perplexity_equals_a_plain_loop_over_windows_with_the_models_loss(mixtral32):
    wins = hand_windows(mixtral32.tokenizer)
    with torch.no_grad():
        losses = [mixtral32.model(input_ids=w[None], labels=w[None]).loss.item() for w in wins]
    expected = math.exp(sum(losses) / len(losses))

    result = perplexity(mixtral32.model, wins)

    assert result["tokens"] == wins.shape[0] * (SEQ_LEN - 1)
    assert math.isclose(result["ppl"], expected, rel_tol=1e-4)
    # The fixture's README gives about 28 on 256-token windows of this text.
    assert 15 < result["ppl"] < 45
