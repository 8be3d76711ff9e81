"""
Stage `tok-train`: train the byte-level BPE tokenizer on a corpus's train split and save it under
`<base>/tokenizer/<name>/`.

    python -m mini_nanochat tok-train                         # vocab 4096, fast (rustbpe) backend
    python -m mini_nanochat tok-train --backend python        # the readable trainer (same merges)
    python -m mini_nanochat tok-train --vocab-size 32768 --name v32k
"""
from __future__ import annotations

import argparse
import time

from ..common import get_base_dir, print0, print_config
from ..dataset import iter_texts
from ..tokenizer import Tokenizer, TokenizerError, iter_chunks_of_text


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat tok-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="total vocabulary: 256 bytes + merges + 9 special tokens (why 4096: docs/adrs/0004)")
    p.add_argument("--backend", default="fast", choices=["fast", "python"],
                   help="fast = rustbpe; python = the readable trainer in tokenizer.py (identical merges)")
    p.add_argument("--corpus", default="embedded", help="corpus whose train split is used (see `data`)")
    p.add_argument("--max-chars", type=int, default=0, help="train on at most this many characters (0 = all)")
    p.add_argument("--name", default="default", help="saved as <base>/tokenizer/<name>")
    p.add_argument("--force", action="store_true", help="retrain even if a tokenizer with this name exists")
    return p


def run(args: argparse.Namespace) -> Tokenizer:
    out = get_base_dir() / "tokenizer" / args.name
    config = {"vocab_size": args.vocab_size, "backend": args.backend, "corpus": args.corpus,
              "max_chars": args.max_chars, "output": str(out), "force": args.force}
    print_config("tok-train", config)
    if (out / "tokenizer.json").exists() and not args.force:
        try:
            tok = Tokenizer.load(out)
        except TokenizerError as e:
            raise SystemExit(f"{e}\n(pass --force to retrain over it)") from e
        prev = {k: tok.meta.get(k) for k in ("requested_vocab_size", "corpus", "max_chars")}
        want = {"requested_vocab_size": args.vocab_size, "corpus": args.corpus, "max_chars": args.max_chars}
        if prev != want:
            raise SystemExit(f"{out} holds a tokenizer trained with {prev}, not {want}; "
                             f"pass --force to replace it or --name to keep both")
        print0(f"tokenizer already trained at {out} (vocab {tok.vocab_size}); use --force to retrain")
        return tok

    texts = iter_texts(args.corpus, "train")
    if args.max_chars > 0:
        texts = iter_chunks_of_text(texts, args.max_chars)
    docs = list(texts)
    n_chars = sum(map(len, docs))
    print0(f"training on {len(docs):,} documents, {n_chars:,} characters ({args.backend} backend)...")
    t0 = time.time()
    tok = Tokenizer.train(docs, args.vocab_size, backend=args.backend, progress=True)
    seconds = time.time() - t0
    tok.meta.update({"corpus": args.corpus, "max_chars": args.max_chars, "train_documents": len(docs),
                     "train_chars": n_chars, "train_seconds": round(seconds, 3)})

    val = list(iter_texts(args.corpus, "val"))
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    val_tokens = sum(map(len, tok.encode_batch(val)))
    tok.meta["val_bytes_per_token"] = round(val_bytes / max(val_tokens, 1), 4)
    tok.save(out)
    print0(f"trained vocab {tok.vocab_size} in {seconds:.2f}s; val compression {tok.meta['val_bytes_per_token']:.3f} "
           f"bytes/token; saved to {out}")
    sample = "The Congress shall have power to lay and collect taxes, duties, imposts and excises."
    ids = tok.encode(sample)
    print0(f"example: {len(sample)} chars -> {len(ids)} tokens: {[p.decode('utf-8', 'replace') for p in tok.token_pieces(ids)]}")
    return tok


def main(argv: list[str] | None = None) -> Tokenizer:
    return run(get_parser().parse_args(argv))
