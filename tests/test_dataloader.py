"""The packing loader: BOS alignment, document order, train/val separation, determinism, exact resume
(mid-epoch and across epochs, threaded and synchronous), rank disjointness, the validation stream, and
bit-identity with the first, plain-scan version of the packing loop (`reference_generate` below)."""
from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
import torch

from mini_nanochat.dataloader import DataLoader, PackingStats, _Cursor, build_val_loader
from mini_nanochat.dataset import iter_texts
from mini_nanochat.stages import data
from mini_nanochat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(sample_2mb):
    return Tokenizer.train(sample_2mb, 512)


@pytest.fixture(scope="module")
def small_corpus(base_dir, tmp_path_factory):
    """A corpus 'small' of 80 jsonl documents of varied length, in many small row groups, so that one
    epoch is a few batches and there are enough row groups for 2 ranks."""
    folder = tmp_path_factory.mktemp("small_src")
    rng = random.Random(0)
    words = "the of and to a in that is was he for it with as his on be at by".split()
    with open(folder / "docs.jsonl", "w") as f:
        for i in range(80):
            text = f"doc{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))
            f.write(json.dumps({"text": text}) + "\n")
    data.main(["--corpus", str(folder), "--name", "small", "--rows-per-shard", "16", "--row-group-size", "4",
               "--val-fraction", "0.1"])
    return "small"


