"""
Stage `chat`: talk to a trained model in the terminal, streaming its answer token by token.

    python -m mini_nanochat chat                           # the speedrun's model, interactive
    python -m mini_nanochat chat -p "What is 123 + 456?"   # one answer, then exit (the speedrun's chat model)
    python -m mini_nanochat chat --stage base -p "The Congress shall"   # the pretrained model continues text
    python -m mini_nanochat chat --model-tag d4 --temperature 0.8 --top-k 50

Commands in the interactive loop: /clear (forget the conversation), /temperature X, /topk K, /help, /quit.
A bad value for a command prints a notice and leaves the setting as it was; bad flags stop before the
model is loaded. The model's text is shown with terminal control characters escaped (\x1b, not ESC).

A base model (pretrained only) has never seen a conversation, so by default (--mode auto) it continues
your text instead ("complete"); a fine-tuned chat model (Phase 8) gets the chat format ("chat"). A
conversation that outgrows the context window drops its oldest turns, with a notice.
"""
from __future__ import annotations

import argparse
import codecs
import re
import sys
from pathlib import Path


from ..checkpoint import CheckpointError, latest_checkpoint
from ..common import UserError, autodetect_device, is_plain_name, print_config

HELP = "commands: /clear  /temperature X  /topk K  /help  /quit"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat chat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from ..checkpoint import add_run_flags

    add_run_flags(p)
    p.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--mode", default="auto", choices=["auto", "chat", "complete"],
                   help="chat format or plain text continuation (auto: chat only for fine-tuned models)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (e.g. 0.9)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="", help="cuda / mps / cpu (default: autodetect)")
    return p


def load_model(run_dir: Path, device: str):
    """The latest checkpoint of a run: (model, tokenizer, meta), through the library's loader (weights
    only, no optimizer state). A missing or broken run is one clear line."""
    from ..checkpoint import load_model as load

    if latest_checkpoint(run_dir) is None:
        raise UserError(f"no checkpoint in {run_dir}; train one first: python -m mini_nanochat speedrun")
    try:
        return load(run_dir, device)
    except CheckpointError as e:
        raise UserError(str(e).splitlines()[0] if str(e) else "unreadable checkpoint") from None


def check_flags(args: argparse.Namespace) -> None:
    """The sampling flags, with the engine's own checks, before the model is loaded (seconds, maybe a
    GPU): a typo costs nothing and reads as one line. --max-tokens is checked against the model's context
    once the model is known (run)."""
    from ..engine import check_positive, check_seed, check_temperature, check_top_k, check_top_p

    try:
        check_positive(args.max_tokens, "--max-tokens")
        check_temperature(args.temperature, "--temperature")
        check_top_k(args.top_k, "--top-k")
        check_top_p(args.top_p, "--top-p")
        check_seed(args.seed, "--seed")
    except ValueError as e:
        raise UserError(str(e)) from None
    if not args.run_dir and not is_plain_name(args.model_tag):
        raise UserError(f"--model-tag {args.model_tag!r:.60} is not a plain name (letters, digits, '.', '_', '-'; "
                        f"no '/' or '..'); use --run-dir for a path")


