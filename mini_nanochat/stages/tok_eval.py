"""
Stage `tok-eval`: how well does our tokenizer compress different kinds of text, next to GPT-2 (gpt2),
GPT-4 (cl100k_base) and GPT-4o (o200k_base)? And how exactly does it cut a given string?

    python -m mini_nanochat tok-eval                          # the comparison table (+ reports/tok-eval.md/.html)
    python -m mini_nanochat tok-eval --show "Hello, 안녕 🙂 1234567"   # coloured split, every tokenizer
    python -m mini_nanochat tok-eval --html split.html --show "..."   # the same as an HTML page

Compression is measured in bytes (UTF-8) per token: higher means fewer tokens for the same text, i.e. a
longer effective context and cheaper training per byte.

Bad flags are refused before any work with a one-line error (exit code 2): --name must be a plain name,
--max-chars positive, --compare a comma-separated subset of gpt2, cl100k_base, o200k_base.
"""
from __future__ import annotations

import argparse
import html
import inspect
import random
from importlib import resources
from pathlib import Path

from ..common import UserError, atomic_write, get_base_dir, print0, print_config
from ..dataset import EMBEDDED_SOURCES, corpus_dir, iter_texts, manifest_is_complete
from ..tokenizer import Tokenizer, TokenizerError, get_tokenizer, tokenizer_dir

REFERENCES = ["gpt2", "cl100k_base", "o200k_base"]


