from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from moecomp.compression.evaluation.local_tasks import TASKS_DIR
from moecomp.compression.evaluation.tasks import TaskUnavailable, local_task_config, run_task
from tests.compression.evaluation.helpers import EXAMPLES


def hand_accuracy(model, tokenizer, task: str, n: int) -> float:
    """Pick the choice with the highest summed log-likelihood after context + delimiter; fraction right."""
    docs = [json.loads(line) for line in (TASKS_DIR / f"{task}.jsonl").read_text().splitlines()[:n]]
    delimiter = local_task_config(task)["target_delimiter"]
    right = 0
    for doc in docs:
        scores = []
        for choice in doc["choices"]:
            context = tokenizer.encode(doc["context"])
            whole = tokenizer.encode(doc["context"] + delimiter + choice)
            continuation = whole[len(context) :]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0].float()
            logprobs = F.log_softmax(logits[-len(continuation) :], -1)
            scores.append(logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum().item())
        right += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    return right / len(docs)


def test_local_task_accuracy_equals_a_hand_computation_from_choice_loglikelihoods(mixtral32):
    # One task (the hand loop is slow on a CPU): the one the demo model does well above chance (0.25).
    task = "moecomp_verse_end"
    result = run_task(mixtral32, task, limit=EXAMPLES, batch_size=8)
    assert result["local"] and result["n"] == EXAMPLES
    assert result["acc"] == pytest.approx(hand_accuracy(mixtral32.model, mixtral32.tokenizer, task, EXAMPLES))
    assert 0.35 < result["acc"] and 0 < result["acc_stderr"] < 0.1


def test_local_task_configs_point_at_the_shipped_data_and_unknown_names_are_registry_tasks():
    config = local_task_config("moecomp_next_verse")
    assert config["output_type"] == "multiple_choice"
    assert config["dataset_kwargs"]["data_files"] == {"test": str(TASKS_DIR / "moecomp_next_verse.jsonl")}
    assert local_task_config("hellaswag") is None


def test_an_unknown_task_fails_before_any_model_work_with_a_message_naming_it(mixtral32):
    with pytest.raises(TaskUnavailable, match="'no_such_task' could not be loaded"):
        run_task(mixtral32, "no_such_task")
