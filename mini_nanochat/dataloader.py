"""
The pretraining data loader: parquet shards -> tokens -> packed (inputs, targets) batches on the device.

Every batch is B rows of T+1 tokens (inputs = row[:-1], targets = row[1:]), packed with nanochat's
BOS-aligned best-fit strategy:

  * every document is tokenized as [BOS] + tokens, and every row starts at the BOS of a document, so no
    token ever attends across a document boundary into a row it did not start;
  * to fill a row, take the LARGEST buffered document that still fits entirely; repeat;
  * when no buffered document fits the space left, crop the SHORTEST one to fill the row exactly (its
    remainder is dropped). No padding: every position is trained on; the price is the cropped tokens.
  Ties go to the document that entered the buffer first. `_PackingBuffer` files the buffered documents by
  length, so each choice is a binary search rather than a pass over the ~1,000 buffered documents.

Alternatives (plain concatenation, padding) and their measured costs: docs/adrs/0008-packing.md.

Distribution and order. The shards' row groups are the units of work. For epoch e they are put in an
order that depends only on (seed, e) (shuffled for train, natural for val), and rank r of W takes units
r, r+W, r+2W, ... so ranks read disjoint documents. Several epochs over a small corpus just continue.

Exact resume. The state after a batch is (epoch, position of the next unread document, the ids of the
documents waiting in the packing buffer, in order). It is a handful of integers: on resume the buffered
documents are read and tokenized again (tokenization is deterministic), so the next batches are
bit-identical to those an uninterrupted loader yields (tests/test_dataloader.py).

Background work. A thread reads, tokenizes (tiktoken releases the GIL) and packs ahead of the training
step, `prefetch` batches deep; each batch carries the state *after* it, so `state_dict()` describes what
the consumer has actually received, not how far the thread has run ahead. That one thread delivers
more than the 1M tok/s a GPU needs, at B=8, T=256 and at B=32, T=2048, on 2 cores (figures in
benchmarks/README.md), so there are no tokenizer worker processes. On CUDA each batch is pinned once
and copied with non_blocking=True, so the copy to the GPU overlaps the step.
"""
from __future__ import annotations

import bisect
import queue
import random
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .common import get_dist_info
from .dataset import list_shards

DocId = tuple[int, int, int]  # (shard index, row group index, row index)


@dataclass
class PackingStats:
    """Counters for judging the packing: how many document tokens were used and how many were cropped."""
    rows: int = 0
    row_tokens: int = 0  # positions filled (B * (T+1) per batch); all are document tokens: no padding
    doc_tokens_taken: int = 0  # tokens of the documents drawn from the buffer (used + cropped)
    cropped_tokens: int = 0  # tokens dropped when a document was cropped to fill a row
    docs: int = 0

    @property
    def cropped_fraction(self) -> float:
        return self.cropped_tokens / max(1, self.doc_tokens_taken)

    @property
    def utilisation(self) -> float:
        """Fraction of row positions holding real document tokens (1.0 for best-fit: it never pads)."""
        return (self.doc_tokens_taken - self.cropped_tokens) / max(1, self.row_tokens)


@dataclass
class _Cursor:
    epoch: int = 0
    unit: int = 0  # index into this rank's unit list for the epoch
    row: int = 0  # next row inside that unit
    buffer: list[DocId] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "unit": self.unit, "row": self.row, "buffer": [list(d) for d in self.buffer]}


