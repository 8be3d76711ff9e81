"""
Benchmark: forward + backward (and optionally an AdamW step) tokens/s and MFU of each model preset at the
reference CPU config (depth 4, width 256, T 256, B 8, vocab 4096), against matrix-product peaks measured
in the same run.

MFU = tokens/s x estimate_flops() / peak, with estimate_flops() counted as nanochat counts
(6 x matmul params + attention, sliding windows at their effective length).

    python benchmarks/bench_model.py                      # fp32 and bf16, every preset
    python benchmarks/bench_model.py --steps 20 --compile # also torch.compile'd
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mini_nanochat.gpt import GPT, GPTConfig

# ../shared/anchors.md, measured on this machine (nanochat's own model, d4 C256 T256 B8 V4096, fp32)
ANCHORS = [("nanochat GPT + MuonAdamW, fp32 eager", 2832, 0.43),
           ("nanochat GPT + torch AdamW, fp32 eager", 3783, 0.58),
           ("nanochat GPT + MuonAdamW, fp32 compiled", 3870, 0.59)]


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def bench(preset: str, dtype: torch.dtype, steps: int, optimizer: str, compile_: bool,
          depth: int, B: int, T: int, V: int) -> tuple[float, int]:
    from mini_nanochat.optim import MuonAdamW, build_param_groups

    torch.manual_seed(0)
    cfg = GPTConfig.from_depth(depth, vocab_size=V, sequence_len=T, preset=preset)
    model = GPT(cfg, compute_dtype=dtype)
    flops = model.estimate_flops()
    opt = None
    if optimizer == "torch AdamW":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    elif optimizer == "MuonAdamW":
        opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
                                           scalar_lr=0.01))
    fwd = torch.compile(model) if compile_ else model
    x = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))

    def step():
        loss = fwd(x, y)
        loss.backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)

    for _ in range(3 if not compile_ else 5):  # warm-up (and compilation)
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return B * T / statistics.median(times), flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--V", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    p.add_argument("--presets", default="modern,gpt2,llama")
    p.add_argument("--dtypes", default="float32",
                   help="comma-separated; add bfloat16 only on a CPU with native bf16 (avx512_bf16 / amx), "
                        "elsewhere it runs ~100x slower (docs/adrs/0013-precision.md)")
    p.add_argument("--compile", action="store_true", help="also benchmark torch.compile")
    p.add_argument("--steps-kinds", default="fwd+bwd,torch AdamW,MuonAdamW",
                   help="what a step includes: fwd+bwd only, or with an optimizer step")
    args = p.parse_args()

    from mini_nanochat.common import cpu_has_native_bf16

    peaks = {torch.float32: matmul_peak(torch.float32),
             torch.bfloat16: matmul_peak(torch.bfloat16, reps=5 if cpu_has_native_bf16() else 1)}
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul 2048^3 peak: "
          f"fp32 {peaks[torch.float32] / 1e9:.1f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.1f} GFLOP/s "
          f"(anchors: 186 / 410)\n")
    print(f"depth {args.depth}, B {args.B}, T {args.T}, vocab {args.V}; median of {args.steps} steps\n")
    print("| preset | dtype | step | compiled | tok/s | FLOPs/token | MFU (own-dtype peak) | MFU (fp32 peak) |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        for dname in args.dtypes.split(","):
            dtype = getattr(torch, dname)
            for kind in args.steps_kinds.split(","):
                for comp in ((False, True) if args.compile else (False,)):
                    tps, flops = bench(preset, dtype, args.steps, kind, comp, args.depth, args.B, args.T, args.V)
                    print(f"| {preset} | {dname} | {kind if kind == 'fwd+bwd' else 'fwd+bwd+' + kind} | "
                          f"{'yes' if comp else 'no'} | {tps:,.0f} | {flops / 1e6:.1f}M | "
                          f"{tps * flops / peaks[dtype]:.2f} | {tps * flops / peaks[torch.float32]:.2f} |", flush=True)
    print("\nanchors (nanochat's model on this machine, ../shared/anchors.md):")
    for name, tps, mfu in ANCHORS:
        print(f"  {name}: {tps:,} tok/s, MFU {mfu}")


if __name__ == "__main__":
    main()
