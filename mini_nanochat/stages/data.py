"""
Stage `data`: build a corpus as train/val parquet shards under `<base>/data/<corpus>/`.

    python -m mini_nanochat data                 # the embedded corpus (offline): SOTU + Shakespeare
    python -m mini_nanochat data --force         # rebuild even if complete
"""
from __future__ import annotations

import argparse
import time

from ..common import print0, print_config
from ..dataset import build_embedded_corpus, corpus_dir, manifest_is_complete


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="embedded", choices=["embedded"],
                   help="which corpus to build (remote corpora and your own folder come with Phase 5)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="fraction of works (speeches, plays) per source held out for validation")
    p.add_argument("--max-doc-chars", type=int, default=2000,
                   help="works are cut into documents of whole paragraphs up to this many characters")
    p.add_argument("--rows-per-shard", type=int, default=2048, help="documents per parquet shard")
    p.add_argument("--row-group-size", type=int, default=512, help="rows per parquet row group")
    p.add_argument("--seed", type=int, default=0, help="seed of the document shuffle")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete corpus exists")
    return p


def _print_stats(manifest: dict) -> None:
    print0(f"{'split':<6} {'works':>6} {'docs':>7} {'MB':>7} {'median chars':>13}   by source")
    for split in ("train", "val"):
        s = manifest[split]
        src = ", ".join(f"{k}: {v['works']} works / {v['documents']} docs / {v['bytes'] / 1e6:.2f} MB"
                        for k, v in s["by_source"].items())
        print0(f"{split:<6} {s['works']:>6} {s['documents']:>7} {s['bytes'] / 1e6:>7.2f} "
               f"{s['doc_chars_median']:>13}   {src}")
    d = manifest["dedup"]
    print0(f"dedup: {d['train_duplicates_dropped']} duplicate train docs, {d['val_duplicates_dropped']} duplicate "
           f"val docs, {d['train_docs_equal_to_val_dropped']} train docs equal to a val doc dropped; "
           f"train/val overlap by sha256: {d['train_val_overlap']}")
    print0(f"validation works: {', '.join(manifest['val_works'])}")


def run(args: argparse.Namespace) -> dict:
    out = corpus_dir(args.corpus)
    config = {"corpus": args.corpus, "output": str(out), "val_fraction": args.val_fraction,
              "max_doc_chars": args.max_doc_chars, "rows_per_shard": args.rows_per_shard,
              "row_group_size": args.row_group_size, "seed": args.seed, "force": args.force}
    print_config("data", config)
    if not 0.0 <= args.val_fraction < 0.5:
        raise SystemExit(f"--val-fraction must be in [0, 0.5), got {args.val_fraction}")
    if args.max_doc_chars < 100:
        raise SystemExit(f"--max-doc-chars must be >= 100, got {args.max_doc_chars}")
    existing = manifest_is_complete(out)
    wanted = {k: config[k] for k in ("val_fraction", "max_doc_chars", "rows_per_shard", "row_group_size", "seed")}
    if existing and not args.force:
        if existing["config"] != wanted:
            raise SystemExit(f"{out} holds a corpus built with {existing['config']}, not {wanted}; "
                             f"pass --force to rebuild it")
        print0(f"corpus already complete at {out} (use --force to rebuild)")
        _print_stats(existing)
        return existing
    t0 = time.time()
    manifest = build_embedded_corpus(out, progress=True, **wanted)
    print0(f"built {len(manifest['shards'])} shards in {time.time() - t0:.1f}s at {out}")
    _print_stats(manifest)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
