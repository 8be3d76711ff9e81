"""
Benchmark: how fast is the data loader alone, and can it feed a GPU (the target: >= 1,000,000 tok/s)?

1. The loader alone, synchronous and with its background thread, at B x T (default 8x256 and 32x2048):
   tokens/s delivered by the current loader ("new") and by the first version of the packing loop
   ("old": `reference_generate` in tests/test_dataloader.py, a scan of the 1,000-document buffer per
   document placed, tokenized with encode_batch), in the same run, interleaved, median of `--repeats`.
   Both start from the same state and must yield identical batches: the script checks it first.
2. The target line: met / not met at each shape with the background thread, and the machine's cores.
3. Overlap: a stand-in training step (matrix products sized to take about 0.5 s) timed alone and with the
   loader feeding it from its thread: the cost of sharing the cores.

    python benchmarks/bench_dataloader.py            # uses $MINI_NANOCHAT_HOME, building what is missing
    python benchmarks/bench_dataloader.py --shapes 8x256 --repeats 5 --tokens 1000000
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

TARGET = 1_000_000  # tok/s per GPU, from the issue
ANCHORS = {"nanochat d4 fp32 compiled": 3870}  # CPU training tok/s at depth 4 (../shared/anchors.md)


def ensure_artifacts() -> None:
    from mini_nanochat.stages import data, tok_train

    data.main([])
    tok_train.main([])


def old_loader_class():
    """DataLoader with the first packing loop (kept in the tests as the reference) as its producer."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
    from tests.test_dataloader import reference_generate

    from mini_nanochat.dataloader import DataLoader, _Cursor

    def to_cursor(state: dict) -> _Cursor:  # the old consumer did this per batch: part of the old cost
        return _Cursor(state["epoch"], state["unit"], state["row"], [tuple(x) for x in state["buffer"]])

    class OldLoader(DataLoader):
        def _generate(self, start):
            for rows, state, d in reference_generate(self, start):
                yield rows, to_cursor(state), d

    return OldLoader


def check_identical(old_cls, new_cls, tok, B: int, T: int, batches: int = 20) -> bool:
    old, new = old_cls(tok, B, T, prefetch=0), new_cls(tok, B, T, prefetch=0)
    same = all(torch.equal(next(old)[0], next(new)[0]) and old.state_dict() == new.state_dict()
               for _ in range(batches))
    old.close(), new.close()
    return same


