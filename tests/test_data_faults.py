"""Issue #12, the data side: each test injects one fault and checks that it is refused or named, and that
nothing the user had is lost: corpus names that are paths, bad numbers with --force, a build that fails
half-way, a folder without text, damaged shards, and the permissions of what is written."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from mini_nanochat import dataset
from mini_nanochat.__main__ import main as cli
from mini_nanochat.common import UserError
from mini_nanochat.dataset import (CorpusError, CorpusNotFoundError, Work, build_corpus, corpus_dir, iter_texts,
                                   list_shards, verify_corpus)
from mini_nanochat.stages import data

SMALL = ["--rows-per-shard", "8", "--row-group-size", "4", "--val-fraction", "0.2"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private base directory holding a sentinel file that nothing may ever remove."""
    base = tmp_path / "home"
    (base / "tokenizer").mkdir(parents=True)
    (base / "tokenizer" / "keep.txt").write_text("a trained tokenizer")
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(base))
    return base


@pytest.fixture
def texts(tmp_path):
    """A folder of 10 small .txt works."""
    src = tmp_path / "texts"
    src.mkdir()
    for i in range(10):
        (src / f"w{i}.txt").write_text("\n\n".join(f"Work {i}, paragraph {j}: " + "words " * (j + i)
                                                   for j in range(6)))
    return src


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in (base / "data").iterdir() if ".build-" in p.name or ".old-" in p.name)


# ---- 1. a corpus name is a plain name, never a path -----------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "/tmp/x", "a b", "~x/y"])
def test_name_that_is_a_path_is_refused_and_nothing_removed(home, texts, name):
    data.main(["--corpus", str(texts), "--name", "mine", *SMALL])
    before = snapshot(home)
    with pytest.raises(UserError, match="not a corpus name"):
        data.main(["--corpus", str(texts), "--name", name, "--force", *SMALL])
    assert snapshot(home) == before  # `--name ..` once removed the whole base directory


