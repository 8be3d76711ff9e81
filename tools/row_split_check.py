"""
Does the row-split matrix product (ADR 0026) beat F.linear on THIS machine? The engine measures it by
itself, once per weight shape (fast_decode.row_split_plan); this script prints the same comparison as a table
for the d4 and d6 weight shapes, so that a learner can see why the answer differs between CPUs.

    python tools/row_split_check.py            # ~10 s
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mini_nanochat.fast_decode import row_split_linear


def per_call_us(fn, weights, x, reps: int = 5) -> float:
    """Best of `reps` passes over 32 different weights (cold-ish caches), microseconds per product."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in weights:
            fn(x, w)
        best = min(best, time.perf_counter() - t0)
    return best / len(weights) * 1e6


def main() -> None:
    n = torch.get_num_threads()
    print(f"torch {torch.__version__}, {n} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| weight (out x in) | rows | F.linear us | row-split us | row-split / F.linear |")
    print("|---|---:|---:|---:|---:|")
    with torch.inference_mode():
        for out_f, in_f in [(1024, 256), (256, 1024), (1536, 384), (384, 1536), (4096, 384)]:
            weights = [torch.randn(out_f, in_f) for _ in range(32)]
            for rows in (1, 8):
                x = torch.randn(rows, in_f)
                plain = per_call_us(lambda a, w: F.linear(a, w), weights, x)
                split = per_call_us(lambda a, w: row_split_linear(a, w, n), weights, x)
                print(f"| {out_f} x {in_f} | {rows} | {plain:.1f} | {split:.1f} | {split / plain:.2f} |")


if __name__ == "__main__":
    main()