def reference_generate(loader: DataLoader, start: _Cursor) -> Iterator[tuple[torch.Tensor, dict, PackingStats]]:
    """The packing loop as first written (2026-11-25), kept as the slow reference the loader must match.

    For every document placed it scans the whole buffer for the largest document that fits (ties: the
    earliest), or the shortest to crop (ties: the earliest), and builds one torch.tensor per document.
    It reads the corpus through its own copy of the document stream (epoch order, rank stride) and
    tokenizes with `encode_batch`, so it depends on the loader only for its settings and open shards.
    Yields what `DataLoader._generate` yields: (rows (B, T+1), state after the batch, stats delta);
    `benchmarks/bench_dataloader.py` imports it to time the old algorithm beside the new one.
    """
    texts_of: dict[tuple[int, int], list[str]] = {}

    def unit_texts(unit):
        if unit not in texts_of:
            texts_of.clear()  # hold one row group at a time (plus those a resumed buffer needs)
            s, g = unit
            texts_of[unit] = loader._files[s].read_row_group(g, columns=["text"]).column("text").to_pylist()
        return texts_of[unit]

    def epoch_units(epoch):
        order = list(loader._units)
        if loader.shuffle:
            random.Random(f"{loader.seed}/{epoch}").shuffle(order)
        return order[loader.rank::loader.world_size]

    def next_docs(cur, n):
        units = epoch_units(cur.epoch)
        while cur.unit >= len(units):
            cur.epoch, cur.unit, cur.row = cur.epoch + 1, 0, 0
            units = epoch_units(cur.epoch)
        unit = units[cur.unit]
        texts = unit_texts(unit)
        ids = [(unit[0], unit[1], r) for r in range(cur.row, min(cur.row + n, len(texts)))]
        cur.row += len(ids)
        if cur.row >= len(texts):
            cur.unit, cur.row = cur.unit + 1, 0
        return ids

    def tokenize(doc_ids):
        texts = [unit_texts((s, g))[r] for s, g, r in doc_ids]
        return loader.tokenizer.encode_batch(texts, prepend=loader.bos)

    cur = _Cursor(start.epoch, start.unit, start.row, list(start.buffer))
    buf_ids = list(cur.buffer)
    buf_tok = tokenize(buf_ids) if buf_ids else []
    cap = loader.T + 1
    while True:
        rows = torch.empty((loader.B, cap), dtype=torch.long)
        d = PackingStats()
        for b in range(loader.B):
            col = 0
            while col < cap:
                while len(buf_ids) < loader.buffer_size:
                    new = next_docs(cur, loader.tokenizer_batch_size)
                    buf_ids += new
                    buf_tok += tokenize(new)
                space = cap - col
                best, best_len = -1, 0
                for i, t in enumerate(buf_tok):  # largest document that fits entirely
                    if best_len < len(t) <= space:
                        best, best_len = i, len(t)
                if best >= 0:
                    tokens = buf_tok.pop(best)
                    buf_ids.pop(best)
                    rows[b, col:col + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                    col += len(tokens)
                    d.doc_tokens_taken += len(tokens)
                else:  # nothing fits: crop the shortest document to fill the row exactly
                    i = min(range(len(buf_tok)), key=lambda k: len(buf_tok[k]))
                    tokens = buf_tok.pop(i)
                    buf_ids.pop(i)
                    rows[b, col:] = torch.tensor(tokens[:space], dtype=torch.long)
                    col = cap
                    d.doc_tokens_taken += len(tokens)
                    d.cropped_tokens += len(tokens) - space
                d.docs += 1
        d.rows, d.row_tokens = loader.B, loader.B * cap
        cur.buffer = list(buf_ids)
        yield rows, cur.as_dict(), d


def segments(row: list[int], bos: int) -> list[list[int]]:
    """Split a row at its BOS tokens: each piece is one document (or the cropped start of one)."""
    out = []
    for t in row:
        if t == bos:
            out.append([t])
        else:
            out[-1].append(t)
    return out


def rows_of(x: torch.Tensor, y: torch.Tensor) -> list[list[int]]:
    return [xi + [yi[-1]] for xi, yi in zip(x.tolist(), y.tolist())]


def take(loader, n):
    return [tuple(t.clone() for t in next(loader)) for _ in range(n)]


def test_packing_invariants(tok, base_dir):
    train_docs = {tuple(d) for d in tok.encode_batch(list(iter_texts("embedded", "train")), prepend=tok.bos_id)}
    val_docs = {tuple(d) for d in tok.encode_batch(list(iter_texts("embedded", "val")), prepend=tok.bos_id)}
    loader = DataLoader(tok, B=4, T=128, buffer_size=64)
    for x, y in take(loader, 10):
        assert x.shape == y.shape == (4, 128) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        for row in rows_of(x, y):
            assert row[0] == tok.bos_id  # every row starts with BOS
            segs = segments(row, tok.bos_id)
            for k, seg in enumerate(segs):
                if k < len(segs) - 1:
                    # whole documents, tokens in their original order, from train and never from val
                    assert tuple(seg) in train_docs and tuple(seg) not in val_docs
                else:  # the last one may be cropped: a prefix of a train document
                    assert any(d[:len(seg)] == tuple(seg) for d in train_docs if len(d) >= len(seg))
    assert loader.stats.utilisation == 1.0 and 0 < loader.stats.cropped_fraction < 1
    loader.close()


def test_deterministic_for_a_seed(tok, small_corpus):
    a = take(DataLoader(tok, 2, 32, corpus=small_corpus, seed=1, buffer_size=8, tokenizer_batch_size=4), 12)
    b = take(DataLoader(tok, 2, 32, corpus=small_corpus, seed=1, buffer_size=8, tokenizer_batch_size=4), 12)
    c = take(DataLoader(tok, 2, 32, corpus=small_corpus, seed=2, buffer_size=8, tokenizer_batch_size=4), 12)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


@pytest.mark.parametrize("prefetch", [0, 3])
@pytest.mark.parametrize("stop_at", [3, 11, 25])
def test_exact_resume(tok, small_corpus, prefetch, stop_at):
    """N batches, save, a NEW loader loads the state: its next batches equal an uninterrupted run's,
    mid-epoch and across epoch boundaries (the small corpus is a few batches per epoch)."""
    kw = dict(corpus=small_corpus, seed=3, buffer_size=8, tokenizer_batch_size=4, prefetch=prefetch)
    full_loader = DataLoader(tok, 4, 32, **kw)
    full = take(full_loader, stop_at + 15)
    assert full_loader.epoch >= 1  # the run crossed at least one epoch boundary
    first = DataLoader(tok, 4, 32, **kw)
    take(first, stop_at)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip (plain ints)
    assert len(state["buffer"]) > 0  # the resume must rebuild a non-empty packing buffer
    if stop_at == 25:
        assert state["epoch"] >= 1  # and this one resumes inside a later epoch
    first.close()
    resumed = DataLoader(tok, 4, 32, **kw)
    resumed.load_state_dict(state)
    rest = take(resumed, 15)
    for (x1, y1), (x2, y2) in zip(full[stop_at:], rest):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    full_loader.close()
    resumed.close()


def test_epoch_is_visible_in_state(tok, small_corpus):
    loader = DataLoader(tok, 2, 32, corpus=small_corpus, buffer_size=8, tokenizer_batch_size=4)
    epochs = []
    for _ in range(40):
        next(loader)
        epochs.append(loader.state_dict()["epoch"])
    assert epochs == sorted(epochs) and epochs[0] == 0 and epochs[-1] >= 2
    loader.close()


def test_ranks_read_disjoint_documents(tok, small_corpus):
    ranks = [DataLoader(tok, 2, 32, corpus=small_corpus, rank=r, world_size=2, buffer_size=4,
                        tokenizer_batch_size=4, prefetch=0) for r in range(2)]
    units = [set(l._epoch_units(0)) for l in ranks]
    assert units[0].isdisjoint(units[1]) and units[0] | units[1] == set(ranks[0]._units)
    seen = []
    for loader in ranks:
        docs = set()
        for _ in range(3):  # well within the first epoch of each rank
            x, y = next(loader)
            for row in rows_of(x, y):
                docs.update(tuple(s) for s in segments(row, tok.bos_id)[:-1])
        assert loader.epoch == 0
        seen.append(docs)
    assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1])
    with pytest.raises(ValueError, match="world_size"):
        ranks[0].load_state_dict(DataLoader(tok, 2, 32, corpus=small_corpus).state_dict())


