"""The terminal chat: streaming never splits a UTF-8 character and never lets the model's text drive the
terminal, long conversations drop their oldest turns with a notice, one-shot -p answers from a trained
checkpoint, the interactive commands work, and bad settings are one line (flags, before the model is
loaded) or a notice (commands, the session goes on)."""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest
import torch

from mini_nanochat.common import UserError
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


def test_streamer_escapes_terminal_control_codes(base_dir):
    """Issue #12: a token holding ESC (clear screen, set the window title), BEL, CR or a C1 control is
    printed as visible escapes, so the model cannot drive the terminal; newline and tab pass, and the
    text kept for the conversation is the model's own."""
    from mini_nanochat.tokenizer import Tokenizer

    attack = "\x1b[2J\x1b]0;pwned\x07 ok\rX\tY\x9b31m\n"
    tok = Tokenizer.train([attack * 3 + "plain words here"] * 20, 300)
    ids = tok.encode(attack)
    assert any(b"\x1b" in tok.enc.decode_single_token_bytes(t) and len(tok.enc.decode_single_token_bytes(t)) > 1
               for t in ids)  # ESC arrives inside a multi-byte token, not only as a lone byte
    out = io.StringIO()
    s = Streamer(tok, out)
    shown = "".join(s.push(t) for t in ids)
    assert s.finish() == attack  # the conversation keeps the raw text
    printed = out.getvalue()
    assert printed == shown + "\n"
    for ch in ("\x1b", "\x07", "\r", "\x9b"):
        assert ch not in printed
    assert printed == "\\x1b[2J\\x1b]0;pwned\\x07 ok\\x0dX\tY\\x9b31m\n\n"


def test_bidi_controls_are_shown_escaped():
    """A right-to-left override in an answer would make the terminal show the text around it reversed."""
    from mini_nanochat.stages.chat import escape_controls

    assert escape_controls("pay \u202eten\u202c now \u2067x\u2069") == "pay \\u202eten\\u202c now \\u2067x\\u2069"
    assert escape_controls("naïve café — ok") == "naïve café — ok"  # ordinary non-ASCII text passes


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


@pytest.mark.parametrize("flags, name", [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-1"], "--temperature"), (["--temperature", "1000"], "--temperature"),
    (["--top-k", "-5"], "--top-k"), (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "nan"], "--top-p"), (["--max-tokens", "0"], "--max-tokens"), (["--max-tokens", "-1"], "--max-tokens"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**64)], "--seed"),
])
def test_bad_flags_are_one_line_before_the_model_loads(base_dir, tmp_path, flags, name):
    """Issue #12: the flags are checked first: the run directory does not exist, and the error is about
    the flag, not the missing checkpoint. One line, exit code 2."""
    with pytest.raises(UserError, match=name) as e:
        chat.main(["--run-dir", str(tmp_path / "nothing"), "-p", "x", *flags])
    assert "\n" not in str(e.value) and e.value.code == 2


def test_bad_flag_on_the_command_line_prints_one_line(base_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mini_nanochat", "chat", "--run-dir", str(tmp_path / "none"),
                        "-p", "x", "--temperature", "nan"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MINI_NANOCHAT_HOME": str(base_dir)})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["mini-nanochat chat: --temperature must be a number in [0, 100] "
                                             "(0 = greedy), got nan"]


def test_max_tokens_must_fit_the_context(trained):
    with pytest.raises(UserError, match="below the model's context \\(64\\)"):
        chat.main(["--run-dir", str(trained), "-p", "x", "--max-tokens", "64"])


def test_a_broken_model_ends_the_answer_with_a_notice(trained):
    """Issue #12: a model whose logits are NaN used to crash chat (an id outside the vocabulary). Now the
    answer stops with a notice, and the next answer can go on."""
    from mini_nanochat.engine import Engine

    model, tok, _ = chat.load_model(trained, "cpu")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    engine = Engine(model, tok)
    args = argparse.Namespace(max_tokens=8, temperature=0.6, top_k=50, top_p=None, seed=0)
    out = io.StringIO()
    text = chat.answer(engine, tok, tok.encode("The Congress", prepend=tok.bos_id), args, out)
    assert text == "" and "[notice: the model's output became NaN/inf" in out.getvalue()
    assert engine.last_broken == [True]


def test_set_option_refuses_bad_values_and_keeps_the_setting():
    args = argparse.Namespace(temperature=0.6, top_k=50)
    for val in ("nan", "inf", "-1", "1e9"):
        line = chat.set_option(args, "/temperature", val)
        assert "/temperature must be a number in [0, 100]" in line and args.temperature == 0.6, line
    assert chat.set_option(args, "/temperature", "abc").startswith("[could not read a number")
    assert chat.set_option(args, "/topk", "-3").startswith("[/topk must be an integer >= 0") and args.top_k == 50
    assert chat.set_option(args, "/topk", "2.5").startswith("[could not read a number")
    assert chat.set_option(args, "/temperature", "0") == "[temperature = 0.0]" and args.temperature == 0.0
    assert chat.set_option(args, "/topk", "5") == "[top-k = 5]" and args.top_k == 5


def test_interactive_commands(trained, base_dir):
    script = ("/help\n/temperature 0\n/topk 5\n/temperature abc\n/temperature nan\n/topk -3\nhello there\n"
              "/clear\n/quit\n")
    r = subprocess.run([sys.executable, "-m", "mini_nanochat", "chat", "--run-dir", str(trained), "--mode", "chat",
                        "--max-tokens", "8"], input=script, capture_output=True, text=True,
                       env={**__import__("os").environ, "MINI_NANOCHAT_HOME": str(base_dir)}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for expected in ("commands: /clear", "[temperature = 0.0]", "[top-k = 5]", "could not read a number",
                     "[/temperature must be a number", "[/topk must be an integer", "[conversation cleared]"):
        assert expected in r.stdout
    # a bad value does not end the session: the chat after it and the commands after that still ran
    assert r.stdout.index("[/topk must be") < r.stdout.index("[conversation cleared]")


def test_a_calculator_call_is_shown_but_not_kept_in_the_answer(base_dir):
    """The terminal shows [calculator: expr = result]; the answer's text (which goes back into the
    conversation) is only what the assistant said around it."""
    import types

    from mini_nanochat.stages.chat import answer
    from mini_nanochat.tokenizer import Tokenizer

    tok = Tokenizer.train(["What is 123 + 456? 123 plus 456 equals 579."] * 20, 300)
    sp = tok.encode_special
    script = ([(sp("python_start"), 1)] + [(t, 1) for t in tok.encode("123 + 456")] + [(sp("python_end"), 1)]
              + [(sp("output_start"), 0)] + [(t, 0) for t in tok.encode("579")] + [(sp("output_end"), 0)]
              + [(t, 1) for t in tok.encode("It is 579.")] + [(sp("assistant_end"), 1)])

    class Scripted:
        stop_ids = {sp("assistant_end"), tok.bos_id}

        def generate(self, ids, **kw):
            self.last_masks, self.last_broken = [[]], [False]
            for t, m in script:
                self.last_masks[0].append(m)
                yield [t]

    out = io.StringIO()
    args = types.SimpleNamespace(max_tokens=64, temperature=0.0, top_k=0, top_p=None, seed=0)
    text = answer(Scripted(), tok, [tok.bos_id], args, out)
    assert out.getvalue() == "[calculator: 123 + 456 = 579] It is 579.\n"
    assert text == "It is 579."
