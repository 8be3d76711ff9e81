"""Tokenizer faults (issue #12): damaged or hand-edited tokenizer files, bad special tokens, a vocabulary
larger than the text allows, bad tok-train / tok-eval flags, and replacing a saved tokenizer.

Every damaged file must raise TokenizerError with a one-line message naming the file (and the field),
never a KeyError / TypeError / OverflowError / binascii.Error from deep inside the loader or tiktoken."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re

import pytest

from mini_nanochat import tokenizer as T
from mini_nanochat.__main__ import main as cli
from mini_nanochat.common import UserError
from mini_nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, get_tokenizer, train_bpe

# A small deterministic text: enough pairs for a few hundred merges, trains in milliseconds.
_rng = random.Random(12)
_WORDS = ["the", "token", "merge", "byte", "pair", "rank", "model", "text", "id", "chunk", "안녕", "🙂", "42"]
TEXT = [" ".join(_rng.choice(_WORDS) + _rng.choice(["", "s", "ed", ","]) for _ in range(400)) for _ in range(5)]


@pytest.fixture(scope="module")
def small():
    return Tokenizer.train(TEXT, 320, backend="python")


@pytest.fixture
def saved(small, tmp_path):
    return small.save(tmp_path / "tok")


def _fail(directory) -> str:
    """Load `directory`, expect TokenizerError, return its message (checked to be one line)."""
    with pytest.raises(TokenizerError) as info:
        Tokenizer.load(directory)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---- special tokens in memory ------------------------------------------------------------------------

BYTES = {bytes([i]): i for i in range(256)}


@pytest.mark.parametrize("specials, why", [
    ({"<|bos|>": 5}, "merge rank"),                      # tiktoken accepts this and decodes id 5 as nothing
    ({"<|bos|>": 256, "<|eot|>": 256}, "share the id"),
    ({"<|bos|>": -1}, "0.."),
    ({"<|bos|>": 2**40}, "0.."),                         # OverflowError inside tiktoken before
    ({"<|bos|>": True}, "0.."),
    ({"<|bos|>": 256.0}, "0.."),
    ({"<|bos|>": 256, "": 257}, "non-empty"),
    ({"<|bos|>": 256, "\ud800": 257}, "UTF-8"),          # UnicodeEncodeError inside tiktoken before
    ({}, "non-empty"),
    ([("<|bos|>", 256)], "mapping"),
])
def test_bad_special_tokens_refused_by_constructor(specials, why):
    with pytest.raises(TokenizerError, match=why):
        Tokenizer(BYTES, specials)


def test_bad_pattern_and_bos_refused_by_constructor():
    with pytest.raises(TokenizerError, match="split pattern"):
        Tokenizer(BYTES, {"<|bos|>": 256}, pattern="((")
    with pytest.raises(TokenizerError, match="bos token"):
        Tokenizer(BYTES, {"<|bos|>": 256}, bos_token=["<|bos|>"])


# ---- tokenizer.json: every field, several ways -------------------------------------------------------

DELETE = object()
RAW = "__RAW__"  # the value is written into the JSON text as is: numbers JSON allows but Python cannot hold


def _spec(cfg, **changes):
    out = dict(cfg["special_tokens"])
    for k, v in changes.items():
        if v is DELETE:
            del out[k]
        else:
            out[k] = v
    return out


# (field, how, new value or a function of the saved config, a word the message must contain)
CASES = [
    ("format", "wrong", "pickle", "format"),
    ("format", "missing", DELETE, "format"),
    ("version", "newer", 2, "version"),
    ("version", "string", "1", "version"),
    ("version", "bool", True, "version"),
    ("version", "float", 1.0, "version"),
    ("version", "missing", DELETE, "version"),
    ("name", "missing", DELETE, "name"),
    ("name", "int", 5, "name"),
    ("name", "null", None, "name"),
    ("pattern", "missing", DELETE, "pattern"),
    ("pattern", "list", ["a"], "pattern"),
    ("pattern", "invalid regex", "((", "pattern"),
    ("pattern", "lone surrogate", "\ud800+", "pattern"),
    ("bos_token", "missing", DELETE, "bos_token"),
    ("bos_token", "unknown", "<|nope|>", "bos_token"),
    ("bos_token", "list", ["<|bos|>"], "bos_token"),
    ("vocab_size", "missing", DELETE, "vocab_size"),
    ("vocab_size", "wrong", 12345, "vocab_size"),
    ("vocab_size", "string", "320", "vocab_size"),
    ("vocab_size", "huge", 10**30, "vocab_size"),
    ("vocab_size", "over 4300 digits", (RAW, "9" * 5000), "tokenizer.json"),
    ("vocab_size", "overflowing float", (RAW, "1e400"), "vocab_size"),
    ("vocab_size", "NaN", (RAW, "NaN"), "vocab_size"),
    ("special_tokens", "missing", DELETE, "special_tokens"),
    ("special_tokens", "list", ["<|bos|>"], "special_tokens"),
    ("special_tokens", "string", "<|bos|>", "special_tokens"),
    ("special_tokens", "null", None, "special_tokens"),
    ("special_tokens", "empty", {}, "special_tokens"),
    ("special_tokens", "negative id", lambda c: _spec(c, **{"<|bos|>": -1}), "special_tokens"),
    ("special_tokens", "huge id", lambda c: _spec(c, **{"<|bos|>": 10**30}), "special_tokens"),
    ("special_tokens", "id past u32", lambda c: _spec(c, **{"<|bos|>": 2**32}), "special_tokens"),
    ("special_tokens", "id far past the end", lambda c: _spec(c, **{"<|bos|>": 10**6}), "special_tokens"),
    ("special_tokens", "id as string", lambda c: _spec(c, **{"<|bos|>": "311"}), "special_tokens"),
    ("special_tokens", "id as float", lambda c: _spec(c, **{"<|bos|>": 311.5}), "special_tokens"),
    ("special_tokens", "id as bool", lambda c: _spec(c, **{"<|bos|>": True}), "special_tokens"),
    ("special_tokens", "id null", lambda c: _spec(c, **{"<|bos|>": None}), "special_tokens"),
    ("special_tokens", "overflowing id", lambda c: _spec(c, **{"<|bos|>": (RAW, "1e400")}), "special_tokens"),
    ("special_tokens", "duplicate ids", lambda c: _spec(c, **{"<|user_end|>": c["special_tokens"]["<|bos|>"]}),
     "special_tokens"),
    ("special_tokens", "collides with a byte", lambda c: _spec(c, **{"<|bos|>": 65}), "special_tokens"),
    ("special_tokens", "collides with a merge", lambda c: _spec(c, **{"<|output_end|>": 300}), "special_tokens"),
    ("special_tokens", "required one missing", lambda c: _spec(c, **{"<|assistant_end|>": DELETE}),
     "special_tokens"),
    ("special_tokens", "empty name", lambda c: _spec(c, **{"<|output_end|>": DELETE, "": 319}), "special_tokens"),
    ("special_tokens", "gap before the last", lambda c: _spec(c, **{"<|output_end|>": 320}), "special_tokens"),
    ("ranks_file", "missing", DELETE, "ranks_file"),
    ("ranks_file", "outside the directory", "../ranks.tiktoken", "ranks_file"),
    ("ranks_file", "absolute", "/etc/passwd", "ranks_file"),
    ("ranks_file", "absent file", "other.tiktoken", "ranks_file"),
    ("ranks_file", "int", 5, "ranks_file"),
    ("ranks_file", "empty", "", "ranks_file"),
    ("ranks_sha256", "missing", DELETE, "ranks_sha256"),
    ("ranks_sha256", "wrong", "0" * 64, "ranks_sha256"),
    ("ranks_sha256", "not hex", "xyz", "ranks_sha256"),
    ("ranks_sha256", "int", 5, "ranks_sha256"),
    ("token_bytes_file", "missing", DELETE, "token_bytes_file"),
    ("token_bytes_file", "outside the directory", "../../token_bytes.json", "token_bytes_file"),
    ("token_bytes_file", "list", ["token_bytes.json"], "token_bytes_file"),
    ("token_bytes_sha256", "missing", DELETE, "token_bytes_sha256"),
    ("token_bytes_sha256", "wrong", "f" * 64, "token_bytes_sha256"),
    ("token_bytes_sha256", "null", None, "token_bytes_sha256"),
    ("meta", "int", 5, "meta"),
    ("meta", "list", [1], "meta"),
]


def _write_cfg(path, cfg) -> None:
    """Write `cfg` as JSON; (RAW, text) values anywhere are spliced in as raw JSON text."""
    raws = {}

    def walk(v):
        if isinstance(v, tuple) and v and v[0] == RAW:
            key = f"@@raw{len(raws)}@@"
            raws[f'"{key}"'] = v[1]
            return key
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    text = json.dumps(walk(cfg))
    for key, raw in raws.items():
        text = text.replace(key, raw)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("field, how, value, word", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_corrupted_tokenizer_json_field(saved, field, how, value, word):
    cfg_path = saved / "tokenizer.json"
    cfg = json.loads(cfg_path.read_text())
    if value is DELETE:
        del cfg[field]
    else:
        cfg[field] = value(cfg) if callable(value) else value
    _write_cfg(cfg_path, cfg)
    message = _fail(saved)
    assert str(saved) in message and word in message, message


@pytest.mark.parametrize("data", [b"", b"[]", b"null", b"42", b'"tokenizer"', b"[" * 100_000,
                                  b"{" + b'"a":{' * 100_000, b"\xff\xfe not utf-8", b'{"format": NaN}'])
def test_tokenizer_json_not_an_object(saved, data):
    (saved / "tokenizer.json").write_bytes(data)
    assert "tokenizer.json" in _fail(saved)


# ---- ranks.tiktoken and token_bytes.json, with their sha256 fixed so the content checks are reached ----

def _rewrite(saved, fname, data: bytes) -> None:
    """Replace a data file and update its sha256 in tokenizer.json: damage that only the content
    checks can find (someone edited the file and its hash, or a bug wrote a bad file)."""
    (saved / fname).write_bytes(data)
    cfg = json.loads((saved / "tokenizer.json").read_text())
    key = "ranks_sha256" if fname == "ranks.tiktoken" else "token_bytes_sha256"
    cfg[key] = hashlib.sha256(data).hexdigest()
    (saved / "tokenizer.json").write_text(json.dumps(cfg))


def _ranks_lines(saved) -> list[bytes]:
    return (saved / "ranks.tiktoken").read_bytes().splitlines()


RANKS_DAMAGE = {
    "not base64": lambda L: L[:300] + [b"!!!! 300"] + L[301:],
    "bad padding": lambda L: L[:300] + [b"YQ 300"] + L[301:],
    "negative rank": lambda L: L[:300] + [L[300].split()[0] + b" -300"] + L[301:],
    "huge rank": lambda L: L[:300] + [L[300].split()[0] + b" " + str(2**40).encode()] + L[301:],
    "rank over 4300 digits": lambda L: L[:300] + [L[300].split()[0] + b" " + b"9" * 5000] + L[301:],
    "float rank": lambda L: L[:300] + [L[300].split()[0] + b" 300.0"] + L[301:],
    "no rank": lambda L: L[:300] + [L[300].split()[0]] + L[301:],
    "three columns": lambda L: L[:300] + [L[300] + b" 7"] + L[301:],
    "token twice": lambda L: L[:300] + [L[299].split()[0] + b" 300"] + L[301:],
    "rank twice": lambda L: L[:300] + [L[300].split()[0] + b" 299"] + L[301:],
    "a byte missing": lambda L: L[:65] + L[66:],
    "last merge missing": lambda L: L[:-1],
    "empty": lambda L: [],
    "not utf-8": lambda L: L[:300] + [b"\xff\xfe\xfd 300"] + L[301:],
    "extra merge": lambda L: L + [b"eHh4eHh4 " + str(len(L)).encode()],
}


@pytest.mark.parametrize("damage", list(RANKS_DAMAGE))
def test_corrupted_ranks_content(saved, damage):
    lines = RANKS_DAMAGE[damage](_ranks_lines(saved))
    _rewrite(saved, "ranks.tiktoken", b"\n".join(lines) + b"\n")
    message = _fail(saved)
    assert "ranks.tiktoken" in message or "tokenizer.json" in message, message


@pytest.mark.parametrize("data", [b"", b"not json", b"{}", b"[1, 2, 3]", b"[" * 100_000, b"9" * 5000, b"1e400",
                                  b"\xff\xfe", b"null"])
def test_corrupted_token_bytes_content(saved, data):
    _rewrite(saved, "token_bytes.json", data)
    assert "token_bytes.json" in _fail(saved)


# ---- random damage: whatever happens, a TokenizerError or a tokenizer that loads ---------------------

@pytest.mark.parametrize("fname", ["tokenizer.json", "ranks.tiktoken", "token_bytes.json"])
def test_random_byte_damage_never_escapes_as_another_error(small, tmp_path, fname):
    """200 random edits per file (flips, deletions, insertions of bytes that matter to JSON and base64),
    the data files' sha256 fixed each time. The load may succeed (an edit in `name`, a harmless space)
    but must never raise anything but TokenizerError."""
    rng = random.Random(fname)
    original = small.save(tmp_path / "orig")
    pristine = (original / fname).read_bytes()
    alphabet = b'0123456789-+.eE"{}[],: \n\\/=AZaz\x00\xff'
    loaded = refused = 0
    for k in range(200):
        d = small.save(tmp_path / f"t{k}")
        data = bytearray(pristine)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.choice(["flip", "delete", "insert", "replace"])
            if op == "flip":
                data[i] ^= 1 << rng.randrange(8)
            elif op == "delete":
                del data[i:i + rng.randint(1, 8)]
            elif op == "insert":
                data[i:i] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            else:
                data[i] = rng.choice(alphabet)
        if fname == "tokenizer.json":
            (d / fname).write_bytes(bytes(data))
        else:
            _rewrite(d, fname, bytes(data))
        try:
            Tokenizer.load(d)
            loaded += 1
        except TokenizerError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 0


# ---- a vocabulary larger than the text allows ----------------------------------------------------------

@pytest.mark.parametrize("backend", ["fast", "python"])
def test_tok_train_vocab_too_large_says_how_many(base_dir, capsys, backend):
    """Before: both backends silently saved a 592-token tokenizer for --vocab-size 100000."""
    from mini_nanochat.dataset import iter_texts
    from mini_nanochat.stages import tok_train
    from mini_nanochat.tokenizer import iter_chunks_of_text

    name = f"too-big-{backend}"
    with pytest.raises(UserError) as info:
        tok_train.main(["--vocab-size", "100000", "--max-chars", "1000", "--name", name, "--backend", backend])
    text = list(iter_chunks_of_text(iter_texts("embedded", "train"), 1000))
    possible = len(train_bpe(text, 10**6))  # run to exhaustion: 256 bytes + every possible merge
    n_merges = possible - 256
    most = possible + len(SPECIAL_TOKENS)
    message = str(info.value)
    assert f"at most {most:,} tokens (256 bytes + {n_merges:,} merges + 9 special tokens)" in message
    assert f"--vocab-size {most}" in message and "--max-chars" in message
    assert not (base_dir / "tokenizer" / name).exists()  # nothing saved
    tok = tok_train.main(["--vocab-size", str(most), "--max-chars", "1000", "--name", name, "--backend", backend])
    assert tok.vocab_size == most
    # On the command line: one line, exit code 2.
    capsys.readouterr()
    assert cli(["tok-train", "--vocab-size", "100000", "--max-chars", "1000", "--name", name + "-cli"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mini-nanochat tok-train: --vocab-size 100,000")


# ---- flags ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--vocab-size", "264"], "--vocab-size must be at least 265"),
    (["--vocab-size", "0"], "--vocab-size"),
    (["--vocab-size", str(2**40)], "at most"),
    (["--max-chars", "0"], "--max-chars must be a positive"),
    (["--max-chars", "-5"], "--max-chars must be a positive"),
    (["--backend", "nope"], "--backend must be one of fast, python"),
    (["--name", "../escape"], "--name"),
    (["--name", ".."], "--name"),
    (["--name", "/tmp/abs"], "--name"),
    (["--name", "a/b"], "--name"),
    (["--name", ""], "--name"),
    (["--name", ".hidden"], "--name"),
    (["--name", "a\\b"], "--name"),
])
def test_tok_train_bad_flags(base_dir, capsys, argv, words):
    from mini_nanochat.stages import tok_train

    with pytest.raises(UserError, match=re.escape(words)):
        tok_train.main(argv)
    assert "training on" not in capsys.readouterr().out  # refused before any work
    assert cli(["tok-train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mini-nanochat tok-train: ")


@pytest.mark.parametrize("argv, words", [
    (["--name", "../x"], "--name"),
    (["--name", "/etc"], "--name"),
    (["--max-chars", "0"], "--max-chars"),
    (["--max-chars", "-1"], "--max-chars"),
    (["--compare", "gpt2,gpt5"], "gpt5"),
])
def test_tok_eval_bad_flags(base_dir, capsys, argv, words):
    from mini_nanochat.stages import tok_eval

    with pytest.raises(UserError, match=words):
        tok_eval.main(argv)
    assert cli(["tok-eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mini-nanochat tok-eval: ")


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", "", ".hidden"])
def test_get_tokenizer_refuses_paths(tmp_path, name):
    """get_tokenizer takes names from checkpoints too: a name never leads outside <base>/tokenizer."""
    with pytest.raises(TokenizerError, match="plain name"):
        get_tokenizer(name, base_dir=tmp_path)


# ---- replacing a saved tokenizer -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other():
    return Tokenizer.train(TEXT[:2], 320, backend="python")


def _leftovers(parent) -> list[str]:
    """Hidden entries a save left behind, except the names' lock files, which stay by design (removing a
    lock file while another process may be opening it would let two saves lock different files)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


