"""The embedded corpus: document splitting, the train/val split, shard format, and stage behaviour."""
from __future__ import annotations

import hashlib
import json
import random

import pyarrow.parquet as pq
import pytest

from mini_nanochat.dataset import (Work, corpus_dir, iter_texts, list_shards, manifest_is_complete,
                                   split_passages, split_works)
from mini_nanochat.stages import data


def _h(s):
    return hashlib.sha256(s.encode()).hexdigest()


@pytest.mark.parametrize("seed", range(20))
def test_split_passages_keeps_all_text_and_respects_limit(seed):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "x" * rng.randint(1, 300), "δέλτα", "🙂"]
    paras = ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
                       for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 15))]
    text = "\n\n".join(paras)
    limit = rng.choice([100, 200, 500])
    passages = split_passages(text, limit)
    assert all(0 < len(p) <= limit for p in passages)
    # Nothing lost or reordered: the non-whitespace characters are the same sequence.
    squash = lambda s: "".join(s.split())  # noqa: E731
    assert squash("".join(passages)) == squash(text)


def test_split_passages_groups_whole_paragraphs():
    assert split_passages("a b\n\nc d\n\ne f", 8) == ["a b\n\nc d", "e f"]
    assert split_passages("\n\n  \n\n", 100) == []
    assert split_passages("one\r\ntwo\r\n\r\nthree", 100) == ["one\ntwo\n\nthree"]


def test_split_works_is_stratified_and_order_independent():
    works = [Work("a", f"a/{i}", "t") for i in range(40)] + [Work("b", f"b/{i}", "t") for i in range(3)]
    train, val = split_works(works, 0.05)
    assert {w.work_id for w in train}.isdisjoint({w.work_id for w in val})
    assert sum(w.source == "a" for w in val) == 2 and sum(w.source == "b" for w in val) == 1
    train2, val2 = split_works(list(reversed(works)), 0.05)
    assert [w.work_id for w in val2] == [w.work_id for w in val]


def test_embedded_corpus_shards(base_dir):
    manifest = manifest_is_complete(corpus_dir("embedded"))
    assert manifest is not None
    for split in ("train", "val"):
        for path in list_shards("embedded", split):
            pf = pq.ParquetFile(path)
            assert pf.schema_arrow.names == ["text"]
            assert str(pf.schema_arrow.field("text").type) == "string"
    train, val = list(iter_texts("embedded", "train")), list(iter_texts("embedded", "val"))
    assert len(train) == manifest["train"]["documents"] and len(val) == manifest["val"]["documents"]
    # Real text from both sources, of meaningful size.
    assert manifest["train"]["bytes"] > 14e6 and manifest["val"]["bytes"] > 0.5e6
    assert set(manifest["train"]["by_source"]) == {"sotu", "shakespeare"} == set(manifest["val"]["by_source"])
    # Validation never overlaps training, by content hash; no duplicates within a split.
    th, vh = {_h(t) for t in train}, {_h(t) for t in val}
    assert th.isdisjoint(vh) and len(th) == len(train) and len(vh) == len(val)
    # No First-Folio near-duplicates, and the held-out works are not in train.
    assert not any("_gut_f" in w for w in manifest["val_works"])
    assert all(len(t) <= manifest["config"]["max_doc_chars"] for t in train + val)
    # Shard hashes in the manifest are real.
    for s in manifest["shards"]:
        assert hashlib.sha256((corpus_dir("embedded") / s["file"]).read_bytes()).hexdigest() == s["sha256"]


def test_validation_works_absent_from_train(base_dir):
    """A distinctive line of every validation work never appears in any train document."""
    from mini_nanochat.dataset import EMBEDDED_SOURCES

    manifest = manifest_is_complete(corpus_dir("embedded"))
    val_ids = set(manifest["val_works"])
    train_blob = "\n".join(iter_texts("embedded", "train"))
    for make in EMBEDDED_SOURCES.values():
        for w in make():
            if w.work_id in val_ids:
                lines = sorted((ln.strip() for ln in w.text.splitlines()), key=len)
                assert lines[-1] and lines[-1] not in train_blob, w.work_id


def test_data_stage_is_deterministic_and_skips_when_complete(base_dir, tmp_path, monkeypatch, capsys):
    m1 = manifest_is_complete(corpus_dir("embedded"))
    again = data.main([])  # complete: skipped, same manifest
    assert again == m1
    assert "already complete" in capsys.readouterr().out
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path))
    m2 = data.main([])  # a fresh build elsewhere gives byte-identical shards
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m1["shards"]]


def test_data_stage_refuses_changed_config_and_rebuilds_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path))
    data.main(["--max-doc-chars", "4000", "--rows-per-shard", "100000"])
    with pytest.raises(SystemExit, match="--force"):
        data.main([])  # different config: refused, nothing overwritten
    assert json.loads((corpus_dir("embedded") / "manifest.json").read_text())["config"]["max_doc_chars"] == 4000
    (corpus_dir("embedded") / "manifest.json").unlink()  # simulate an interrupted build
    m = data.main([])
    assert m["config"]["max_doc_chars"] == 1000 and manifest_is_complete(corpus_dir("embedded"))
    with pytest.raises(SystemExit):
        data.main(["--val-fraction", "0.9", "--force"])


def test_missing_corpus_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="mini_nanochat data"):
        list(iter_texts("embedded", "train"))


def test_folder_of_mixed_files_becomes_shards(tmp_path, monkeypatch):
    src = tmp_path / "my texts"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        (src / f"story{i}.txt").write_text(f"Story {i}, first paragraph.\n\nSecond paragraph of story {i}.\n")
    with open(src / "sub" / "notes.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"text": f"note number {i}: " + "lorem ipsum " * i}) + "\n")
        f.write("\n")  # blank lines are ignored
    (src / "ignored.md").write_text("not a corpus file")
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path / "home"))
    m = data.main(["--corpus", str(src), "--val-fraction", "0.1"])
    assert m["corpus"] == "my_texts" and m["train"]["works"] + m["val"]["works"] == 23
    assert set(m["train"]["by_source"]) == {"txt", "jsonl"}
    train, val = list(iter_texts("my_texts", "train")), list(iter_texts("my_texts", "val"))
    everything = sorted(train + val)
    assert "Story 0, first paragraph.\n\nSecond paragraph of story 0." in everything
    assert any(t.startswith("note number 19: lorem ipsum") for t in everything)
    assert not any("not a corpus file" in t for t in everything)
    assert {_h(t) for t in train}.isdisjoint({_h(t) for t in val}) and val
    # Unchanged folder: skipped. A changed folder is refused without --force, rebuilt with it.
    assert data.main(["--corpus", str(src), "--val-fraction", "0.1"]) == m
    (src / "story9.txt").write_text("A new story.")
    with pytest.raises(SystemExit, match="--force"):
        data.main(["--corpus", str(src), "--val-fraction", "0.1"])
    m2 = data.main(["--corpus", str(src), "--val-fraction", "0.1", "--force"])
    assert m2["train"]["works"] + m2["val"]["works"] == 24


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{broken\n', "notes.jsonl:2: not valid JSON"),
    ('{"text": 5}\n', "string field 'text'"),
])
def test_folder_bad_input_clear_error(tmp_path, monkeypatch, content, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("fine")
    (src / "notes.jsonl").write_text(content)
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit, match=message):
        data.main(["--corpus", str(src)])


def test_unknown_corpus_and_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit, match="unknown corpus"):
        data.main(["--corpus", "no-such-corpus"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no .txt"):
        data.main(["--corpus", str(tmp_path / "empty")])
