"""
Two split-pattern experiments of ADR 0002 (docs/adrs/0002-byte-level-bpe-and-split-pattern.md, Evidence):

  digits   train with our pattern (`\\p{N}{1,2}`, numbers in 2-digit groups, as nanochat) and with GPT-4's
           `\\p{N}{1,3}`; print val bytes/token, bytes/token on `tok_eval.numbers_text()` and the number of
           multi-digit tokens learned.
  nosplit  train with no pre-split at all (pattern `[\\s\\S]+`: BPE may merge across words and spaces),
           time it, and print bytes/token on each `tok_eval` text next to the default tokenizer's.

    python -m mini_nanochat data && python -m mini_nanochat tok-train     # once (nosplit compares with it)
    python tools/split_pattern_exp.py digits --vocab-size 4096            # ~5 s on 2 cores
    python tools/split_pattern_exp.py digits --vocab-size 32768
    python tools/split_pattern_exp.py nosplit                             # ~15 s

The ADR's figures were measured on 2026-11-25 with a script that was not kept (it lived in /tmp); this
file was rewritten from the ADR's description of it on 2026-12-01 (issue #17), so the ADR's tables are
what it prints on the same corpus, up to the rewrite being faithful: rerun it and compare.
"""
from __future__ import annotations

import argparse
import time

from mini_nanochat.dataset import iter_texts
from mini_nanochat.stages.tok_eval import bytes_per_token, eval_texts, numbers_text
from mini_nanochat.tokenizer import SPLIT_PATTERN, Tokenizer, get_tokenizer


def digits(vocab_size: int, corpus: str) -> None:
    train, val = list(iter_texts(corpus, "train")), "\n\n".join(iter_texts(corpus, "val"))
    nums = numbers_text()
    p3 = SPLIT_PATTERN.replace(r"\p{N}{1,2}", r"\p{N}{1,3}")
    print("| vocab | pattern | val bytes/token | numbers bytes/token | multi-digit tokens |")
    print("|------:|---------|----------------:|--------------------:|-------------------:|")
    for name, pattern in [(r"\p{N}{1,2}", SPLIT_PATTERN), (r"\p{N}{1,3}", p3)]:
        tok = Tokenizer.train(train, vocab_size, pattern=pattern)
        multi = sum(1 for t in tok.mergeable_ranks if len(t) > 1 and t.isdigit())
        print(f"| {vocab_size} | `{name}` | {bytes_per_token(tok, val):.3f} | {bytes_per_token(tok, nums):.3f} | {multi} |")


def nosplit(vocab_size: int, corpus: str) -> None:
    train = list(iter_texts(corpus, "train"))
    ours = get_tokenizer("default")
    t0 = time.perf_counter()
    raw = Tokenizer.train(train, vocab_size, pattern=r"[\s\S]+")
    print(f"no pre-split: trained vocab {vocab_size} in {time.perf_counter() - t0:.1f} s")
    print("| text | ours (pre-split) | no pre-split |\n|---|---:|---:|")
    for name, text in eval_texts(corpus, 200_000).items():
        print(f"| {name} | {bytes_per_token(ours, text):.3f} | {bytes_per_token(raw, text):.3f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=["digits", "nosplit"])
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--corpus", default="embedded")
    args = p.parse_args(argv)
    (digits if args.experiment == "digits" else nosplit)(args.vocab_size, args.corpus)


if __name__ == "__main__":
    main()
