"""
How much text does best-fit packing crop? A simulation over document lengths (ADR 0006, "Document
lengths and cropping"; docs/adrs/0006-embedded-corpus.md).

nanochat's BOS-aligned best-fit packing (our `dataloader.DataLoader` follows it, ADR 0008) keeps a
buffer of documents; each row of T+1 tokens takes the largest buffered document that still fits, and
when none fits it crops the shortest one to fill the row and drops the rest of it. This script replays
that rule on the train split's token counts (`<|bos|>` included) and reports the share of document
tokens thrown away, counted only while the buffer is full (the steady state of an endless loader).

    python -m mini_nanochat data && python -m mini_nanochat tok-train   # once
    python tools/bestfit_crop_sim.py --T 256 512                        # the table's two columns
    python tools/bestfit_crop_sim.py --T 512 --progress 400 1600 4000   # the share as the run goes on

Other corpora: build them with `data --max-doc-chars N` under another MINI_NANOCHAT_HOME. The ADR's
figures were measured on 2026-11-25 with two scripts that were not kept (they lived in /tmp); this file
was rewritten from the ADR's code and description on 2026-12-01 (issue #17). Pure Python: about a
minute per T on the default corpus.
"""
from __future__ import annotations

import argparse


def cropped_share(lengths: list[int], T: int, buffer_size: int = 1000, report_at: tuple[int, ...] = ()):
    """Share of document tokens cropped away by best-fit packing of `lengths` into rows of T+1 tokens.
    Counts stop when the buffer can no longer be refilled. With `report_at`, also yields (rows, share)
    after those many rows.

    >>> round(cropped_share([9] * 10, T=7, buffer_size=2)[0], 3)  # every row crops 1 of 9 tokens
    0.111
    >>> cropped_share([4] * 10, T=7, buffer_size=2)[0]  # two documents fill each row exactly
    0.0
    """
    it, buf, used, consumed, rows, seen = iter(lengths), [], 0, 0, 0, []
    while True:
        pos = 0
        while pos < T + 1:
            while len(buf) < buffer_size:
                try:
                    buf.append(next(it))
                except StopIteration:
                    return 1 - used / max(1, consumed), seen
            room = T + 1 - pos
            fits = [i for i, n in enumerate(buf) if n <= room]
            if fits:  # the largest document that fits whole
                n = buf.pop(max(fits, key=lambda i: buf[i]))
                pos += n
                used += n
                consumed += n
            else:  # none fits: crop the shortest, fill the row with its start, drop the rest
                n = buf.pop(min(range(len(buf)), key=lambda i: buf[i]))
                pos += room
                used += room
                consumed += n
        rows += 1
        if rows in report_at:
            seen.append((rows, 1 - used / max(1, consumed)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[256, 512], help="sequence lengths (rows hold T+1 tokens)")
    p.add_argument("--buffer", type=int, default=1000, help="documents in the buffer (nanochat: 1000)")
    p.add_argument("--repeat", type=int, default=1, help="pass over the documents this many times (whole works: 5)")
    p.add_argument("--progress", type=int, nargs="*", default=[], help="also print the share after these many rows")
    p.add_argument("--corpus", default="embedded")
    p.add_argument("--tokenizer", default="default")
    args = p.parse_args(argv)

    from mini_nanochat.dataset import iter_texts
    from mini_nanochat.tokenizer import get_tokenizer

    tok = get_tokenizer(args.tokenizer)
    docs = list(iter_texts(args.corpus, "train"))
    lengths = [len(ids) + 1 for ids in tok.encode_batch(docs)] * args.repeat  # +1: the <|bos|> before each
    s = sorted(lengths)
    print(f"{len(docs):,} documents, median {s[len(s) // 2]} tokens, max {s[-1]} (with <|bos|>)")
    for T in args.T:
        whole = sum(n <= T + 1 for n in lengths) / len(lengths)
        share, seen = cropped_share(lengths, T, args.buffer, tuple(args.progress))
        print(f"T={T}: {whole:.1%} of documents fit a row whole; cropped {share:.1%} of document tokens")
        for rows, sh in seen:
            print(f"  after {rows:,} rows: cropped {sh:.1%}")


if __name__ == "__main__":
    main()