def numbers_text(n_lines: int = 400, seed: int = 0) -> str:
    """Deterministic text dense in numbers: years, amounts, percentages, sums, dates, decimals."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(0, 99999), rng.randint(0, 9999)
        lines.append(rng.choice([
            f"In {rng.randint(1700, 2030)} the total was ${a:,}.{rng.randint(0, 99):02d}, up {rng.uniform(0, 40):.1f}%.",
            f"{a} + {b} = {a + b}",
            f"{rng.randint(1900, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"pi ~ 3.{rng.randint(10**9, 10**10 - 1)}",
            f"{a} * {b} = {a * b}",
        ]))
    return "\n".join(lines)


def code_text(max_chars: int) -> str:
    """Python source from the standard library (present in every Python install, never trained on)."""
    import argparse as m1
    import json.decoder as m2
    import textwrap as m3
    import collections as m4

    return "\n\n".join(inspect.getsource(m) for m in (m1, m2, m3, m4))[:max_chars]


def eval_texts(corpus: str, max_chars: int) -> dict[str, str]:
    """The evaluation texts, one per kind. None of them is in the tokenizer's training data: prose and
    verse come from the held-out validation works of the embedded corpus."""
    texts: dict[str, str] = {}
    manifest = manifest_is_complete(corpus_dir(corpus))
    if corpus == "embedded" and manifest:
        val_ids = set(manifest["val_works"])
        by_source = {"sotu": [], "shakespeare": []}
        for source, make in EMBEDDED_SOURCES.items():
            by_source[source] = [w.text for w in make() if w.work_id in val_ids]
        texts["prose (SOTU, held out)"] = "\n\n".join(by_source["sotu"])[:max_chars]
        texts["verse/drama (Shakespeare, held out)"] = "\n\n".join(by_source["shakespeare"])[:max_chars]
    else:
        texts[f"val split of {corpus}"] = "\n\n".join(iter_texts(corpus, "val"))[:max_chars]
    texts["code (Python stdlib)"] = code_text(max_chars)
    texts["non-English (UDHR art. 1, 10 langs)"] = (
        resources.files("mini_nanochat").joinpath("assets/multilingual.txt").read_text(encoding="utf-8"))
    texts["numbers"] = numbers_text()[:max_chars]
    return texts


def bytes_per_token(tok: Tokenizer, text: str) -> float:
    return len(text.encode("utf-8")) / max(1, len(tok.encode(text)))


# ---- seeing the split ------------------------------------------------------------------------------
_BG = ["\033[48;5;153m", "\033[48;5;223m", "\033[48;5;194m", "\033[48;5;225m"]
_HTML_BG = ["#bde0fe", "#ffe5b4", "#d4f5d4", "#ffd6e8"]


def show_tokens(tok: Tokenizer, text: str) -> str:
    """The text with alternating background colours, one per token (ANSI terminal colours)."""
    pieces = tok.token_pieces(tok.encode(text))
    out = []
    for k, p in enumerate(pieces):
        s = p.decode("utf-8", errors="backslashreplace").replace("\n", "\\n\n")
        out.append(f"\033[30m{_BG[k % len(_BG)]}{s}\033[0m")
    return "".join(out)


def html_tokens(tok: Tokenizer, text: str) -> str:
    ids = tok.encode(text)
    spans = []
    for k, (i, p) in enumerate(zip(ids, tok.token_pieces(ids))):
        s = html.escape(p.decode("utf-8", errors="backslashreplace")).replace("\n", "\\n<br>")
        spans.append(f'<span title="id {i}, {len(p)} bytes" style="background:{_HTML_BG[k % 4]}">{s}</span>')
    return f"<h3>{html.escape(tok.name)}: {len(ids)} tokens</h3>\n<p style='font-family:monospace;white-space:pre-wrap'>" \
           + "".join(spans) + "</p>"


DEFAULT_SAMPLE = ("The Congress shall have power to lay and collect taxes. To be, or not to be: that is the "
                  "question.\n    def add(a, b):\n        return a + b  # 12345 + 678 = 13023\n안녕하세요 🙂 naïve café")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat tok-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="default", help="our tokenizer: <base>/tokenizer/<name>")
    p.add_argument("--corpus", default="embedded", help="corpus whose held-out text is evaluated")
    p.add_argument("--compare", default=",".join(REFERENCES),
                   help="comma-separated reference tokenizers (gpt2, cl100k_base, o200k_base), or ''")
    p.add_argument("--max-chars", type=int, default=200_000, help="characters per kind of text")
    p.add_argument("--show", default=None, help="print how this string is split by every tokenizer, then stop")
    p.add_argument("--html", default=None, help="also write the split of --show (or a sample) to this HTML file")
    return p


def check_args(args: argparse.Namespace) -> list[str]:
    """Refuse bad flags with a one-line UserError before any work; return the reference names."""
    try:
        tokenizer_dir(args.name)
    except TokenizerError as e:
        raise UserError(f"--name: {e}") from e
    if args.max_chars <= 0:
        raise UserError(f"--max-chars must be a positive number of characters per kind of text, got {args.max_chars}")
    refs = [r.strip() for r in args.compare.split(",") if r.strip()]
    unknown = [r for r in refs if r not in REFERENCES]
    if unknown:
        raise UserError(f"--compare: unknown reference tokenizer(s) {unknown}; choose from {', '.join(REFERENCES)}")
    return refs


def run(args: argparse.Namespace) -> dict:
    refs = check_args(args)
    config = {"tokenizer": str(tokenizer_dir(args.name)), "corpus": args.corpus,
              "compare": refs, "max_chars": args.max_chars, "show": args.show, "html": args.html}
    print_config("tok-eval", config)
    tokenizers = {"ours": get_tokenizer(args.name)} | {r: Tokenizer.from_tiktoken(r) for r in refs}

    if args.show is not None:
        for name, tok in tokenizers.items():
            print0(f"--- {name} ({len(tok.encode(args.show))} tokens) ---")
            print0(show_tokens(tok, args.show))
        if args.html:
            _write_html(Path(args.html), tokenizers, args.show)
        return {}

    texts = eval_texts(args.corpus, args.max_chars)
    table = {kind: {name: bytes_per_token(tok, text) for name, tok in tokenizers.items()}
             for kind, text in texts.items()}
    names = list(tokenizers)
    header = f"| {'text (bytes)':<48} | " + " | ".join(f"{n:>11}" for n in names) + " |"
    lines = [header, "|" + "-" * 50 + "|" + "|".join("-" * 13 for _ in names) + "|",
             f"| {'vocabulary size':<48} | " + " | ".join(f"{tokenizers[n].vocab_size:>11,}" for n in names) + " |"]
    for kind, row in table.items():
        label = f"{kind} ({len(texts[kind].encode('utf-8')):,})"
        lines.append(f"| {label:<48} | " + " | ".join(f"{row[n]:>11.3f}" for n in names) + " |")
    print0("bytes per token (higher = better compression):")
    for line in lines:
        print0(line)

    reports = get_base_dir() / "reports"
    with atomic_write(reports / "tok-eval.md") as f:
        f.write("# tok-eval\n\nBytes per token (higher = better compression), "
                "from `python -m mini_nanochat tok-eval`.\n\n" + "\n".join(lines) + "\n")
    _write_html(Path(args.html) if args.html else reports / "tok-eval.html", tokenizers, DEFAULT_SAMPLE)
    print0(f"wrote {reports / 'tok-eval.md'} and the split of a sample text to "
           f"{args.html or reports / 'tok-eval.html'}")
    print0("see any string's split with: python -m mini_nanochat tok-eval --show \"your text\"")
    return table


def _write_html(path: Path, tokenizers: dict[str, Tokenizer], text: str) -> None:
    body = "\n".join(html_tokens(tok, text) for tok in tokenizers.values())
    with atomic_write(path) as f:
        f.write(f"<!doctype html><meta charset='utf-8'><title>token splits</title>\n{body}\n")


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
