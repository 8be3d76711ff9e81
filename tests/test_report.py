"""The `report` stage: a fabricated run (no training, no evaluation) -> markdown with the expected numbers,
PNG plots, "not run yet" lines for what is missing, and one-line errors for a missing run or a bad tag."""
from __future__ import annotations

import json
import sys

import pytest

from mini_nanochat.__main__ import main as cli
from mini_nanochat.gpt import GPTConfig
from mini_nanochat.report import PEERS, binomial_se, fenced
from mini_nanochat.stages import report as stage

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path))
    return tmp_path


def make_run(home, tag="t1", evals=True):
    """A run directory in the shapes base-train, base-eval and chat-eval write."""
    run = home / "runs" / tag
    ck = run / "checkpoints" / "step_000020"
    ck.mkdir(parents=True)
    mcfg = GPTConfig.from_depth(2, vocab_size=512, sequence_len=64).to_dict()
    (ck / "meta.json").write_text(json.dumps({
        "step": 20, "git_commit": "abc1234", "model_config": mcfg, "num_iterations": 20, "tokenizer": "default",
        "corpus": "embedded", "world_size": 1,
        "train_config": {"depth": 2, "preset": "modern", "optimizer": "muon", "device_batch_size": 4,
                         "max_seq_len": 64, "total_batch_size": -1, "device": ""}}))
    lines = []
    for step in range(0, 21):
        if step % 10 == 0:
            lines.append({"step": step, "val_bpb": 3.0 - step * 0.05})
        if step:
            lines.append({"step": step, "loss": 8.0 - step * 0.1, "lr_mult": 1.0, "tok_per_s": 1000.0, "mfu": 0.3,
                          "dt": 0.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 21, "lo')
    (run / "summary.json").write_text(json.dumps({"run_dir": str(run), "steps": 20, "final_val_bpb": 2.0,
                                                  "final_train_loss": 6.0, "tok_per_s": 1234.5,
                                                  "peak_flops": 1.86e11, "mfu": 0.31}))
    (run / "samples.txt").write_text("--- step 20 ---\nThe Congress shall >>> be ``` the\n")
    tok = home / "tokenizer" / "default"
    tok.mkdir(parents=True)
    (tok / "tokenizer.json").write_text(json.dumps({"vocab_size": 512, "meta": {"val_bytes_per_token": 3.91,
                                                                                "train_seconds": 2.5}}))
    if evals:
        (run / "eval").mkdir()
        tasks = {"hellaswag_zeroshot": {"accuracy": 0.30, "centered": 0.0667, "chance": 0.25, "n": 100, "shots": 0,
                                        "mean_shots": 0.0, "kind": "mc", "source": "x", "seconds": 3.0, "core": True},
                 "winograd": {"accuracy": 0.45, "centered": -0.1, "chance": 0.5, "n": 100, "shots": 0,
                              "mean_shots": 0.0, "kind": "schema", "source": "x", "seconds": 1.0, "core": True},
                 "squad": {"kind": "lm", "shots": 10, "source": "x", "coverage": "missing", "core": True,
                           "missing": True},
                 "my|task": {"accuracy": 0.2, "centered": 0.2, "chance": 0.0, "n": 50, "shots": 3,
                             "mean_shots": 2.5, "kind": "lm", "source": "own", "seconds": 1.0, "core": False}}
        (run / "eval" / "base_eval.json").write_text(json.dumps({
            "stage": "base-eval", "run": tag, "checkpoint": str(ck), "step": 20, "date": "2026-12-01T10:00:00",
            "device": "cpu", "dtype": "float32", "val_bpb": 1.9876, "eval_tokens": 4096, "core": -0.0167,
            "core_tasks": 2, "core_total": 22, "max_per_task": 100, "tasks": tasks,
            "samples": [{"prompt": "To be", "completion": " or not"}], "seconds": 42.0}))
        (run / "eval" / "chat_eval.json").write_text(json.dumps({
            "stage": "chat-eval", "run": tag, "checkpoint": str(ck), "step": 20, "date": "2026-12-01T11:00:00",
            "device": "cpu", "max_per_task": 0, "chatcore": 0.0123, "seconds": 60.0,
            "tasks": {"ARC-Easy": {"accuracy": 0.27, "centered": 0.0267, "chance": 0.25, "n": 2376,
                                   "kind": "categorical", "seconds": 30.0},
                      "GSM8K": {"accuracy": 0.0, "centered": 0.0, "chance": 0.0, "n": 1319, "kind": "generative",
                                "seconds": 30.0}}}))
    return run


def test_full_report(home, capsys):
    make_run(home)
    (home / "reports").mkdir()
    (home / "reports" / "tok-eval.md").write_text("# tok-eval\n\n| text | ours |\n|---|---|\n| prose | 4.123 |\n")
    result = stage.main(["--model-tag", "t1"])
    out = capsys.readouterr().out
    assert out.startswith("== report ==") and "wrote" in out
    md_path = home / "reports" / "t1.md"
    assert result["markdown"] == md_path
    md = md_path.read_text()
    # evaluation: CORE, the tasks scored, a task row, the subsample note and the standard error per task
    assert "CORE -0.0167" in md and "2 of 22 tasks scored" in md
    assert "| hellaswag_zeroshot | mc | 0 | 100 | 0.3000 | 0.0458 | 0.0667 | 0.250 | 3.0 | — | yes |" in md
    assert "CORE -0.0167** ± 0.0584" in md  # sqrt(se1² + se2²) / 2 over the scored CORE tasks only
    assert f"{binomial_se(0.3, 100):.4f}" == "0.0458" and "sqrt(p(1-p)/n)" in md
    assert "| squad | lm | 10 | — | — | — | — | — | — | missing | not scored: items unavailable |" in md
    assert "my\\|task" in md and "no (own task)" in md and "3 (mean 2.5)" in md  # escaped, outside CORE
    assert "val bpb** 1.9876" in md
    # chat, training, tokenizer, time and cost, samples
    assert "ChatCORE 0.0123" in md and "| ARC-Easy | categorical |" in md
    assert "| 0.270 |" in md  # our ARC-E accuracy in the peers table
    assert "1,234 tok/s" in md or "1,235 tok/s" in md
    assert "20 of 20" in md and "5,120" in md  # steps; train tokens = 20 x 4 x 64
    assert "10.0 s (sum of 20 step times)" in md  # 20 x dt 0.5; the half-written last line is skipped
    assert "| prose | 4.123 |" in md and "3.910 bytes/token" in md
    assert "$0.00" in md and "$0 per hour" in md  # a CPU run: the assumption is spelled out
    assert "````text" in md  # the sample holds ``` so its fence is longer
    assert "abc1234" in md
    # peers: every published number in the table, and the honest note
    for name, peer in PEERS.items():
        assert name in md and f"{peer['core']:.4f}" in md
    assert "0.388" in md and "0.718" in md and "~$48" in md and "near chance" in md
    # plots: linked relatively, real PNGs
    for name in ("val_bpb", "loss", "core", "chat"):
        png = home / "reports" / "t1" / f"{name}.png"
        assert f"](t1/{name}.png)" in md
        data = png.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    assert not list((home / "reports").rglob("*.tmp"))
    stage.main(["--model-tag", "t1", "--price-per-hour", "3.6"])  # a second run rewrites it
    out = capsys.readouterr().out
    assert "rewrote" in out
    assert "$0.11** = 0.032 h" in (home / "reports" / "t1.md").read_text()  # (10 + 2.5 + 42 + 60) s x $3.6/h


def test_report_without_evals_names_the_commands(home, capsys):
    make_run(home, "bare", evals=False)
    stage.main(["--model-tag", "bare", "--out", str(home / "elsewhere" / "card.md")])
    md = (home / "elsewhere" / "card.md").read_text()
    assert "not run yet: `python -m mini_nanochat base-eval --model-tag bare`" in md
    assert "not run yet: `python -m mini_nanochat chat-eval --model-tag bare`" in md
    assert "not run yet: `python -m mini_nanochat tok-eval`" in md
    assert (home / "elsewhere" / "card" / "val_bpb.png").is_file()
    assert not (home / "elsewhere" / "card" / "core.png").exists()


def test_report_of_a_bare_run_and_broken_inputs(home, capsys):
    run = home / "runs" / "half"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0, "dt": 1.0}\n')
    (run / "eval" / "base_eval.json").write_text("{not json")
    (run / "eval" / "chat_eval.json").write_text(json.dumps({"tasks": None, "chatcore": None}))
    stage.main(["--model-tag", "half"])
    md = (home / "reports" / "half.md").read_text()
    assert "No summary.json" in md and "unreadable (JSONDecodeError" in md and "ChatCORE —" in md


def test_no_matplotlib_still_writes_markdown(home, capsys, monkeypatch):
    make_run(home)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = stage.main(["--model-tag", "t1"])
    md = result["markdown"].read_text()
    assert "matplotlib is not installed" in md and ".png)" not in md and "CORE -0.0167" in md
    assert "matplotlib is not installed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["report", "--model-tag", "nope"], "no run 'nope' under"),
    (["report", "--model-tag", "../x"], "not a plain name"),
    (["report", "--model-tag", "t1", "--price-per-hour", "-1"], "--price-per-hour must be"),
])
def test_user_errors_are_one_line(home, capsys, argv, expected):
    make_run(home)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mini-nanochat report: ") and expected in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        stage.main(argv[1:])
    assert e.value.code == 2