class _PackingBuffer:
    """The documents waiting to be packed, filed by length so that best-fit needs no scan.

    The rule, with its tie-breaks (the first version scanned a list for it; tests/test_dataloader.py
    keeps that scan as the reference the loader must match bit for bit):

      * pop_best_fit(space): the LONGEST document with length <= space; among equal lengths, the one
        added first. None if every document is longer than `space`.
      * pop_shortest(): the SHORTEST document; among equal lengths, the one added first.

    How: `_by_len` maps a length to the documents of that length in the order they were added, and
    `_lengths` keeps the distinct lengths sorted, so "longest <= space" is one binary search (bisect)
    instead of a pass over ~1,000 documents for every document placed. `_docs` (a dict, so it remembers
    insertion order) holds every waiting document; `doc_ids()` lists them in the order they were added,
    exactly as the scanned list held them: that list is the resume state.

    >>> buf = _PackingBuffer()
    >>> for row, tokens in enumerate([[1, 2, 3], [4, 5], [6, 7]]):
    ...     buf.add((0, 0, row), tokens)
    >>> buf.pop_best_fit(2)  # two documents of length 2 fit: the one added first wins
    [4, 5]
    >>> buf.pop_best_fit(1) is None  # none is that short
    True
    >>> buf.pop_shortest()
    [6, 7]
    >>> buf.doc_ids()
    [(0, 0, 0)]
    """

    def __init__(self):
        self._docs: dict[int, tuple[DocId, list[int]]] = {}  # arrival number -> (id, tokens)
        self._by_len: dict[int, deque[int]] = {}  # length -> arrival numbers, oldest first
        self._lengths: list[int] = []  # the distinct lengths in _by_len, ascending
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, doc_id: DocId, tokens: list[int]) -> None:
        n = len(tokens)
        if n not in self._by_len:
            bisect.insort(self._lengths, n)
            self._by_len[n] = deque()
        self._by_len[n].append(self._arrivals)
        self._docs[self._arrivals] = (doc_id, tokens)
        self._arrivals += 1

    def pop_best_fit(self, space: int) -> list[int] | None:
        k = bisect.bisect_right(self._lengths, space) - 1  # index of the largest length <= space
        return self._pop(k) if k >= 0 else None

    def pop_shortest(self) -> list[int]:
        return self._pop(0)

    def doc_ids(self) -> list[DocId]:
        return [doc_id for doc_id, _ in self._docs.values()]

    def _pop(self, k: int) -> list[int]:
        n = self._lengths[k]
        same_length = self._by_len[n]
        arrival = same_length.popleft()
        if not same_length:  # that length is gone from the buffer
            del self._by_len[n], self._lengths[k]
        return self._docs.pop(arrival)[1]


