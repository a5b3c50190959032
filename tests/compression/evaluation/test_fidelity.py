from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moecomp.compression.evaluation import fidelity as fid
from moecomp.compression.evaluation.loading import load_checkpoint
from moecomp.compression.evaluation.texts import source_windows
from tests.compression.evaluation.helpers import SEQ_LEN, copy_model, zero_expert


@pytest.fixture(scope="module")
def corrupted(tiny_mixtral_dir, tmp_path_factory):
    model_dir = copy_model(tiny_mixtral_dir, tmp_path_factory.mktemp("corrupt") / "m")
    assert zero_expert(model_dir, layer=4, expert=1)
    return load_checkpoint(model_dir, dtype="float32")


@pytest.fixture(scope="module")
def wins(mixtral32):
    return source_windows("bundled:heldout", mixtral32.tokenizer, SEQ_LEN, 2048)


def hand_fidelity(original, candidate, wins) -> tuple[float, float]:
    """Full-vocabulary mean KL(P || Q) and argmax agreement, one window at a time."""
    kls, agree = [], []
    with torch.no_grad():
        for w in wins:
            p = F.log_softmax(original(input_ids=w[None]).logits[0, :-1].float(), -1)
            q = F.log_softmax(candidate(input_ids=w[None]).logits[0, :-1].float(), -1)
            kls.append((p.exp() * (p - q)).sum(-1))
            agree.append(p.argmax(-1) == q.argmax(-1))
    return torch.cat(kls).double().mean().item(), torch.cat(agree).double().mean().item()


def test_kl_and_agreement_equal_a_hand_computation_when_topk_covers_the_vocabulary(mixtral32, corrupted, wins):
    kl, agreement = hand_fidelity(mixtral32.model, corrupted.model, wins)
    ref = fid.reference(mixtral32.model, wins, topk=mixtral32.model.config.vocab_size)
    result = fid.compare(corrupted.model, wins, ref)
    assert result["exact"] and result["tokens"] == wins.numel() - wins.shape[0]
    assert result["kl_mean"] == pytest.approx(kl, rel=1e-3)
    assert result["top1_agreement"] == pytest.approx(agreement, abs=1e-9)
    assert kl > 0.005 and agreement < 0.97  # zeroing one expert of one layer is visible


def test_topk_kl_is_a_lower_bound_close_to_the_full_kl(mixtral32, corrupted, wins):
    full = fid.compare(corrupted.model, wins, fid.reference(mixtral32.model, wins, topk=8192))
    top = fid.compare(corrupted.model, wins, fid.reference(mixtral32.model, wins, topk=64))
    assert not top["exact"]
    assert top["kl_mean"] <= full["kl_mean"] + 1e-6
    assert top["kl_mean"] > 0.5 * full["kl_mean"]
    assert top["top1_agreement"] == full["top1_agreement"]


def test_the_original_against_itself_has_zero_kl_and_full_agreement(mixtral32, wins):
    result = fid.compare(mixtral32.model, wins, fid.reference(mixtral32.model, wins, topk=256))
    assert result["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert result["top1_agreement"] == 1.0