def test_out_must_not_be_a_directory(home, capsys):
    make_run(home)
    (home / "adir").mkdir()
    assert cli(["report", "--model-tag", "t1", "--out", str(home / "adir")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_helpers():
    assert binomial_se(0.5, 0) is None and binomial_se(None, 10) is None
    assert fenced("a ```` b").startswith("`````text")


def test_odd_values_in_the_inputs_do_not_crash(home, capsys):
    """Eval files are written by other stages (and by hand): wrong types become "—", never a traceback."""
    run = make_run(home, "odd")
    odd = {"step": "20", "val_bpb": float("nan"), "core": "high", "core_tasks": None, "max_per_task": 20.0,
           "tasks": {"a": {"accuracy": "x", "n": 10.0, "shots": None, "centered": None}, "b": 3,
                     "c": {"accuracy": 1.5, "n": -1, "centered": 0.5, "chance": 2}},
           "samples": ["not a dict", {"prompt": "p"}], "seconds": "long"}
    (run / "eval" / "base_eval.json").write_text(json.dumps(odd))
    (run / "summary.json").write_text(json.dumps({"steps": 20.0, "tok_per_s": None, "mfu": "?"}))
    result = stage.main(["--model-tag", "odd"])
    md = result["markdown"].read_text()
    assert "| a | — | — | 10 | — |" in md and "20 of 20" in md and "p >>> " in md
