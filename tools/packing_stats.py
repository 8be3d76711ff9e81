"""
Measure three ways of turning documents into fixed-length training rows, on the same tokens:

  best-fit   nanochat's BOS-aligned best-fit packing with cropping (our DataLoader)
  concat     concatenate [BOS]+doc streams and cut every T+1 tokens (GPT-2 / nanoGPT style)
  padding    one document per row, cropped to T+1, the rest padded

For each: utilisation (real tokens / row positions), cropped fraction (document tokens thrown away),
and "orphan" tokens (tokens in a row that does not contain their document's start, i.e. that are
predicted without the beginning of their own document in context).

    python tools/packing_stats.py --T 256 512 --max-doc-chars 1000 2000 --batches 200
"""
from __future__ import annotations

import argparse
import os
import tempfile


def measure(tok, T: int, B: int, batches: int) -> dict[str, dict[str, float]]:
    from mini_nanochat.dataloader import DataLoader
    from mini_nanochat.dataset import iter_texts

    loader = DataLoader(tok, B, T, prefetch=0)
    for _ in range(batches):
        next(loader)
    s = loader.stats
    best = {"utilisation": s.utilisation, "cropped": s.cropped_fraction, "orphan": 0.0, "docs": s.docs}
    loader.close()

    docs = tok.encode_batch(list(iter_texts("embedded", "train")), prepend=tok.bos_id)
    budget = batches * B * (T + 1)
    # concat: rows cut from one stream; a row's leading tokens before its first BOS are orphans
    stream_len, orphan, n_docs = 0, 0, 0
    for d in docs:
        n_docs += 1
        start_row = stream_len // (T + 1)
        end = stream_len + len(d)
        for r in range(start_row + 1, (end - 1) // (T + 1) + 1):  # rows that begin inside this document
            orphan += min(end, (r + 1) * (T + 1)) - r * (T + 1)
        stream_len = end
        if stream_len >= budget:
            break
    concat = {"utilisation": 1.0, "cropped": 0.0, "orphan": orphan / stream_len, "docs": n_docs}
    # padding: one document per row
    real = taken = 0
    for d in docs[: batches * B]:
        real += min(len(d), T + 1)
        taken += len(d)
    pad = {"utilisation": real / (batches * B * (T + 1)), "cropped": 1 - real / taken, "orphan": 0.0,
           "docs": batches * B}
    return {"best-fit": best, "concat": concat, "padding": pad}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[256, 512], help="sequence lengths")
    p.add_argument("--B", type=int, default=8, help="rows per batch")
    p.add_argument("--max-doc-chars", type=int, nargs="+", default=[1000, 2000], help="corpus document sizes")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--batches", type=int, default=200)
    args = p.parse_args()

    from mini_nanochat.stages import data
    from mini_nanochat.dataset import iter_texts
    from mini_nanochat.tokenizer import Tokenizer

    print("| doc chars | T | strategy | utilisation | cropped | orphan tokens | docs used |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for mdc in args.max_doc_chars:
        with tempfile.TemporaryDirectory() as home:
            os.environ["MINI_NANOCHAT_HOME"] = home
            data.main(["--max-doc-chars", str(mdc)])
            tok = Tokenizer.train(list(iter_texts("embedded", "train")), args.vocab_size)
            for T in args.T:
                for name, r in measure(tok, T, args.B, args.batches).items():
                    print(f"| {mdc} | {T} | {name} | {r['utilisation']:.3f} | {r['cropped']:.3f} | "
                          f"{r['orphan']:.3f} | {r['docs']} |", flush=True)


if __name__ == "__main__":
    main()
