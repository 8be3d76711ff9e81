"""
The six BIG-bench tasks in DCLM's CORE, read from the `bigbench` package's task.json files.

BIG-bench (Srivastava et al. 2022, arXiv:2206.04615) stores each task as {"examples": [...]}, where an
example has "input" and either "target" (free text: we score an exact greedy match, kind "lm") or
"target_scores" ({choice: 1 or 0}: kind "mc"). A task also names how to frame an example:
"example_input_prefix" (default "\\nQ: ") and "example_output_prefix" (default "\\nA: "), plus a
"task_prefix" said once before everything. We keep those so the prompts read as the task's authors meant.

BIG-bench files carry a canary string so that they can be kept out of training corpora: we only ever
evaluate on them (never put them in a corpus).
"""
from __future__ import annotations

import json

from . import TaskDataError, package_dir


def _task_json(path: str) -> dict:
    f = package_dir("bigbench") / "benchmark_tasks" / path / "task.json"
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TaskDataError(f"cannot read {f}: {e} (is bigbench==1.0.0 installed?)") from e


def load(path: str) -> tuple[list[dict], str]:
    """(items, preamble) of one BIG-bench task directory, e.g. load("operators")."""
    task = _task_json(path)
    pre_in = task.get("example_input_prefix", "\nQ: ").lstrip("\n")
    pre_out = task.get("example_output_prefix", "\nA: ").rstrip(" ")
    items = []
    for i, ex in enumerate(task.get("examples", [])):
        context = f"{pre_in}{ex['input'].strip()}{pre_out}".rstrip()
        if "target_scores" in ex:
            choices = list(ex["target_scores"])
            golds = [j for j, c in enumerate(choices) if ex["target_scores"][c] == max(ex["target_scores"].values())]
            items.append({"id": f"{path}/{i}", "kind": "mc", "context": context,
                          "choices": [c.strip() for c in choices], "gold": golds[0]})
        else:
            target = ex["target"][0] if isinstance(ex["target"], list) else ex["target"]
            items.append({"id": f"{path}/{i}", "kind": "lm", "context": context,
                          "choices": [target.strip()], "gold": 0})
    preamble = task.get("task_prefix", "").strip()
    return items, preamble


def as_lm(items: list[dict]) -> list[dict]:
    """DCLM scores some multiple-choice BIG-bench tasks (Dyck languages, CS algorithms) as language
    modelling: the model must *produce* the right answer greedily, not pick it from a list."""
    return [{**it, "kind": "lm", "choices": [it["choices"][it["gold"]]], "gold": 0} for it in items]
