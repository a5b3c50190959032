"""Offline multiple-choice tasks built from the bundled HELD-OUT text (no model saw these documents).

moecomp_next_verse: two consecutive KJV verses as context; pick the verse that follows among 4
    (the true next verse and 3 other verses of the same chapter, never adjacent ones).
moecomp_verse_end: a KJV verse (after the one before it) without its last 4 words; pick those 4 words
    among 4 endings (the true one and the endings of 3 other verses of the same chapter). Local syntax
    and sense decide it, so even the 8.8M-parameter demo model scores well above chance (about 0.5).
moecomp_speech_end: a Shakespeare speaker and their speech without its last line; pick the last line
    among 4 (the true one and the last lines of 3 other speeches of the same document).
The JSONL files in moecomp/assets/tasks are generated deterministically by this module:
    python -m moecomp.compression.evaluation.local_tasks   (rewrites them; a test checks they match)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from moecomp.assets import ASSETS, HELDOUT_TEXT

TASKS_DIR = ASSETS / "tasks"
LOCAL_TASKS = ("moecomp_next_verse", "moecomp_verse_end", "moecomp_speech_end")
ENDING_WORDS = 4
MAX_EXAMPLES = 300
_VERSE = re.compile(r"^\s+(\d+) (.*)$")
_SPEAKER = re.compile(r"^[A-Z][A-Za-z '-]{0,40}\.$")


def heldout_documents() -> list[str]:
    return [d for d in HELDOUT_TEXT.read_text(encoding="utf-8").split("\f") if d.strip()]


def verses(doc: str) -> list[str]:
    """The verses of a KJV chapter document ('Book N' header, lines '  K text' wrapped onto later lines)."""
    out: list[str] = []
    for line in doc.splitlines()[1:]:
        match = _VERSE.match(line)
        if match:
            out.append(match.group(2).strip())
        elif out and line.strip():
            out[-1] += " " + line.strip()
    return out


def speeches(doc: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) of a play excerpt: a 'NAME.' line after a blank line, then the speech's lines."""
    out = []
    for block in doc.split("\n\n"):
        lines = [line.strip() for line in block.strip("\n").splitlines()]
        if len(lines) >= 3 and _SPEAKER.match(lines[0]) and not any(line.startswith("[") for line in lines):
            out.append((lines[0].rstrip("."), [line for line in lines[1:] if line]))
    return [s for s in out if len(s[1]) >= 2]


def next_verse_examples(docs: list[str], rng: random.Random) -> list[dict[str, Any]]:
    examples = []
    for doc in docs:
        vs = verses(doc)
        for i in range(2, len(vs)):
            others = [j for j in range(len(vs)) if abs(j - i) > 1]
            if len(others) < 3:
                continue
            choices = [vs[i]] + [vs[j] for j in rng.sample(others, 3)]
            rng.shuffle(choices)
            context = f"{doc.splitlines()[0].strip()}\n{vs[i - 2]}\n{vs[i - 1]}"
            examples.append({"context": context, "choices": choices, "label": choices.index(vs[i])})
    return examples


def verse_end_examples(docs: list[str], rng: random.Random) -> list[dict[str, Any]]:
    examples = []
    for doc in docs:
        vs = verses(doc)
        ends = {v: " ".join(v.split()[-ENDING_WORDS:]) for v in vs if len(v.split()) >= 2 * ENDING_WORDS}
        for i, verse in enumerate(vs):
            if verse not in ends:
                continue
            others = sorted({end for other, end in ends.items() if other != verse and end != ends[verse]})
            if len(others) < 3:
                continue
            choices = [ends[verse]] + rng.sample(others, 3)
            rng.shuffle(choices)
            head = " ".join(verse.split()[:-ENDING_WORDS])
            context = f"{doc.splitlines()[0].strip()}\n" + (f"{vs[i - 1]}\n" if i else "") + head
            examples.append({"context": context, "choices": choices, "label": choices.index(ends[verse])})
    return examples


def speech_end_examples(docs: list[str], rng: random.Random) -> list[dict[str, Any]]:
    examples = []
    for doc in docs:
        sp = speeches(doc)
        for i, (speaker, lines) in enumerate(sp):
            others = list({s[1][-1] for j, s in enumerate(sp) if j != i} - {lines[-1]})
            if len(others) < 3:
                continue
            choices = [lines[-1]] + rng.sample(sorted(others), 3)
            rng.shuffle(choices)
            context = f"{speaker}.\n" + "\n".join(lines[:-1])
            examples.append({"context": context, "choices": choices, "label": choices.index(lines[-1])})
    return examples


def build(name: str, seed: int = 0) -> list[dict[str, Any]]:
    """The examples of local task ``name``: at most MAX_EXAMPLES, an even sample over all documents."""
    rng = random.Random(seed)
    builder = {
        "moecomp_next_verse": next_verse_examples,
        "moecomp_verse_end": verse_end_examples,
        "moecomp_speech_end": speech_end_examples,
    }[name]
    examples = builder(heldout_documents(), rng)
    if len(examples) > MAX_EXAMPLES:
        examples = [examples[i] for i in sorted(rng.sample(range(len(examples)), MAX_EXAMPLES))]
    return examples


def write(name: str, out_dir: Path = TASKS_DIR) -> Path:
    path = out_dir / f"{name}.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in build(name)), encoding="utf-8")
    return path


if __name__ == "__main__":
    for task in LOCAL_TASKS:
        print(write(task))
