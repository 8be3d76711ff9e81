"""
Benchmark: prefill and decode speed of the Engine, with and without the KV cache, at batch 1 and 8,
for depth 4 (width 256) and depth 6 (width 384), vocab 4096, fp32, random weights, a 64-token prompt and
256 new tokens (the no-cache baseline re-runs the whole sequence every step; it is timed over the
first --nocache-tokens new tokens to keep the run short).

Every decode figure is the median of --repeats runs (this machine's 2 shared cores vary by ~10% from run
to run). Two same-run controls sit beside nanochat's figures (measured earlier on this machine, see
../shared/anchors.md):
  * "plain": our engine with mini_nanochat.fast_decode.ROW_SPLIT = False, i.e. every matrix product is one
    F.linear call, as in nanochat's engine; the ratio ours / plain is what ADR 0026's tricks buy;
  * "no cache": greedy decoding that re-runs the whole sequence each step.

The memory-bandwidth bound: each decode step must read every weight once (4 bytes each in fp32) plus
the cached keys/values, so tok/s <= batch x bandwidth / bytes per step. The bandwidth is measured in the
same run (a 256 MB copy, read + write bytes per second, as ../shared/anchors.md measures it: ~51 GB/s).

    python benchmarks/bench_engine.py                 # ~4 min
    python benchmarks/bench_engine.py --repeats 1     # quicker, noisier
    python benchmarks/bench_engine.py --nanochat /tmp/nanochat   # + nanochat's Engine measured in the same run
                                                      #   (a checkout of its commit 92d63d4, never committed)

Without --nanochat, "vs nanochat" divides by the anchors, which were measured on an AMD EPYC (AVX2)
machine: on another CPU that ratio compares two machines; use --nanochat for a same-run ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mini_nanochat.fast_decode as fast_decode
from mini_nanochat.common import peak_flops
from mini_nanochat.engine import Engine
from mini_nanochat.gpt import GPT, GPTConfig

# nanochat's Engine on this project's machine (../shared/anchors.md), decode tok/s
NANOCHAT = {(4, 1): 311, (4, 8): 1312, (6, 1): 143, (6, 8): 684}
NANOCHAT_NOCACHE = {(4, 1): 58, (4, 8): 67, (6, 1): 25, (6, 8): 27}


class _Tok:
    """The engine only needs ids and special-token ids here (no text)."""
    special_tokens = {"<|bos|>": 0}
    bos_id = 0


def copy_bandwidth(mb: int = 256, reps: int = 5) -> float:
    """Bytes read + written per second by a large tensor copy (median of reps)."""
    a = torch.empty(mb * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() * 4 / statistics.median(times)


def decode_rate(engine: Engine, prompt: list[int], batch: int, new: int) -> float:
    for _ in engine.generate(prompt, num_samples=batch, max_tokens=8, temperature=1.0):
        pass  # warm-up
    t0 = time.perf_counter()
    steps = 0
    for _ in engine.generate(prompt, num_samples=batch, max_tokens=new, temperature=1.0):
        steps += 1
    return steps * batch / (time.perf_counter() - t0)


@torch.inference_mode()
def decode_rate_nocache(model, prompt: torch.Tensor, new: int) -> float:
    ids = prompt
    t0 = time.perf_counter()
    for _ in range(new):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return new * prompt.size(0) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="4,6")
    p.add_argument("--new", type=int, default=256, help="new tokens per decode run")
    p.add_argument("--nocache-tokens", type=int, default=64, help="new tokens timed for the no-cache baseline")
    p.add_argument("--repeats", type=int, default=3, help="decode runs per cell; the median is reported")
    p.add_argument("--nanochat", default="", help="path to a nanochat checkout: measure its Engine in this run")
    args = p.parse_args()
    nc_rates = {}
    if args.nanochat:
        import sys
        from pathlib import Path

        sys.path.insert(0, args.nanochat)
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_gpu import nanochat_decode, nanochat_model

        for depth in (int(d) for d in args.depths.split(",")):
            torch.manual_seed(0)
            nmodel = nanochat_model(depth, 512, 4096, "cpu").eval()
            for batch in (1, 8):
                rates = [nanochat_decode(nmodel, batch, list(range(1, 65)), args.new, "cpu") for _ in range(args.repeats)]
                nc_rates[(depth, batch)] = statistics.median(rates)
        print("nanochat Engine measured in this run (fp32): " +
              ", ".join(f"d{d} b{b} {r:,.0f}" for (d, b), r in nc_rates.items()) + " tok/s")
    bandwidth = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"fp32 matmul {peak_flops('cpu') / 1e9:.0f} GFLOP/s (anchors: ~51 GB/s, 186 GFLOP/s; shows how fast "
          "the shared machine is right now)\n")
    print("| depth | width | batch | prefill tok/s | decode tok/s (min-max) | vs nanochat | plain F.linear "
          "(ours / plain) | x no-cache | bandwidth bound | % of bound | no-cache tok/s (nanochat) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for depth in (int(d) for d in args.depths.split(",")):
        torch.manual_seed(0)
        cfg = GPTConfig.from_depth(depth, vocab_size=4096, sequence_len=512, window_pattern="L")
        model = GPT(cfg).eval()
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(0.02 * torch.randn_like(prm))
        engine = Engine(model, _Tok())
        engine.stop_ids = set()  # random weights: never stop early, always generate `new` tokens
        prompt = torch.randint(1, 4096, (1, 64))
        n_params = sum(prm.numel() for prm in model.parameters())
        for batch in (1, 8):
            with torch.inference_mode():
                model(prompt)  # warm-up
                t0 = time.perf_counter()
                model(prompt)
                prefill = 64 / (time.perf_counter() - t0)
            ours, plain = [], []
            for _ in range(args.repeats):  # interleaved, so that a slow spell hits both alike
                ours.append(decode_rate(engine, prompt[0].tolist(), batch, args.new))
                fast_decode.ROW_SPLIT = False
                plain.append(decode_rate(engine, prompt[0].tolist(), batch, args.new))
                fast_decode.ROW_SPLIT = True
            decode, plain_rate = statistics.median(ours), statistics.median(plain)
            nocache = decode_rate_nocache(model, prompt.expand(batch, -1).contiguous(), args.nocache_tokens)
            avg_ctx = 64 + args.new / 2
            kv_bytes = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * avg_ctx * 4 * batch
            bound = batch * bandwidth / (n_params * 4 + kv_bytes)
            print(f"| {depth} | {cfg.n_embd} | {batch} | {prefill:,.0f} | {decode:,.0f} ({min(ours):,.0f}-{max(ours):,.0f}) | "
                  f"{decode / nc_rates.get((depth, batch), NANOCHAT[(depth, batch)]):.2f}x{'' if nc_rates else ' (anchor)'} | {plain_rate:,.0f} ({decode / plain_rate:.2f}x) | "
                  f"{decode / nocache:.1f}x | {bound:,.0f} | {100 * decode / bound:.0f}% | "
                  f"{nocache:,.0f} ({NANOCHAT_NOCACHE[(depth, batch)]}) |", flush=True)
    print("\nnanochat Engine decode on this machine (anchors): d4 311 / 1,312 tok/s (batch 1 / 8), "
          "d6 143 / 684; no cache 58 / 67 and 25 / 27.")


if __name__ == "__main__":
    main()