def test_val_loader_fixed_budget_and_deterministic(tok, base_dir):
    a = list(build_val_loader(tok, 2, 64, tokens=2 * 64 * 5))
    b = list(build_val_loader(tok, 2, 64, tokens=2 * 64 * 5))
    assert len(a) == 5 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    val_docs = {tuple(d) for d in tok.encode_batch(list(iter_texts("embedded", "val")), prepend=tok.bos_id)}
    for x, y in a:
        for row in rows_of(x, y):
            for seg in segments(row, tok.bos_id)[:-1]:
                assert tuple(seg) in val_docs


@pytest.mark.parametrize("corpus, B, T, buffer_size, batches, prefetch", [
    ("embedded", 8, 128, 1000, 200, 0),    # rows of a few documents; the crop path is frequent
    ("embedded", 2, 1024, 1000, 200, 2),   # long rows, many exact fits
    ("small", 4, 32, 8, 150, 2),           # a tiny buffer over many epochs of the small corpus
])
def test_identical_to_reference(tok, small_corpus, corpus, B, T, buffer_size, batches, prefetch):
    """The loader yields the same batches, states and counters as `reference_generate`, on both ranks
    of 2, including a loader resumed from a state saved in the middle."""
    kw = dict(corpus=corpus, seed=5, world_size=2, buffer_size=buffer_size,
              tokenizer_batch_size=4 if corpus == "small" else 128)
    fixed = ("version", "rank", "world_size", "seed", "split", "B", "T")
    for rank in range(2):
        ref_loader = DataLoader(tok, B, T, rank=rank, prefetch=0, **kw)  # supplies settings and shards
        ref = reference_generate(ref_loader, _Cursor())
        loader = DataLoader(tok, B, T, rank=rank, prefetch=prefetch, **kw)
        taken = PackingStats()
        for i in range(batches):
            if i == batches // 2:  # resume a fresh loader from the state after batch i - 1
                state = json.loads(json.dumps(loader.state_dict()))
                loader.close()
                loader = DataLoader(tok, B, T, rank=rank, prefetch=prefetch, **kw)
                loader.load_state_dict(state)
                taken = PackingStats()
                loader.stats = PackingStats()
            rows, ref_state, d = next(ref)
            x, y = next(loader)
            assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:]), (rank, i)
            state = loader.state_dict()
            assert {k: v for k, v in state.items() if k not in fixed} == ref_state, (rank, i)
            for k in ("rows", "row_tokens", "doc_tokens_taken", "cropped_tokens", "docs"):
                setattr(taken, k, getattr(taken, k) + getattr(d, k))
            assert loader.stats == taken, (rank, i)
        if corpus == "small":
            assert state["epoch"] >= 3  # the comparison crossed epoch boundaries
        loader.close()
        ref_loader.close()


def test_producer_error_reaches_consumer_and_close_never_hangs(tok, base_dir):
    """An error in the background thread is raised by next(), after the batches made before it; and
    close() returns even when the thread failed while the queue was full (nobody reading it)."""
    import threading
    import time

    class Failing(DataLoader):
        def _generate(self, start):
            for i, item in enumerate(super()._generate(start)):
                if i == 3:
                    raise RuntimeError("corrupt shard")
                yield item

    loader = Failing(tok, 2, 32, prefetch=2)
    for _ in range(3):
        next(loader)
    with pytest.raises(RuntimeError, match="corrupt shard"):
        next(loader)
    loader = Failing(tok, 2, 32, prefetch=2)
    next(loader)  # starts the thread; it fills the queue (2 batches), then fails with nobody reading
    time.sleep(0.5)
    closer = threading.Thread(target=loader.close, daemon=True)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive(), "close() hung on a producer that failed with the queue full"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(tok, base_dir):
    """On CUDA the batch is pinned and copied with non_blocking=True: the tokens must arrive unchanged."""
    cpu = DataLoader(tok, 4, 64, seed=7, device="cpu")
    gpu = DataLoader(tok, 4, 64, seed=7, device="cuda")
    for _ in range(20):
        (xc, yc), (xg, yg) = next(cpu), next(gpu)
        assert xg.device.type == "cuda" and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
    cpu.close()
    gpu.close()


def test_bad_arguments(tok, base_dir):
    with pytest.raises(ValueError):
        DataLoader(tok, 0, 32)
    with pytest.raises(ValueError, match="rank"):
        DataLoader(tok, 2, 32, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError):
        DataLoader(tok, 2, 32, corpus="nope")