class DataLoader:
    """Iterable of (inputs, targets), each (B, T) int64 on `device`; infinite for train (epochs repeat).

    >>> loader = DataLoader(tok, B=8, T=256)            # doctest: +SKIP
    >>> x, y = next(iter(loader))                        # doctest: +SKIP
    >>> sd = loader.state_dict()  # ... later: loader.load_state_dict(sd) resumes exactly  # doctest: +SKIP
    """

    def __init__(self, tokenizer, B: int, T: int, split: str = "train", corpus: str = "embedded",
                 device: str | torch.device = "cpu", seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, buffer_size: int = 1000, tokenizer_batch_size: int = 128,
                 prefetch: int = 4, shuffle: bool | None = None, base_dir=None):
        if B < 1 or T < 1:
            raise ValueError(f"B and T must be positive, got B={B}, T={T}")
        dist = get_dist_info()
        self.rank = dist.rank if rank is None else rank
        self.world_size = dist.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.tokenizer, self.B, self.T, self.split = tokenizer, B, T, split
        self.device = torch.device(device)
        self.seed, self.buffer_size, self.tokenizer_batch_size = seed, buffer_size, tokenizer_batch_size
        self.prefetch = prefetch
        self.shuffle = (split == "train") if shuffle is None else shuffle
        self.bos = tokenizer.bos_id

        import pyarrow.parquet as pq

        self._shards = list_shards(corpus, split, base_dir)
        self._files = [pq.ParquetFile(p) for p in self._shards]
        self._units = [(s, g) for s, f in enumerate(self._files) for g in range(f.num_row_groups)]
        if len(self._units) < self.world_size:
            raise ValueError(f"{corpus}/{split} has {len(self._units)} row groups, fewer than the "
                             f"{self.world_size} ranks: rebuild it with a smaller --row-group-size")
        self.stats = PackingStats()
        self._cursor = _Cursor()  # state after the last batch handed to the consumer
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._unit_cache: tuple[tuple[int, int], list[str]] | None = None
        self._sync_gen = None

    # ---- the document stream ---------------------------------------------------------------------
    def _epoch_units(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's row groups for `epoch`: the epoch's order, every W-th unit starting at `rank`."""
        order = list(self._units)
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order[self.rank::self.world_size]

    def _unit_texts(self, unit: tuple[int, int]) -> list[str]:
        if self._unit_cache is None or self._unit_cache[0] != unit:
            s, g = unit
            try:
                texts = self._files[s].read_row_group(g, columns=["text"]).column("text").to_pylist()
            except Exception as e:  # noqa: BLE001 - a damaged page behind an intact footer: name the file
                from .dataset import CorpusError

                raise CorpusError(f"{self._shards[s]}: row group {g} cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                                  "rebuild the corpus with `python -m mini_nanochat data --force` and the same "
                                  "--corpus / --name") from e
            self._unit_cache = (unit, texts)
        return self._unit_cache[1]

    def _next_docs(self, cur: _Cursor, n: int) -> list[DocId]:
        """Advance `cur` by up to n documents (within one row group at most) and return their ids."""
        units = self._epoch_units(cur.epoch)
        while cur.unit >= len(units):  # epoch finished: start the next one
            cur.epoch, cur.unit, cur.row = cur.epoch + 1, 0, 0
            units = self._epoch_units(cur.epoch)
        unit = units[cur.unit]
        texts = self._unit_texts(unit)
        ids = [(unit[0], unit[1], r) for r in range(cur.row, min(cur.row + n, len(texts)))]
        cur.row += len(ids)
        if cur.row >= len(texts):
            cur.unit, cur.row = cur.unit + 1, 0
        return ids

    def _tokenize(self, doc_ids: list[DocId]) -> list[list[int]]:
        loaded: dict[tuple[int, int], list[str]] = {}  # read each row group once, even for a resumed buffer
        for s, g, _ in doc_ids:
            if (s, g) not in loaded:
                loaded[(s, g)] = self._unit_texts((s, g))
        # One encode call per document, in this thread. Not encode_batch: for ~128 documents its pool of 8
        # threads (a new pool per call) cost more than it saved on 2 cores: 2.5M vs 3.7M tok/s measured
        # (benchmarks/README.md). tiktoken releases the GIL while it encodes, so the training step
        # still runs meanwhile.
        return [self.tokenizer.encode(loaded[(s, g)][r], prepend=self.bos) for s, g, r in doc_ids]

    # ---- packing ---------------------------------------------------------------------------------
    def _generate(self, start: _Cursor) -> Iterator[tuple[torch.Tensor, _Cursor, PackingStats]]:
        """Yield (rows (B, T+1), state after this batch, stats delta) forever, starting from `start`.

        The state is a fresh _Cursor per batch (the buffer's ids as tuples): turning ~1,000 ids into
        lists for every batch cost a fifth of the time at B=8, T=256, so state_dict() does it on demand."""
        cur = _Cursor(start.epoch, start.unit, start.row)  # the reading position; it moves as we read
        # Re-create the buffer of a resumed state: same documents, same order, same tokens.
        buf = _PackingBuffer()
        if start.buffer:
            for doc_id, tokens in zip(start.buffer, self._tokenize(start.buffer)):
                buf.add(doc_id, tokens)
        cap = self.T + 1
        while True:
            rows = torch.empty((self.B, cap), dtype=torch.long)
            out = rows.numpy()  # a view of the same memory: numpy copies a token list in one call
            d = PackingStats()
            for b in range(self.B):
                col = 0
                while col < cap:
                    while len(buf) < self.buffer_size:
                        new = self._next_docs(cur, self.tokenizer_batch_size)
                        for doc_id, tokens in zip(new, self._tokenize(new)):
                            buf.add(doc_id, tokens)
                    space = cap - col
                    tokens = buf.pop_best_fit(space)  # the largest document that fits entirely
                    if tokens is not None:
                        out[b, col:col + len(tokens)] = tokens
                        col += len(tokens)
                        d.doc_tokens_taken += len(tokens)
                    else:  # nothing fits: crop the shortest document to fill the row exactly
                        tokens = buf.pop_shortest()
                        out[b, col:] = tokens[:space]
                        col = cap
                        d.doc_tokens_taken += len(tokens)
                        d.cropped_tokens += len(tokens) - space
                    d.docs += 1
            d.rows, d.row_tokens = self.B, self.B * cap
            yield rows, _Cursor(cur.epoch, cur.unit, cur.row, buf.doc_ids()), d

    # ---- iteration, with a background producer ----------------------------------------------------
    def _producer(self, start: _Cursor, q: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in self._generate(start):
                if not self._put(q, item, stop):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(q, e, stop)  # not a plain q.put: with the queue full and close() waiting, it would hang

    @staticmethod
    def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
        """Put `item` when there is room; give up (False) as soon as `stop` is set."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread, self._queue = None, None
            self._stop = threading.Event()

    def __iter__(self) -> "DataLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefetch <= 0:  # synchronous: simplest to step through in a debugger
            if self._sync_gen is None:
                self._sync_gen = self._generate(self._cursor)
            rows, cursor, d = next(self._sync_gen)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self.prefetch)
                self._thread = threading.Thread(target=self._producer, args=(self._cursor, self._queue, self._stop),
                                                daemon=True, name="mini-nanochat-loader")
                self._thread.start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._thread = None
                raise item
            rows, cursor, d = item
        self._cursor = cursor
        for k in ("rows", "row_tokens", "doc_tokens_taken", "cropped_tokens", "docs"):
            setattr(self.stats, k, getattr(self.stats, k) + getattr(d, k))
        # On CUDA: copy the batch once into pinned (page-locked) host memory, so that the copy to the GPU
        # can be asynchronous (non_blocking) and overlap the step. Elsewhere non_blocking buys nothing, and
        # .to("cpu") returns the same tensor without a copy.
        use_cuda = self.device.type == "cuda"
        if use_cuda:
            rows = rows.pin_memory()
        rows = rows.to(self.device, non_blocking=use_cuda)
        return rows[:, :-1], rows[:, 1:]  # inputs (B, T), targets (B, T)

    # ---- state -----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._cursor.epoch

    def state_dict(self) -> dict:
        """Where this loader stands after the last batch it returned (small: ints only)."""
        return {"version": 1, "rank": self.rank, "world_size": self.world_size, "seed": self.seed,
                "split": self.split, "B": self.B, "T": self.T, **self._cursor.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the batch that produced `state` (same corpus, rank layout and seed)."""
        for key in ("world_size", "seed", "split"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"loader state was saved with {key}={state.get(key)!r}, this loader has "
                                 f"{getattr(self, key)!r}; exact resume needs the same value")
        self._stop_thread()
        self._sync_gen = None
        self._cursor = _Cursor(int(state["epoch"]), int(state["unit"]), int(state["row"]),
                               [tuple(int(v) for v in d) for d in state["buffer"]])

    def close(self) -> None:
        self._stop_thread()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self._stop_thread()
        except Exception:  # noqa: BLE001
            pass


def build_val_loader(tokenizer, B: int, T: int, tokens: int, corpus: str = "embedded",
                     device: str | torch.device = "cpu", **kwargs) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, deterministic evaluation stream: the val split in its natural order (no shuffle), packed
    the same way, `tokens // (B * T * world_size)` batches per rank (at least 1). The same call always
    yields the same batches, so bits-per-byte is comparable across checkpoints.

    The number of batches is also capped by an upper bound on the split's size: a token holds at least one
    byte, so one pass has at most (text bytes + documents) tokens, read from the shards' parquet metadata
    without reading the text. A request far larger than the split (a typo, or --eval-tokens 1e15) then
    ends after a few passes at most instead of cycling for ever."""
    loader = DataLoader(tokenizer, B, T, split="val", corpus=corpus, device=device, shuffle=False, **kwargs)
    per_batch = B * T * loader.world_size
    steps = max(1, min(tokens, _split_token_bound(loader)) // per_batch)
    try:
        for _ in range(steps):
            yield next(loader)
    finally:
        loader.close()


def _split_token_bound(loader: DataLoader) -> int:
    """Bytes of text plus documents in the loader's shards (parquet footers only): >= its tokens."""
    total = 0
    for f in loader._files:
        meta = f.metadata
        col = f.schema_arrow.get_field_index("text")
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            total += rg.column(col).total_uncompressed_size + rg.num_rows
    return max(total, 1)


# ====================================================================================================
# Conversations for SFT: whole conversations, best-fit packed and padded, never cropped.
# ====================================================================================================

class ConversationLoader:
    """(inputs, targets), each (B, T), of rendered conversations for supervised fine-tuning.

    Pretraining crops documents to fill rows (above); a conversation cut in half would teach the model
    to stop mid-answer or to answer a question it never saw, so here every conversation is kept whole:

      * each conversation is rendered once: ids and the mask of `Tokenizer.render_conversation`
        (1 = the assistant's own tokens, trained on; 0 = the user, the tool's output, special tokens
        the model does not choose);
      * a row of T+1 tokens is filled with the largest buffered conversation that fits, then the next,
        until none fits; the rest of the row is padding (<|bos|>, never trained on);
      * targets are the next tokens where the mask is 1, else -1 (cross_entropy's ignore_index), so the
        loss is only on what the assistant says;
      * a conversation longer than T+1 tokens is dropped at the start (counted in `self.dropped`).

    Rank r of W takes every W-th conversation of an epoch's order (shuffled by (seed, epoch)); the state
    after a batch is (epoch, next position, buffered indices): exact resume, as DataLoader.

        >>> loader = ConversationLoader(tok, convs, B=8, T=256)      # doctest: +SKIP
        >>> x, y = next(loader)                                      # y == -1 except assistant tokens
    """

    def __init__(self, tokenizer, conversations: list, B: int, T: int, device: str | torch.device = "cpu",
                 seed: int = 0, shuffle: bool = True, buffer_size: int = 32, rank: int | None = None,
                 world_size: int | None = None):
        if B < 1 or T < 1:
            raise ValueError(f"B and T must be positive, got B={B}, T={T}")
        dist = get_dist_info()
        self.rank = dist.rank if rank is None else rank
        self.world_size = dist.world_size if world_size is None else world_size
        self.B, self.T, self.device, self.seed, self.shuffle = B, T, torch.device(device), seed, shuffle
        self.buffer_size = buffer_size
        self.pad = tokenizer.bos_id
        self.items: list[tuple[list[int], list[int]]] = []
        self.dropped = 0
        for conv in conversations:
            ids, mask = tokenizer.render_conversation(conv, max_tokens=10**9)
            if len(ids) > T + 1:
                self.dropped += 1
            elif sum(mask):
                self.items.append((ids, mask))
        if len(self.items) < self.world_size:
            raise ValueError(f"{len(self.items)} conversations fit in {T + 1} tokens "
                             f"({self.dropped} longer ones dropped): too few for {self.world_size} rank(s)")
        self.epoch, self.position, self.buffer = 0, 0, []
        self.padding = self.tokens = 0  # statistics: padded and total row positions

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order[self.rank::self.world_size]

    def _refill(self) -> None:
        """Top the buffer up from this epoch's order, moving on to the next epoch when it ends."""
        order = self._order(self.epoch)
        while len(self.buffer) < self.buffer_size:
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order(self.epoch)
            self.buffer.append(order[self.position])
            self.position += 1

    def _fill_row(self, buffer: list[int], refill) -> tuple[list[int], list[int]]:
        """One row: best-fit whole conversations from `buffer` (refilled by `refill()` before each pick),
        then padding."""
        ids: list[int] = []
        mask: list[int] = []
        while True:
            refill()
            space = self.T + 1 - len(ids)
            fits = [i for i in buffer if len(self.items[i][0]) <= space]
            if not fits:
                break
            best = max(fits, key=lambda i: len(self.items[i][0]))  # max() keeps the first of equals
            buffer.remove(best)
            ids += self.items[best][0]
            mask += self.items[best][1]
        pad = self.T + 1 - len(ids)
        self.padding += pad
        self.tokens += self.T + 1
        return ids + [self.pad] * pad, mask + [0] * pad

    def _batch(self, rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long)  # (B, T+1)
        mask = torch.tensor([r[1] for r in rows], dtype=torch.bool)
        y = torch.where(mask[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -1))  # (B, T): -1 = not trained on
        return ids[:, :-1].to(self.device), y.to(self.device)

    def __iter__(self) -> "ConversationLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch([self._fill_row(self.buffer, self._refill) for _ in range(self.B)])

    def state_dict(self) -> dict:
        return {"version": 1, "kind": "conversations", "seed": self.seed, "world_size": self.world_size,
                "epoch": self.epoch, "position": self.position, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"loader state was saved with {key}={state.get(key)!r}, this loader has "
                                 f"{getattr(self, key)!r}; exact resume needs the same value")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.buffer = [int(i) for i in state["buffer"]]

    def one_pass(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every conversation of this rank exactly once, in its natural order, packed the same way (for a
        validation loss); the last batch may have fewer rows. Leaves the training position untouched."""
        order = list(range(len(self.items)))[self.rank::self.world_size]
        buffer: list[int] = []
        pos = 0

        def refill():
            nonlocal pos
            while len(buffer) < self.buffer_size and pos < len(order):
                buffer.append(order[pos])
                pos += 1

        batches, rows = [], []
        while pos < len(order) or buffer:
            rows.append(self._fill_row(buffer, refill))
            if len(rows) == self.B or (pos >= len(order) and not buffer):
                batches.append(self._batch(rows))
                rows = []
        return batches