# Characters a terminal acts on instead of showing: the C0 controls except tab and newline (ESC starts the
# sequences that move the cursor, clear the screen, set the window title, or in some terminals write the
# clipboard; CR rewrites the line), DEL, and the C1 controls U+0080-U+009F (U+009B is a one-character
# CSI). The model's text is untrusted (ADR 0025's threat model: a prompt or a pasted document can ask for
# them), so they are shown as \x1b etc. and never reach the terminal as they are.
# Also the Unicode bidirectional controls (U+200E/F, U+202A-E, U+2066-9): they cannot drive the terminal,
# but they reorder how the text around them is displayed ("Trojan Source", Boucher & Anderson 2021),
# so an answer could show something other than what it says.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    r"""Terminal control characters as visible escapes; newline and tab stay.

    >>> escape_controls("a\x1b[2Jb\tc\r\n\x9b")
    'a\\x1b[2Jb\tc\\x0d\n\\x9b'
    """
    return _CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                              else f"\\u{ord(m.group()):04x}", text)


class Streamer:
    """Token bytes in, complete UTF-8 characters out: a character split across two tokens is printed
    only once both halves have arrived (never half a character). What is printed has its terminal
    control characters escaped (escape_controls); `text` and finish() keep the model's text as it is
    (it goes back into the conversation)."""

    def __init__(self, tok, out=None):
        self.tok, self.out = tok, out if out is not None else sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def _show(self, piece: str) -> str:
        shown = escape_controls(piece)
        self.out.write(shown)
        self.out.flush()
        return shown

    def push(self, token: int) -> str:
        """Decode one token; print and return the complete characters it finished (possibly none)."""
        piece = self.decoder.decode(self.tok.enc.decode_single_token_bytes(token))
        self.text += piece
        return self._show(piece) if piece else piece

    def finish(self) -> str:
        """Print what is left and a newline; return the whole text, unescaped."""
        tail = self.decoder.decode(b"", final=True)
        self.text += tail
        self._show(tail + "\n")
        return self.text


def fit_conversation(tok, messages: list[dict], budget: int) -> tuple[list[int], int]:
    """Render messages for completion, dropping the oldest user/assistant turns until the prompt fits in
    `budget` tokens. Returns (ids, number of messages dropped). The newest user message is always kept
    (cut from the left if it alone is too long)."""
    dropped = 0
    while True:
        ids = tok.render_for_completion(messages)
        if len(ids) <= budget or len(messages) <= 1:
            break
        messages[:] = messages[2:] if len(messages) > 2 else messages[1:]
        dropped += 2
    if len(ids) > budget:  # a single message longer than the window: keep its end
        ids = [tok.bos_id] + ids[len(ids) - budget + 1:]
    return ids, dropped


def answer(engine, tok, ids: list[int], args, out=None) -> str:
    """Stream one answer for prompt `ids`; return its text. If the model's logits turned NaN/inf, the engine
    ended the answer there (ADR 0024) and a notice says so."""
    streamer = Streamer(tok, out)
    stop = engine.stop_ids
    # a calculator call is shown as [calculator: 123 + 456 = 579]: its markers as brackets, the tool's
    # answer (forced by the engine, mask 0) after "=", neither kept in the answer's text
    from ..engine import tool_display

    shown = tool_display(tok)
    in_call = False
    for column in engine.generate(ids, num_samples=1, max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_k=args.top_k or None, top_p=args.top_p, seed=args.seed):
        t = column[0]
        if t in stop and engine.last_masks[0][-1] == 1:
            break
        if t in shown:
            streamer._show(shown[t])
            in_call = t == tok.special_tokens.get("<|python_start|>")
        elif t in tok.special_tokens.values():
            continue
        elif in_call or engine.last_masks[0][-1] == 0:
            streamer._show(tok.decode([t]))  # the call and the tool's output: shown, not kept in the text
        else:
            streamer.push(t)
    text = streamer.finish()
    if engine.last_broken[0]:
        streamer.out.write("[notice: the model's output became NaN/inf (a numerically broken forward pass); "
                           "the answer was stopped there]\n")
        streamer.out.flush()
    return text


def set_option(args: argparse.Namespace, cmd: str, val: str) -> str:
    """/temperature X or /topk K: change the setting if the value is valid; return the line to print. A
    bad value leaves the setting as it was and the session goes on."""
    from ..engine import check_temperature, check_top_k

    name, parse, check = {"/temperature": ("temperature", float, check_temperature),
                          "/topk": ("top_k", int, check_top_k)}[cmd]
    try:
        value = parse(val)
    except ValueError:
        return f"[could not read a number from {val!r}] {HELP}"
    try:
        setattr(args, name, check(value, cmd))
    except ValueError as e:
        return f"[{e}; {name} stays {getattr(args, name)}]"
    return f"[{'top-k' if cmd == '/topk' else name} = {getattr(args, name)}]"


def run(args: argparse.Namespace) -> str | None:
    from ..engine import Engine

    check_flags(args)
    device = autodetect_device(args.device or None)
    from ..checkpoint import run_from_flags

    run_dir = run_from_flags(args)
    model, tok, meta = load_model(run_dir, device)
    window = model.config.sequence_len
    if args.max_tokens >= window:
        raise UserError(f"--max-tokens must be below the model's context ({window}), got {args.max_tokens}")
    mode = args.mode if args.mode != "auto" else ("chat" if meta.get("sft") else "complete")
    print_config("chat", {"checkpoint": meta["checkpoint"], "mode": mode, "temperature": args.temperature,
                          "top_k": args.top_k, "top_p": args.top_p, "max_tokens": args.max_tokens, "device": device})
    engine = Engine(model, tok)
    budget = window - args.max_tokens
    messages: list[dict] = []

    def respond(text: str) -> str:
        if mode == "complete":
            ids = tok.encode(text, prepend=tok.bos_id)[-budget:]
            sys.stdout.write(text)
            return answer(engine, tok, ids, args)
        messages.append({"role": "user", "content": text})
        ids, dropped = fit_conversation(tok, messages, budget)
        if dropped:
            print(f"[notice: the conversation outgrew the {window}-token context; dropped the oldest "
                  f"{dropped} messages]")
        reply = answer(engine, tok, ids, args)
        messages.append({"role": "assistant", "content": reply})
        return reply

    if args.prompt is not None:
        return respond(args.prompt)
    print(f"mini-nanochat ({mode} mode). {HELP}")
    while True:
        try:
            line = input("\n> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return None
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, val = line.partition(" ")
            if cmd == "/quit":
                return None
            if cmd == "/clear":
                messages.clear()
                print("[conversation cleared]")
            elif cmd in ("/temperature", "/topk"):
                print(set_option(args, cmd, val.strip()))
            else:
                print(HELP)
            continue
        respond(line)


def main(argv: list[str] | None = None):
    return run(get_parser().parse_args(argv))