@pytest.mark.parametrize("fail_at", ["ranks.tiktoken", "token_bytes.json", "tokenizer.json", "swap"])
def test_interrupted_save_keeps_the_old_tokenizer(small, other, tmp_path, monkeypatch, fail_at):
    """A save that dies part-way (disk full, Ctrl-C) leaves the old complete tokenizer in place, and no
    half-written directory. Before, the files were replaced one by one in place: a save interrupted after
    ranks.tiktoken left new ranks beside the old tokenizer.json, and neither tokenizer loaded."""
    d = small.save(tmp_path / "tok")
    real_write, real_rename = T._write_synced, os.rename

    def write(path, text):
        if path.name == fail_at:
            raise OSError(28, "No space left on device")
        real_write(path, text)

    def rename(src, dst):
        if fail_at == "swap" and str(src).endswith(".new"):
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(T, "_write_synced", write)
    monkeypatch.setattr(T.os, "rename", rename)
    with pytest.raises((OSError, KeyboardInterrupt)):
        other.save(d)
    monkeypatch.undo()
    assert Tokenizer.load(d).sha256() == small.sha256()
    assert _leftovers(tmp_path) == []


def test_save_replaces_and_cleans_up(small, other, tmp_path):
    d = small.save(tmp_path / "tok")
    (d / ".ranks.tiktoken.abc123.tmp").write_text("left by an interrupted save of older code")
    assert other.save(d) == d
    assert Tokenizer.load(d).sha256() == other.sha256()
    assert sorted(p.name for p in d.iterdir()) == ["ranks.tiktoken", "token_bytes.json", "tokenizer.json"]
    assert _leftovers(tmp_path) == []


