from __future__ import annotations

from moecomp.compression.evaluation import local_tasks


def test_shipped_task_files_are_what_the_generator_writes(tmp_path):
    for task in local_tasks.LOCAL_TASKS:
        written = local_tasks.write(task, tmp_path)
        assert written.read_bytes() == (local_tasks.TASKS_DIR / f"{task}.jsonl").read_bytes()


def test_examples_come_from_heldout_documents_with_one_right_answer_among_four():
    heldout = "\n".join(local_tasks.heldout_documents())
    for task in local_tasks.LOCAL_TASKS:
        examples = local_tasks.build(task)
        assert 200 <= len(examples) <= local_tasks.MAX_EXAMPLES
        for e in examples:
            assert len(e["choices"]) == 4 and len(set(e["choices"])) == 4 and 0 <= e["label"] < 4
        # The right answers are lines of the held-out text (verses modulo line wrapping).
        answers = [e["choices"][e["label"]] for e in examples[:20]]
        assert all(a.split()[0] in heldout and a.split()[-1] in heldout for a in answers)


def test_verses_join_wrapped_lines():
    doc = "Psalms 121\n\n  1 I will lift up mine eyes.\n  2 He will not suffer thy foot:\nslumber.\n"
    assert local_tasks.verses(doc) == ["I will lift up mine eyes.", "He will not suffer thy foot: slumber."]


def test_speeches_split_on_speaker_lines():
    doc = "BRUTUS.\nFarewell to you;\nand you.\n\nCASSIUS.\nOne line only\n\nLear.\nA\nB\nC"
    assert local_tasks.speeches(doc) == [("BRUTUS", ["Farewell to you;", "and you."]), ("Lear", ["A", "B", "C"])]