def loader_rate(cls, tok, B: int, T: int, prefetch: int, tokens: int) -> tuple[float, float]:
    """tok/s delivered over about `tokens` tokens (inputs only: B*T per batch), after one warm-up batch."""
    loader = cls(tok, B, T, prefetch=prefetch)
    next(loader)  # start-up (open shards, first tokenization, thread start) is not the steady state
    batches = max(5, tokens // (B * T))
    t0 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    dt = time.perf_counter() - t0
    cropped = loader.stats.cropped_fraction
    loader.close()
    return batches * B * T / dt, cropped


# Where the time goes: cProfile's cumulative time of the functions that do each phase (profiling slows
# the many small calls, so the shares are approximate). Names cover both loaders: the old one's helpers
# are the local functions of reference_generate.
PHASES = {
    "parquet read": {"_unit_texts", "unit_texts"},
    "tokenize": {"_tokenize", "tokenize"},
    "state per batch": {"as_dict", "doc_ids", "to_cursor"},
}


def profile_phases(cls, tok, B: int, T: int, tokens: int) -> tuple[float, dict[str, float]]:
    """(seconds per million tokens, {phase: share of the time}) for the synchronous loader."""
    import cProfile
    import pstats

    loader = cls(tok, B, T, prefetch=0)
    next(loader)
    batches = max(5, tokens // (B * T))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(batches):
        next(loader)
    prof.disable()
    loader.close()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
    total = sum(ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name == "__next__")
    shares = {phase: sum(ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name in names) / total
              for phase, names in PHASES.items()}
    shares["choosing documents, filling rows"] = 1 - sum(shares.values())
    return total / (batches * B * T) * 1e6, shares


def fake_step(a: torch.Tensor, b: torch.Tensor, reps: int) -> None:
    for _ in range(reps):
        torch.mm(a, b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["8x256", "32x2048"], help="B x T pairs")
    p.add_argument("--tokens", type=int, default=2_000_000, help="tokens per measurement")
    p.add_argument("--repeats", type=int, default=3, help="old/new measurements interleaved this many times")
    p.add_argument("--steps", type=int, default=20, help="stand-in training steps for the overlap test")
    p.add_argument("--profile", action="store_true", help="only print where the time goes, per phase (cProfile)")
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]

    from mini_nanochat.dataloader import DataLoader
    from mini_nanochat.tokenizer import get_tokenizer

    ensure_artifacts()
    tok = get_tokenizer()
    OldLoader = old_loader_class()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load0 = os.getloadavg()[0]
    print(f"\ntorch {torch.__version__}, {cores} cores, tokenizer vocab {tok.vocab_size}, "
          f"{args.tokens:,} tokens per measurement, median of {args.repeats}, load average {load0:.2f}\n")
    for B, T in shapes:
        if not check_identical(OldLoader, DataLoader, tok, B, T):
            raise SystemExit(f"old and new loaders disagree at B={B}, T={T}: the timing would compare different work")
    print("old and new yield identical batches and states (first 20 batches of each shape)\n")
    if args.profile:
        print("| B | T | loader | s per 1M tok (profiled) | " + " | ".join(PHASES) + " | choosing documents, filling rows |")
        print("|---:|---:|---|---:|" + "---:|" * (len(PHASES) + 1))
        for B, T in shapes:
            for name, cls in (("old", OldLoader), ("new", DataLoader)):
                secs, shares = profile_phases(cls, tok, B, T, args.tokens)
                print(f"| {B} | {T} | {name} | {secs:.2f} | " + " | ".join(f"{100 * v:.0f}%" for v in shares.values()) + " |")
        return

    print("| B | T | mode | old tok/s | new tok/s | new / old | cropped |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    threaded: dict[tuple[int, int], float] = {}
    for B, T in shapes:
        for prefetch, mode in ((0, "synchronous"), (4, "background thread")):
            old, new = [], []
            for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both
                old.append(loader_rate(OldLoader, tok, B, T, prefetch, args.tokens)[0])
                rate, cropped = loader_rate(DataLoader, tok, B, T, prefetch, args.tokens)
                new.append(rate)
            mo, mn = statistics.median(old), statistics.median(new)
            if prefetch:
                threaded[(B, T)] = mn
            print(f"| {B} | {T} | {mode} | {mo:,.0f} | {mn:,.0f} | {mn / mo:.1f}x | {cropped:.3f} |")
    print(f"\nload average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (the machine may be shared)")
    for (B, T), rate in threaded.items():
        verdict = "MET" if rate >= TARGET else "NOT MET"
        print(f"target >= {TARGET:,} tok/s, loader alone with its background thread, B={B} T={T}: {verdict} "
              f"({rate:,.0f} tok/s on this machine, {cores} cores; "
              f"{rate / ANCHORS['nanochat d4 fp32 compiled']:,.0f}x nanochat's compiled CPU training at depth 4)")

    # Overlap: a step of ~2048 tokens at ~3,000 tok/s takes ~0.7 s; size the stand-in to ~0.5 s.
    B, T = shapes[0]
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t0 = time.perf_counter()
    fake_step(a, b, 5)
    reps = max(1, round(5 * 0.5 / (time.perf_counter() - t0)))
    alone, fed = [], []
    loader = DataLoader(tok, B, T, prefetch=4)
    next(loader)
    for _ in range(args.steps):
        t0 = time.perf_counter()
        fake_step(a, b, reps)
        alone.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        next(loader)
        fake_step(a, b, reps)
        fed.append(time.perf_counter() - t0)
    loader.close()
    ma, mf = statistics.median(alone), statistics.median(fed)
    print(f"\nstand-in step ({reps} x 1024^3 matmul) at B={B}, T={T}: alone {ma * 1000:.0f} ms, with the loader "
          f"feeding it {mf * 1000:.0f} ms (median of {args.steps}): overhead {100 * (mf / ma - 1):+.1f}%")


if __name__ == "__main__":
    main()
