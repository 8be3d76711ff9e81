"""
Stage `tok-train`: train the byte-level BPE tokenizer on a corpus's train split and save it under
`<base>/tokenizer/<name>/`.

    python -m mini_nanochat tok-train                         # vocab 4096, fast (rustbpe) backend
    python -m mini_nanochat tok-train --backend python        # the readable trainer (same merges)
    python -m mini_nanochat tok-train --vocab-size 32768 --name v32k

The flags are checked before any work, each mistake a one-line error (exit code 2): --vocab-size at least
256 bytes + 9 special tokens = 265, --max-chars positive (leave it out for all the text), --backend fast or
python, --name a plain name (it becomes a directory under <base>/tokenizer/).

A vocabulary larger than the text allows is refused, not shrunk: `--vocab-size 100000 --max-chars 1000`
trains until every chunk of the text is a single token, which gives 592 tokens, and then stops with
"at most 592 tokens (256 bytes + 327 merges + 9 special tokens)". We refuse rather than save the smaller
tokenizer with a warning because the vocabulary size is a decision later stages build on (the model's
embedding and output rows, docs/adrs/0004, every "vocab N" comparison), a warning scrolls past in a
speedrun log while the run looks right, and re-running with the printed size costs seconds: so little
text trains to exhaustion fast.

A tokenizer already saved under the name is kept (and reused if trained with the same flags) unless
--force. Replacing one writes the new files beside it and swaps them in (Tokenizer.save): the directory
always holds the old complete tokenizer or the new one, never half of each, and the stage prints what it
replaced. A directory holding anything but a tokenizer's files is never replaced.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..common import UserError, print0, print_config
from ..dataset import iter_texts
from ..tokenizer import (MAX_VOCAB_SIZE, SPECIAL_TOKENS, Tokenizer, TokenizerError, check_replaceable,
                         iter_chunks_of_text, tokenizer_dir)

BACKENDS = ("fast", "python")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat tok-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="total vocabulary: 256 bytes + merges + 9 special tokens (why 4096: docs/adrs/0004)")
    # No argparse `choices`: check_args refuses an unknown backend with the same one-line error whether
    # the stage runs from the command line or from Python (speedrun, tests).
    p.add_argument("--backend", default="fast", metavar="{fast,python}",
                   help="fast = rustbpe; python = the readable trainer in tokenizer.py (identical merges)")
    p.add_argument("--corpus", default="embedded", help="corpus whose train split is used (see `data`)")
    p.add_argument("--max-chars", type=int, default=None,
                   help="train on the first N characters of the train split (default: all of it)")
    p.add_argument("--name", default="default", help="saved as <base>/tokenizer/<name> (a plain name)")
    p.add_argument("--force", action="store_true", help="retrain even if a tokenizer with this name exists")
    return p


def check_args(args: argparse.Namespace) -> Path:
    """Refuse bad flags with a one-line UserError before any work; return the output directory."""
    least = 256 + len(SPECIAL_TOKENS)
    if not least <= args.vocab_size <= MAX_VOCAB_SIZE:
        raise UserError(f"--vocab-size must be at least {least} (256 bytes + {len(SPECIAL_TOKENS)} special "
                        f"tokens) and at most {MAX_VOCAB_SIZE:,}, got {args.vocab_size}")
    if args.max_chars is not None and args.max_chars <= 0:
        raise UserError(f"--max-chars must be a positive number of characters, got {args.max_chars} "
                        f"(leave it out to train on all the text)")
    if args.backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {args.backend!r}")
    try:
        return tokenizer_dir(args.name)
    except TokenizerError as e:
        raise UserError(f"--name: {e}") from e


def describe_existing(out: Path) -> tuple[Tokenizer | None, str]:
    """The tokenizer saved at `out` (None if it does not load) and one line saying what it is."""
    if not (out / "tokenizer.json").is_file():
        return None, f"an incomplete tokenizer directory (no tokenizer.json) at {out}"
    try:
        tok = Tokenizer.load(out)
    except TokenizerError as e:
        return None, f"a damaged tokenizer at {out} ({e})"
    m = tok.meta
    return tok, (f"the tokenizer at {out} (vocab {tok.vocab_size:,}, sha256 {tok.sha256()[:16]}, "
                 f"{m.get('backend')} backend, corpus {m.get('corpus')}, max_chars {m.get('max_chars') or 'all'})")


def run(args: argparse.Namespace) -> Tokenizer:
    out = check_args(args)
    config = {"vocab_size": args.vocab_size, "backend": args.backend, "corpus": args.corpus,
              "max_chars": args.max_chars or "all", "output": str(out), "force": args.force}
    print_config("tok-train", config)
    replacing = None
    if os.path.lexists(out):
        old, replacing = describe_existing(out)
        if (out / "tokenizer.json").is_file() and not args.force:
            if old is None:
                raise UserError(f"{replacing}; pass --force to retrain over it")
            # Tokenizers saved before --max-chars became optional wrote 0 for "all the text".
            prev = {"requested_vocab_size": old.meta.get("requested_vocab_size"), "corpus": old.meta.get("corpus"),
                    "max_chars": old.meta.get("max_chars") or None}
            want = {"requested_vocab_size": args.vocab_size, "corpus": args.corpus, "max_chars": args.max_chars}
            if prev != want:
                raise UserError(f"{out} holds a tokenizer trained with {prev}, not {want}; "
                                f"pass --force to replace it or --name to keep both")
            print0(f"tokenizer already trained at {out} (vocab {old.vocab_size}); use --force to retrain")
            return old
        try:
            check_replaceable(out)  # now, not after training: a directory with other files is never replaced
        except TokenizerError as e:
            raise UserError(str(e)) from e

    texts = iter_texts(args.corpus, "train")
    if args.max_chars is not None:
        texts = iter_chunks_of_text(texts, args.max_chars)
    docs = list(texts)
    n_chars = sum(map(len, docs))
    print0(f"training on {len(docs):,} documents, {n_chars:,} characters ({args.backend} backend)...")
    t0 = time.time()
    tok = Tokenizer.train(docs, args.vocab_size, backend=args.backend, progress=True)
    seconds = time.time() - t0
    if tok.vocab_size < args.vocab_size:  # the text ran out of pairs to merge (see the docstring)
        n_merges = len(tok.mergeable_ranks) - 256
        more = "a larger --max-chars" if args.max_chars is not None else "a larger corpus"
        raise UserError(f"--vocab-size {args.vocab_size:,} is more than this text allows: its {n_chars:,} "
                        f"characters support only {n_merges:,} merges, so at most {tok.vocab_size:,} tokens "
                        f"(256 bytes + {n_merges:,} merges + {len(SPECIAL_TOKENS)} special tokens); "
                        f"use --vocab-size {tok.vocab_size} or less, or {more}")
    tok.meta.update({"corpus": args.corpus, "max_chars": args.max_chars, "train_documents": len(docs),
                     "train_chars": n_chars, "train_seconds": round(seconds, 3)})

    val = list(iter_texts(args.corpus, "val"))
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    val_tokens = sum(map(len, tok.encode_batch(val)))
    tok.meta["val_bytes_per_token"] = round(val_bytes / max(val_tokens, 1), 4)
    tok.save(out)
    print0(f"trained vocab {tok.vocab_size} in {seconds:.2f}s; val compression {tok.meta['val_bytes_per_token']:.3f} "
           f"bytes/token; saved to {out} (sha256 {tok.sha256()[:16]})")
    if replacing:
        print0(f"replaced {replacing}")
    sample = "The Congress shall have power to lay and collect taxes, duties, imposts and excises."
    ids = tok.encode(sample)
    print0(f"example: {len(sample)} chars -> {len(ids)} tokens: {[p.decode('utf-8', 'replace') for p in tok.token_pieces(ids)]}")
    return tok


def main(argv: list[str] | None = None) -> Tokenizer:
    return run(get_parser().parse_args(argv))
