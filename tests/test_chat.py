"""The terminal chat: streaming never splits a UTF-8 character, long conversations drop their oldest
turns with a notice, one-shot -p answers from a trained checkpoint, and the interactive commands work."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from mini_nanochat.stages import base_train, chat, tok_train
from mini_nanochat.stages.chat import Streamer, fit_conversation


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    tok_train.main(["--name", "chat-test", "--vocab-size", "512", "--max-chars", "2000000"])
    run_dir = tmp_path_factory.mktemp("chatrun") / "run"
    base_train.main(["--depth", "1", "--max-seq-len", "64", "--device-batch-size", "2", "--tokenizer", "chat-test",
                     "--num-iterations", "3", "--eval-every", "0", "--eval-tokens", "256", "--run-dir", str(run_dir)])
    return run_dir


def test_streamer_never_prints_half_a_character(base_dir):
    from mini_nanochat.tokenizer import Tokenizer

    tok = Tokenizer.train(["plain ascii text only"] * 5, 300)  # Korean / emoji become raw byte tokens
    text = "안녕 🙂 ok"
    out = io.StringIO()
    s = Streamer(tok, out)
    chunks = [s.push(t) for t in tok.encode(text)]
    assert s.finish() == text and out.getvalue() == text + "\n"
    assert "" in chunks  # some tokens were partial characters: nothing was printed for them
    assert all("\ufffd" not in c for c in chunks)


def test_fit_conversation_drops_oldest_turns(trained):
    from mini_nanochat.tokenizer import get_tokenizer

    tok = get_tokenizer("chat-test")
    msgs = []
    for i in range(10):
        msgs += [{"role": "user", "content": f"question {i} " * 10}, {"role": "assistant", "content": f"answer {i} " * 10}]
    msgs.append({"role": "user", "content": "last question"})
    ids, dropped = fit_conversation(tok, msgs, budget=120)
    assert len(ids) <= 120 and dropped > 0 and msgs[-1]["content"] == "last question"
    assert msgs[0]["role"] == "user" and ids[-1] == tok.encode_special("assistant_start")
    long = [{"role": "user", "content": "word " * 500}]
    ids, _ = fit_conversation(tok, long, budget=50)
    assert len(ids) == 50 and ids[0] == tok.bos_id


def test_one_shot_prompt_answers_from_checkpoint(trained, capsys):
    text = chat.main(["--run-dir", str(trained), "-p", "The Congress shall", "--max-tokens", "12", "--temperature", "0"])
    out = capsys.readouterr().out
    assert isinstance(text, str) and text and text in out
    text_chat = chat.main(["--run-dir", str(trained), "-p", "Hi", "--mode", "chat", "--max-tokens", "8"])
    assert isinstance(text_chat, str)


def test_missing_run_is_a_clear_error(base_dir, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        chat.main(["--run-dir", str(tmp_path / "nothing"), "-p", "x"])


def test_interactive_commands(trained, base_dir):
    script = "/help\n/temperature 0\n/topk 5\n/temperature abc\nhello there\n/clear\n/quit\n"
    r = subprocess.run([sys.executable, "-m", "mini_nanochat", "chat", "--run-dir", str(trained), "--mode", "chat",
                        "--max-tokens", "8"], input=script, capture_output=True, text=True,
                       env={**__import__("os").environ, "MINI_NANOCHAT_HOME": str(base_dir)}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for expected in ("commands: /clear", "[temperature = 0.0]", "[top-k = 5]", "could not read a number",
                     "[conversation cleared]"):
        assert expected in r.stdout
