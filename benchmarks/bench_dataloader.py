"""
Benchmark: can the data loader keep a CPU training step fed?

1. The loader alone (synchronous and with its background thread): tokens/s delivered at B x T.
2. The ratio to what training consumes at the reference CPU config (depth 4, width 256, T 256, B 8):
   nanochat's model + optimizer measured on this machine (../shared/anchors.md): 2,832 tok/s fp32 eager,
   3,870 tok/s compiled. Our own model's figures replace these once Phase 2-3 lands.
3. Overlap: a stand-in training step (matrix products sized to take about as long as a real step)
   timed alone and with the loader feeding it from its thread: the cost of sharing 2 cores.

    python benchmarks/bench_dataloader.py            # uses $MINI_NANOCHAT_HOME, building what is missing
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

ANCHORS = {"nanochat d4 fp32 eager": 2832, "nanochat d4 fp32 compiled": 3870}


def ensure_artifacts() -> None:
    from mini_nanochat.stages import data, tok_train

    data.main([])
    tok_train.main([])


def loader_rate(tok, B: int, T: int, prefetch: int, batches: int) -> tuple[float, float]:
    from mini_nanochat.dataloader import DataLoader

    loader = DataLoader(tok, B, T, prefetch=prefetch)
    next(loader)  # start-up (open shards, first tokenization) is not part of the steady state
    t0 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    dt = time.perf_counter() - t0
    cropped = loader.stats.cropped_fraction
    loader.close()
    return batches * B * T / dt, cropped


def fake_step(a: torch.Tensor, b: torch.Tensor, reps: int) -> None:
    for _ in range(reps):
        torch.mm(a, b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--steps", type=int, default=20, help="stand-in training steps for the overlap test")
    args = p.parse_args()

    from mini_nanochat.tokenizer import get_tokenizer

    ensure_artifacts()
    tok = get_tokenizer()
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, tokenizer vocab {tok.vocab_size}\n")
    print("| B | T | mode | loader tok/s | cropped | x nanochat eager (2,832) | x nanochat compiled (3,870) |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for T in args.T:
        for prefetch, mode in ((0, "synchronous"), (4, "background thread")):
            rate, cropped = loader_rate(tok, args.B, T, prefetch, args.batches)
            print(f"| {args.B} | {T} | {mode} | {rate:,.0f} | {cropped:.3f} | "
                  f"{rate / ANCHORS['nanochat d4 fp32 eager']:.0f}x | {rate / ANCHORS['nanochat d4 fp32 compiled']:.0f}x |")

    # Overlap: a step of ~2048 tokens at ~3,000 tok/s takes ~0.7 s; size the stand-in to ~0.5 s.
    from mini_nanochat.dataloader import DataLoader

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t0 = time.perf_counter()
    fake_step(a, b, 5)
    reps = max(1, round(5 * 0.5 / (time.perf_counter() - t0)))
    alone, fed = [], []
    loader = DataLoader(tok, args.B, args.T[0], prefetch=4)
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
    print(f"\nstand-in step ({reps} x 1024^3 matmul): alone {ma * 1000:.0f} ms, with the loader feeding it "
          f"{mf * 1000:.0f} ms (median of {args.steps}): overhead {100 * (mf / ma - 1):+.1f}%")


if __name__ == "__main__":
    main()