def test_bad_name_through_the_cli_is_one_line_exit_2(home, texts, capsys):
    assert cli(["data", "--corpus", str(texts), "--name", "..", "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mini-nanochat data: '..' is not a corpus name") and "\n" not in err
    assert (home / "tokenizer" / "keep.txt").exists()


def test_folder_name_that_cannot_be_a_corpus_name(home, tmp_path):
    for bad in ("embedded", "climbmix"):  # a folder named like a built-in corpus would replace it
        (tmp_path / bad).mkdir()
        (tmp_path / bad / "a.txt").write_text("one")
        with pytest.raises(UserError, match="built-in corpus"):
            data.main(["--corpus", str(tmp_path / bad)])
    with pytest.raises(UserError, match="--name names a corpus built from a folder"):
        data.main(["--name", "x"])


def test_source_folder_inside_the_corpus_folder_is_refused(home, texts):
    data.main(["--corpus", str(texts), *SMALL])
    inner = corpus_dir("texts") / "mine"
    inner.mkdir()
    for i in range(3):
        (inner / f"{i}.txt").write_text(f"text {i}")
    with pytest.raises(UserError, match="inside the corpus folder"):
        data.main(["--corpus", str(inner), "--name", "texts", "--force"])
    assert (inner / "0.txt").exists()


@pytest.mark.parametrize("corpus", ["..", ".", "a b"])
def test_other_stages_corpus_names_are_checked(home, corpus):
    with pytest.raises(UserError, match="not a corpus name"):
        list_shards(corpus, "train")
    with pytest.raises(UserError, match="not a corpus name"):
        list(iter_texts(corpus, "val"))


def test_corpus_path_is_read_in_place_or_mapped_to_its_build(home, texts, tmp_path):
    data.main(["--corpus", str(texts), *SMALL])
    built = corpus_dir("texts")
    # The folder of the user's own files names the corpus `data --corpus PATH` built from it.
    assert list_shards(str(texts), "train") == list_shards("texts", "train")
    # A built corpus folder elsewhere is read where it is.
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    assert list(iter_texts(str(copy), "val")) == list(iter_texts("texts", "val"))
    assert verify_corpus(str(copy))["corpus"] == "texts"


def test_replacing_outside_the_data_folder_is_refused(home, tmp_path):
    out = tmp_path / "elsewhere"
    out.mkdir()
    (out / "precious.txt").write_text("not a corpus")
    works = [Work("txt", f"w{i}", f"text number {i}") for i in range(4)]
    with pytest.raises(ValueError, match="refusing to replace"):
        build_corpus("x", works, out, val_fraction=0.25, progress=False)
    assert (out / "precious.txt").read_text() == "not a corpus"
    fresh = build_corpus("x", works, tmp_path / "new", val_fraction=0.25, progress=False)  # a new folder is fine
    assert fresh["train"]["documents"] == 3


# ---- 2. every flag is checked first; a corpus is replaced only by a complete one ------------------


@pytest.mark.parametrize("flags, message", [
    (["--rows-per-shard", "0"], "--rows-per-shard must be >= 1"),
    (["--rows-per-shard", "-5"], "--rows-per-shard must be >= 1"),
    (["--row-group-size", "0"], "--row-group-size must be >= 1"),
    (["--max-doc-chars", "10"], "--max-doc-chars must be >= 100"),
    (["--val-fraction", "0"], "--val-fraction must be in"),
    (["--val-fraction", "0.5"], "--val-fraction must be in"),
])
def test_bad_numbers_with_force_leave_the_corpus_alone(home, flags, message):
    data.main(["--rows-per-shard", "100000"])
    before = snapshot(corpus_dir("embedded"))
    with pytest.raises(UserError, match=message):
        data.main(["--force", *flags])
    assert snapshot(corpus_dir("embedded")) == before  # `--force --rows-per-shard 0` once deleted it
    verify_corpus("embedded")


@pytest.mark.parametrize("flags, message", [
    (["-n", "0"], "-n/--num-shards must be >= 1"),
    (["-n", "-2"], "-n/--num-shards must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_bad_remote_numbers_are_refused(home, flags, message):
    with pytest.raises(UserError, match=message):
        data.main(["--corpus", "climbmix", "--base-url", "http://127.0.0.1:9", *flags])
    assert not corpus_dir("climbmix").exists()


def test_build_failing_half_way_keeps_the_old_corpus(home, texts, monkeypatch):
    data.main(["--corpus", str(texts), *SMALL])
    before = snapshot(corpus_dir("texts"))
    real, calls = dataset.write_shards, []

    def fail_on_val(texts_, directory, *args):
        calls.append(directory.name)
        if directory.name == "val":
            raise OSError(28, "No space left on device")
        return real(texts_, directory, *args)

    monkeypatch.setattr(dataset, "write_shards", fail_on_val)
    with pytest.raises(OSError, match="No space left"):
        data.main(["--corpus", str(texts), "--force", "--max-doc-chars", "200", *SMALL])
    assert calls == ["train", "val"]  # it failed after writing new train shards...
    assert snapshot(corpus_dir("texts")) == before  # ...and the old corpus is whole
    verify_corpus("texts")
    assert leftovers(home) == []


def test_rebuild_swaps_in_and_clears_leftovers(home, texts):
    data.main(["--corpus", str(texts), *SMALL])
    (home / "data" / ".texts.build-k1ll3d_x").mkdir()  # what a killed build leaves behind
    m = data.main(["--corpus", str(texts), "--force", "--max-doc-chars", "200", *SMALL])
    assert m["config"]["max_doc_chars"] == 200 and verify_corpus("texts") == m
    assert leftovers(home) == []
    assert sorted(p.name for p in corpus_dir("texts").iterdir()) == ["manifest.json", "train", "val"]


# ---- 3. a folder without text is refused ----------------------------------------------------------


def test_folder_of_empty_files_is_refused(home, tmp_path, capsys):
    src = tmp_path / "blank"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_text("" if i else "  \n\n \n")
    (src / "rows.jsonl").write_text('{"text": ""}\n{"text": "   "}\n')
    assert cli(["data", "--corpus", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"{src} holds too little text" in err and "1 .jsonl, 3 .txt" in err and "0 work(s) of text" in err
    assert "built 0 shards" not in capsys.readouterr().out
    assert not corpus_dir("blank").exists()


def test_folder_whose_train_works_repeat_the_val_work_is_refused(home, tmp_path):
    src = tmp_path / "twins"
    src.mkdir()
    for i in range(2):
        (src / f"{i}.txt").write_text("the same text in both files")
    with pytest.raises(UserError, match="no train documents left"):
        data.main(["--corpus", str(src)])
    assert not corpus_dir("twins").exists()


# ---- 4. a damaged shard is named before anything trains on it -------------------------------------


def first_train_shard(name: str) -> Path:
    return corpus_dir(name) / json.loads((corpus_dir(name) / "manifest.json").read_text())["shards"][0]["file"]


def test_truncated_shard_is_named_by_list_shards_and_the_loader(home, texts):
    from mini_nanochat.dataloader import DataLoader
    from mini_nanochat.tokenizer import Tokenizer

    data.main(["--corpus", str(texts), *SMALL])
    shard = first_train_shard("texts")
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CorpusError, match=f"shard {shard} has .* bytes, its manifest records"):
        list_shards("texts", "train")
    tok = Tokenizer.train(list(iter_texts("texts", "val")), 300)
    with pytest.raises(CorpusError, match=str(shard)):
        DataLoader(tok, 2, 16, corpus="texts", prefetch=0)
    with pytest.raises(CorpusError, match="--force"):
        verify_corpus("texts")


def test_damaged_page_behind_an_intact_footer_is_named_by_the_loader(base_dir, tmp_path, monkeypatch):
    """Zeros written over the middle of a shard: same size, intact footer, so only reading the row group
    finds it. The loader names the shard and the row group (a CorpusError, one line on the CLI) instead
    of pyarrow's bare error."""
    from mini_nanochat.dataloader import DataLoader
    from mini_nanochat.tokenizer import Tokenizer

    home = tmp_path / "home"
    shutil.copytree(base_dir / "data", home / "data")
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(home))
    shard = first_train_shard("embedded")
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 4096] = bytes(4096)
    shard.write_bytes(bytes(raw))
    tok = Tokenizer.train(list(iter_texts("embedded", "val"))[:200], 300)
    loader = DataLoader(tok, 4, 64, prefetch=0, shuffle=False)
    with pytest.raises(CorpusError, match=rf"{shard}: row group \d+ cannot be read"):
        for _ in range(5000):
            next(loader)


def test_shard_with_a_broken_footer_is_named(home, texts):
    data.main(["--corpus", str(texts), *SMALL])
    shard = first_train_shard("texts")
    raw = bytearray(shard.read_bytes())
    raw[-4:] = b"XXXX"  # same size, parquet magic gone
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorpusError, match=f"shard {shard} is not a readable parquet file"):
        list(iter_texts("texts", "train"))


def test_shard_with_flipped_bytes_fails_verify_and_data_rebuilds_it(home, texts, capsys):
    m = data.main(["--corpus", str(texts), *SMALL])
    shard = first_train_shard("texts")
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # same size, footer intact: only the sha256 tells
    shard.write_bytes(bytes(raw))
    list_shards("texts", "train")  # the cheap check cannot see it...
    with pytest.raises(CorpusError, match=f"shard {shard} does not have the sha256"):
        verify_corpus("texts")  # ...the full one does
    assert data.main(["--corpus", str(texts), *SMALL]) == m  # the data stage finds it and rebuilds
    assert "does not have the sha256" in capsys.readouterr().out
    verify_corpus("texts")


def test_missing_shard_and_damaged_manifest_are_named(home, texts):
    data.main(["--corpus", str(texts), *SMALL])
    shard = first_train_shard("texts")
    shard.unlink()
    with pytest.raises(CorpusError, match=f"shard {shard} is missing"):
        list_shards("texts", "train")
    (corpus_dir("texts") / "manifest.json").write_text("{not json")
    with pytest.raises(CorpusError, match="manifest.json is damaged"):
        list_shards("texts", "val")
    with pytest.raises(CorpusNotFoundError, match="data --corpus never-built"):
        verify_corpus("never-built")


# ---- 6. what is written gets the usual permissions ------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_corpus_files_get_the_usual_permissions(home, texts, umask):
    old = os.umask(umask)
    try:
        data.main(["--corpus", str(texts), *SMALL])
        data.main(["--corpus", str(texts), "--force", *SMALL])  # the swapped-in build too
    finally:
        os.umask(old)
    root = corpus_dir("texts")
    for path in [root, *root.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_base_train_checks_the_corpus_before_training(base_dir, tmp_path, monkeypatch, capsys):
    """One flipped byte in a shard (same size, intact footer): base-train refuses to start, naming the
    shard, before it builds anything (its sha256 no longer matches the manifest)."""
    from mini_nanochat.stages import tok_train

    home = tmp_path / "home"
    shutil.copytree(base_dir / "data", home / "data")
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(home))
    tok_train.main(["--name", "t", "--vocab-size", "300", "--max-chars", "20000"])
    shard = first_train_shard("embedded")
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    code = cli(["base-train", "--depth", "1", "--max-seq-len", "16", "--tokenizer", "t", "--num-iterations", "1",
                "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and str(shard) in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
