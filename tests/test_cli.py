"""The command line: the stage list, every stage's --help, and the speedrun end to end (in process)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mini_nanochat.__main__ import STAGES, main


def test_usage_lists_stages(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STAGES)
    assert main(["no-such-stage"]) == 2


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help(stage):
    r = subprocess.run([sys.executable, "-m", "mini_nanochat", stage, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage" in r.stdout


def test_speedrun_end_to_end(base_dir, capsys):
    from mini_nanochat.stages import speedrun
    from mini_nanochat.tokenizer import get_tokenizer

    flags = ["--depth", "1", "--iterations", "3", "--eval-per-task", "2", "--sft-iterations", "3",
             "--rl-iterations", "2", "--eval-questions", "3", "--chat-eval-per-task", "2"]
    speedrun.main(flags)
    out = capsys.readouterr().out
    assert "bytes per token" in out and "o200k_base" in out and "speedrun done" in out
    assert "done: 3 of 3 steps, val bpb" in out
    assert "CORE " in out and (base_dir / "runs" / "speedrun" / "eval" / "base_eval.json").is_file()
    assert (base_dir / "reports" / "speedrun.md").is_file()
    times = json.loads((base_dir / "runs" / "speedrun" / "speedrun_times.json").read_text())
    assert list(times["stages_seconds"]) == ["data", "tok-train", "tok-eval", "base-train", "base-eval", "sft", "rl",
                                             "chat-eval"] and times["total_seconds"] > 0
    assert 'chat --model-tag speedrun -p "What is 123 + 456?"' in out
    speedrun.main(flags)  # a second run skips every stage
    again = capsys.readouterr().out
    assert "pretraining already done" in again and "base-eval already done" in again
    assert "sft already done" in again and "rl already done" in again and "chat-eval already done" in again
    assert (base_dir / "runs" / "speedrun-rl" / "summary.json").is_file()
    tok = get_tokenizer("default")
    assert tok.vocab_size == 4096
    assert (base_dir / "reports" / "tok-eval.md").is_file() and (base_dir / "reports" / "tok-eval.html").is_file()
    # Our tokenizer compresses held-out prose of its own domain well (it beats nothing larger, honestly).
    assert tok.meta["val_bytes_per_token"] > 3.5


def test_tok_train_python_backend_equals_fast(base_dir, capsys):
    from mini_nanochat.stages import tok_train

    fast = tok_train.main(["--name", "cli-fast", "--vocab-size", "2048", "--max-chars", "3000000"])
    py = tok_train.main(["--name", "cli-py", "--vocab-size", "2048", "--max-chars", "3000000", "--backend", "python"])
    assert fast.mergeable_ranks == py.mergeable_ranks
    with pytest.raises(SystemExit, match="--force"):
        tok_train.main(["--name", "cli-fast", "--vocab-size", "1024"])


def test_tok_eval_show_and_html(base_dir, tmp_path, capsys):
    from mini_nanochat.stages import tok_eval, tok_train

    tok_train.main([])
    tok_eval.main(["--show", "Hello 안녕 🙂", "--compare", "gpt2", "--html", str(tmp_path / "s.html")])
    out = capsys.readouterr().out
    assert "--- ours" in out and "--- gpt2" in out and "\\xec" in out  # partial UTF-8 bytes shown escaped
    assert "<span" in (tmp_path / "s.html").read_text()
