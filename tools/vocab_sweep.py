"""
Vocabulary-size sweep: train the BPE tokenizer (fast backend) at several sizes on a corpus's train split
and print a markdown table of what each size buys (compression) and costs (training time, parameters).

    python -m mini_nanochat data                  # once: build the embedded corpus
    python tools/vocab_sweep.py                   # 512 ... 32768, embedded corpus, width 256, depth 4
    python tools/vocab_sweep.py --sizes 1024,4096 --width 384 --depth 6

Parameter columns (docs/adrs/0004):
  emb+unemb  = 2 x vocab x width            (untied input embedding and output head, as in nanochat)
  blocks     = 12 x width^2 x depth          (attention 4 w^2 + MLP 8 w^2 per layer, biases and norms ignored)
"""
from __future__ import annotations

import argparse
import sys
import time

from mini_nanochat.dataset import iter_texts
from mini_nanochat.tokenizer import Tokenizer

DEFAULT_SIZES = "512,1024,2048,4096,8192,16384,32768"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated vocabulary sizes")
    p.add_argument("--corpus", default="embedded", help="corpus under <base>/data (train split trains, val evaluates)")
    p.add_argument("--width", type=int, default=256, help="model width for the parameter columns")
    p.add_argument("--depth", type=int, default=4, help="number of transformer layers for the parameter columns")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    try:
        train = list(iter_texts(args.corpus, "train"))
        val = list(iter_texts(args.corpus, "val"))
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    train_bytes = sum(len(t.encode("utf-8")) for t in train)
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    w, d = args.width, args.depth
    blocks = 12 * w * w * d
    print(f"corpus {args.corpus}: train {len(train):,} docs / {train_bytes / 1e6:.2f} MB, "
          f"val {len(val):,} docs / {val_bytes / 1e6:.2f} MB; width {w}, depth {d}: "
          f"block parameters 12 x {w}^2 x {d} = {blocks:,}\n")
    print("| vocab | val bytes/token | train tokens (M) | train s | emb+unemb params (2·V·w) "
          "| blocks params | emb+unemb / blocks |")
    print("|------:|----------------:|-----------------:|--------:|-------------------------:"
          "|--------------:|-------------------:|")
    for v in sizes:
        t0 = time.perf_counter()
        tok = Tokenizer.train(train, v, backend="fast")
        seconds = time.perf_counter() - t0
        val_tokens = sum(map(len, tok.encode_batch(val)))
        train_tokens = sum(map(len, tok.encode_batch(train)))
        emb = 2 * tok.vocab_size * w
        print(f"| {tok.vocab_size:>5} | {val_bytes / val_tokens:>15.3f} | {train_tokens / 1e6:>16.2f} "
              f"| {seconds:>7.2f} | {emb:>24,} | {blocks:>13,} | {emb / blocks:>18.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