def test_save_never_removes_other_files(small, other, tmp_path):
    """A save onto a directory that holds anything but a tokenizer's files is refused, untouched."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(TokenizerError, match="thesis.tex"):
        small.save(home)
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    d = small.save(tmp_path / "tok")
    (d / "notes").mkdir()
    with pytest.raises(TokenizerError, match="notes"):
        other.save(d)
    assert Tokenizer.load(d).sha256() == small.sha256()
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="not a directory"):
        small.save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_save_over_a_symlink_leaves_its_target_alone(small, other, tmp_path):
    target = small.save(tmp_path / "elsewhere")
    link = tmp_path / "tok"
    link.symlink_to(target, target_is_directory=True)
    other.save(link)
    assert not link.is_symlink() and Tokenizer.load(link).sha256() == other.sha256()
    assert Tokenizer.load(target).sha256() == small.sha256()


def test_save_refuses_what_load_would_refuse(tmp_path):
    gpt2_like = Tokenizer(BYTES, {"<|endoftext|>": 256}, bos_token="<|endoftext|>")
    with pytest.raises(TokenizerError, match="required special tokens"):
        gpt2_like.save(tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_tok_train_force_says_what_it_replaced(base_dir, capsys):
    from mini_nanochat.stages import tok_train

    first = tok_train.main(["--name", "replace-me", "--vocab-size", "400", "--max-chars", "20000"])
    capsys.readouterr()
    second = tok_train.main(["--name", "replace-me", "--vocab-size", "450", "--max-chars", "20000", "--force"])
    out = capsys.readouterr().out
    assert f"replaced the tokenizer at {base_dir / 'tokenizer' / 'replace-me'} (vocab 400, sha256 " \
           f"{first.sha256()[:16]}" in out
    assert get_tokenizer("replace-me").sha256() == second.sha256() != first.sha256()
    assert _leftovers(base_dir / "tokenizer") == []


def test_tok_train_refuses_to_replace_a_foreign_directory(base_dir, capsys):
    from mini_nanochat.stages import tok_train

    d = base_dir / "tokenizer" / "not-a-tokenizer"
    d.mkdir(parents=True)
    (d / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="data.csv"):
        tok_train.main(["--name", "not-a-tokenizer", "--vocab-size", "400", "--max-chars", "20000", "--force"])
    assert "training on" not in capsys.readouterr().out  # refused before training
    assert (d / "data.csv").read_text() == "a,b\n"


def test_tok_train_replaces_a_damaged_tokenizer_only_with_force(base_dir, capsys):
    from mini_nanochat.stages import tok_train

    argv = ["--name", "damaged", "--vocab-size", "400", "--max-chars", "20000"]
    tok_train.main(argv)
    d = base_dir / "tokenizer" / "damaged"
    (d / "ranks.tiktoken").write_text("garbage")
    with pytest.raises(UserError, match="--force"):
        tok_train.main(argv)
    capsys.readouterr()
    tok_train.main(argv + ["--force"])
    assert "replaced a damaged tokenizer" in capsys.readouterr().out
    Tokenizer.load(d)


def test_tok_train_reuses_a_tokenizer_saved_with_max_chars_0(base_dir, small, capsys):
    """Older tok-train wrote max_chars 0 for 'all the text'; the same flags now leave --max-chars out."""
    from mini_nanochat.stages import tok_train

    legacy = Tokenizer(small.mergeable_ranks, small.special_tokens,
                       meta={"requested_vocab_size": 320, "corpus": "embedded", "max_chars": 0})
    legacy.save(base_dir / "tokenizer" / "legacy")
    tok = tok_train.main(["--name", "legacy", "--vocab-size", "320"])
    assert "already trained" in capsys.readouterr().out and tok.sha256() == legacy.sha256()


def test_concurrent_save_is_refused_and_a_killed_save_is_cleaned(tmp_path):
    """While one process holds the name's lock, another save is refused at once (no interleaved swap);
    a `.new` folder left by a save killed mid-write is removed by the next save."""
    import fcntl

    from mini_nanochat.tokenizer import Tokenizer, TokenizerError

    ranks = {bytes([i]): i for i in range(256)}
    specials = {name: 256 + i for i, name in enumerate(Tokenizer.train(["ab ab ab"], 270).special_tokens)}
    tok = Tokenizer(ranks, specials, name="t")
    target = tmp_path / "t"
    stale = tmp_path / ".t.0123456789ab.new"
    stale.mkdir()
    (stale / "ranks.tiktoken").write_text("half")
    with open(tmp_path / ".t.lock", "a") as f:  # another process is saving right now
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(TokenizerError, match="another process is saving"):
            tok.save(target)
        fcntl.flock(f, fcntl.LOCK_UN)
    assert not target.exists() and stale.exists()  # nothing was touched while refused
    tok.save(target)
    assert Tokenizer.load(target).sha256() == tok.sha256()
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.lock", "t"]
