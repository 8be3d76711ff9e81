"""
Stage `data`: build or fetch a corpus as train/val parquet shards under `<base>/data/<corpus>/`.

    python -m mini_nanochat data                             # the embedded corpus (offline): SOTU + Shakespeare
    python -m mini_nanochat data --force                     # rebuild even if complete
    python -m mini_nanochat data --corpus fineweb-edu -n 8   # 8 train shards + the val shard (needs network)
    python -m mini_nanochat data --corpus climbmix -n 8
    python -m mini_nanochat data --corpus ~/my_texts         # your own .txt / .jsonl / .parquet files
"""
from __future__ import annotations

import argparse
import time

import hashlib
import re
from pathlib import Path

from ..common import print0, print_config
from ..dataset import (CORPORA, REMOTE_CORPORA, build_corpus, build_embedded_corpus, corpus_dir,
                       download_remote_corpus, iter_folder_works, manifest_is_complete)
from ..download import DownloadError


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="embedded",
                   help="a corpus name (" + ", ".join(CORPORA) + ") or the path of a folder of "
                        ".txt / .jsonl / .parquet files")
    p.add_argument("-n", "--num-shards", type=int, default=8,
                   help="remote corpora: number of train shards to fetch (-1 = all); the val shard is always fetched")
    p.add_argument("--base-url", default=None, help="remote corpora: a mirror to fetch the shards from")
    p.add_argument("--workers", type=int, default=4, help="remote corpora: parallel downloads")
    p.add_argument("--name", default=None, help="folder corpora: the corpus name (default: the folder's name)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="fraction of works (speeches, plays) per source held out for validation")
    p.add_argument("--max-doc-chars", type=int, default=1000,
                   help="works are cut into documents of whole paragraphs up to this many characters "
                        "(~250 tokens: little cropping at T=512; see docs/adrs/0008-packing.md)")
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


def _folder_fingerprint(folder: Path) -> str:
    """Changes when any file under `folder` is added, removed, resized or touched."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _run_remote(args: argparse.Namespace) -> dict:
    out = corpus_dir(args.corpus)
    print_config("data", {"corpus": args.corpus, "output": str(out), "num_shards": args.num_shards,
                          "base_url": args.base_url or REMOTE_CORPORA[args.corpus].base_url,
                          "workers": args.workers})
    try:
        manifest = download_remote_corpus(args.corpus, args.num_shards, out, base_url=args.base_url,
                                          workers=args.workers)
    except DownloadError as e:
        raise SystemExit(f"data: {e}") from None
    total = sum(s["bytes"] for s in manifest["shards"])
    print0(f"{args.corpus}: {manifest['num_train_shards']} train shards + 1 val shard, {total / 1e6:.1f} MB at {out}")
    return manifest


def run(args: argparse.Namespace) -> dict:
    if args.corpus in REMOTE_CORPORA:
        return _run_remote(args)
    folder = None
    if args.corpus != "embedded":
        folder = Path(args.corpus).expanduser()
        if not folder.is_dir():
            raise SystemExit(f"data: unknown corpus {args.corpus!r}: not one of {list(CORPORA)} "
                             f"and not a directory")
        folder = folder.resolve()
    name = "embedded" if folder is None else (args.name or re.sub(r"[^A-Za-z0-9._-]+", "_", folder.name))
    out = corpus_dir(name)
    config = {"corpus": name, "output": str(out), "val_fraction": args.val_fraction,
              "max_doc_chars": args.max_doc_chars, "rows_per_shard": args.rows_per_shard,
              "row_group_size": args.row_group_size, "seed": args.seed, "force": args.force}
    print_config("data", config)
    if not 0.0 <= args.val_fraction < 0.5:
        raise SystemExit(f"--val-fraction must be in [0, 0.5), got {args.val_fraction}")
    if args.max_doc_chars < 100:
        raise SystemExit(f"--max-doc-chars must be >= 100, got {args.max_doc_chars}")
    if folder is not None:
        config["source"] = str(folder)
    existing = manifest_is_complete(out)
    wanted = {k: config[k] for k in ("val_fraction", "max_doc_chars", "rows_per_shard", "row_group_size", "seed")}
    if folder is not None:
        wanted |= {"source": str(folder), "fingerprint": _folder_fingerprint(folder)}
    if existing and not args.force:
        if existing["config"] != wanted:
            raise SystemExit(f"{out} holds a corpus built with {existing['config']}, not {wanted}; "
                             f"pass --force to rebuild it")
        print0(f"corpus already complete at {out} (use --force to rebuild)")
        _print_stats(existing)
        return existing
    t0 = time.time()
    if folder is None:
        manifest = build_embedded_corpus(out, progress=True, **wanted)
    else:
        try:
            works = list(iter_folder_works(folder))
            build_kwargs = {k: v for k, v in wanted.items() if k not in ("source", "fingerprint")}
            manifest = build_corpus(name, works, out, progress=True, **build_kwargs)
        except ValueError as e:
            raise SystemExit(f"data: {e}") from None
        manifest["config"] = wanted  # remember the source and its fingerprint for the skip check
        from ..common import write_json_atomic

        write_json_atomic(out / "manifest.json", manifest)
    print0(f"built {len(manifest['shards'])} shards in {time.time() - t0:.1f}s at {out}")
    _print_stats(manifest)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
