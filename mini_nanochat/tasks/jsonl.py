"""
Your own benchmark, without code: `base-eval --tasks-file my.jsonl`.

One item per line, scored by the same code as CORE's tasks (core_eval):

    {"id": "q1", "context": "The capital of France is", "choices": ["Paris", "Rome", "Berlin"], "gold": 0}
    {"id": "q2", "kind": "lm", "context": "Two plus two is", "choices": ["four"], "gold": 0}
    {"id": "q3", "kind": "schema", "context": ["The cup fell off the table because the cup",
                                               "The cup fell off the table because the table"],
     "choices": ["was too close to the edge."], "gold": 0}

`kind` is "mc" (multiple choice, the default), "schema" or "lm" (see core_eval's docstring). Contexts
and choices are joined by one space. The task is named after the file (my.jsonl -> "my"); its results
are listed beside CORE's but never counted in CORE.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core_eval import check_item

MAX_FILE_BYTES = 256 * 2**20  # a tasks file is read whole: refuse a mistake like a corpus shard


def load(path: str | os.PathLike) -> list[dict]:
    """Read and validate a tasks file; ValueError names the file, the line and what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"tasks file {p} does not exist")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"tasks file {p} is over {MAX_FILE_BYTES >> 20} MiB; is it the right file?")
    items, seen = [], set()
    with open(p, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"tasks file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p.name} line {n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        item = check_item(raw, where)
        if "id" not in raw:
            item["id"] = str(n)
        if item["id"] in seen:
            raise ValueError(f"{where}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        items.append(item)
    if not items:
        raise ValueError(f"tasks file {p} has no items")
    return items


def task_name(path: str | os.PathLike) -> str:
    """my_bench.jsonl -> "my_bench"."""
    name = Path(path).name
    for ext in (".jsonl", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name
