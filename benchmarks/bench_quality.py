"""
Quality at equal wall-clock time: our model + optimizer against nanochat's own, on this machine.

    python benchmarks/bench_quality.py --nanochat /tmp/nanochat                  # 120 s of training each
    python benchmarks/bench_quality.py --nanochat /tmp/nanochat --dtype float32  # both in fp32

Both sides get the same tokenizer (ours, `default`), the same shards and the same batches (two of our
DataLoaders with one seed), the same depth, context and batch size, and the same wall-clock budget of
*training* time (evaluation is not counted). Each uses its own model (mini_nanochat.gpt / nanochat.gpt) and
its own optimizer with its own default learning rates (our build_param_groups / nanochat's
setup_optimizer); both follow the same schedule shape (40 warmup steps, constant, linear warmdown over the
last 65%), with a horizon each side estimates from its own first 10 steps (a faster side gets more steps:
that is the point). Steps alternate between the two sides, so a busy machine slows both alike. The first
2 steps of each side are not timed (nanochat compiles its Newton-Schulz step on first use).

Precision: by default each side uses its project's CPU default (ours: bf16 on a CPU with AVX512-BF16, fp32
otherwise, ADR 0013; nanochat: fp32 on every CPU unless NANOCHAT_DTYPE is set). `--dtype` forces both.

Prints the val bits per byte of both at the same training times, then steps, tokens/s and the final figure.
nanochat's source is fetched into /tmp by the caller (never committed): a checkout of
github.com/karpathy/nanochat at commit 92d63d4.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Side:
    def __init__(self, name, model, optimizer, loader):
        self.name, self.model, self.optimizer, self.loader = name, model, optimizer, loader
        self.steps, self.elapsed, self.horizon, self.curve, self.next_eval = 0, 0.0, None, [], 0.0

    def step(self, warmup: int, warmdown: float) -> None:
        from mini_nanochat.training import apply_schedule

        if self.horizon is None and self.steps == 10:
            self.horizon = max(11, int(BUDGET / (self.elapsed / 10)))
        apply_schedule(self.optimizer, self.steps, self.horizon or 10**9, warmup, warmdown if self.horizon else 0.0)
        t0 = time.perf_counter()
        x, y = (t.contiguous() for t in next(self.loader))  # nanochat's loss uses .view()
        loss = self.model(x, y)
        loss.backward()
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        loss.item()
        if self.steps >= WARMUP_UNTIMED:  # the first steps compile kernels (nanochat's Muon uses torch.compile)
            self.elapsed += time.perf_counter() - t0
        self.steps += 1


BUDGET = 120.0
WARMUP_UNTIMED = 2  # steps per side not counted in the budget: one-time compilation, not training speed


def main() -> None:
    global BUDGET
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanochat", required=True, help="path to a nanochat checkout (commit 92d63d4)")
    p.add_argument("--seconds", type=float, default=120.0, help="training seconds per side")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-every", type=float, default=30.0, help="evaluate every N training seconds")
    p.add_argument("--eval-tokens", type=int, default=2**16)
    p.add_argument("--dtype", default="", help="float32 / bfloat16 for both sides (default: each project's)")
    p.add_argument("--tokenizer", default="default")
    p.add_argument("--corpus", default="embedded")
    args = p.parse_args()
    BUDGET = args.seconds
    if args.dtype:
        os.environ["NANOCHAT_DTYPE"] = args.dtype  # read by nanochat.common at import
    sys.path.insert(0, args.nanochat)
    from bench_gpu import nanochat_model  # noqa: E402 - needs the path above

    from mini_nanochat.common import compute_dtype
    from mini_nanochat.dataloader import DataLoader, build_val_loader
    from mini_nanochat.gpt import GPT, GPTConfig
    from mini_nanochat.loss_eval import evaluate_bpb
    from mini_nanochat.optim import MuonAdamW, build_param_groups
    from mini_nanochat.tokenizer import get_tokenizer
    from nanochat.common import COMPUTE_DTYPE as NC_DTYPE  # noqa: E402

    tok = get_tokenizer(args.tokenizer)
    V, T, B = tok.vocab_size, args.seq_len, args.batch
    dtype = compute_dtype("cpu", args.dtype or None)
    torch.manual_seed(0)
    ours = GPT(GPTConfig.from_depth(args.depth, vocab_size=V, sequence_len=T), device="cpu", compute_dtype=dtype)
    ours.init_weights()
    ours_opt = MuonAdamW(build_param_groups(ours, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
                                            scalar_lr=0.01))
    torch.manual_seed(0)
    theirs = nanochat_model(args.depth, T, V, "cpu")
    theirs_opt = theirs.setup_optimizer()
    sides = [Side("ours", ours, ours_opt, DataLoader(tok, B, T, corpus=args.corpus, seed=0)),
             Side("nanochat", theirs, theirs_opt, DataLoader(tok, B, T, corpus=args.corpus, seed=0))]
    val = [(x.contiguous(), y.contiguous()) for x, y in build_val_loader(tok, B, T, tokens=args.eval_tokens,
                                                                        corpus=args.corpus)]
    token_bytes = torch.tensor(tok.token_bytes(), dtype=torch.int64)
    print(f"depth {args.depth}, T {T}, B {B}, vocab {V}, {args.seconds:.0f} s of training each; "
          f"ours {str(dtype).replace('torch.', '')} ({sum(p.numel() for p in ours.parameters()):,} params), "
          f"nanochat {str(NC_DTYPE).replace('torch.', '')} ({sum(p.numel() for p in theirs.parameters()):,} params); "
          f"{time.strftime('%Y-%m-%d')}")

    def evaluate(side: Side) -> None:
        bpb = evaluate_bpb(side.model, val, token_bytes)
        side.model.train()
        side.curve.append((side.elapsed, side.steps, bpb))

    for s in sides:
        evaluate(s)
        s.next_eval = args.eval_every
    while any(s.elapsed < BUDGET for s in sides):
        for s in sides:
            if s.elapsed >= BUDGET:
                continue
            s.step(warmup=40, warmdown=0.65)
            if s.elapsed >= s.next_eval or s.elapsed >= BUDGET:
                evaluate(s)
                s.next_eval += args.eval_every
    for s in sides:
        s.loader.close()

    print("\n| training time (s) | ours: step, val bpb | nanochat: step, val bpb |")
    print("|---:|---|---|")
    rows = max(len(s.curve) for s in sides)
    for i in range(rows):
        cells = [f"{s.curve[i][1]:,}, {s.curve[i][2]:.4f}" if i < len(s.curve) else "" for s in sides]
        t = max(s.curve[i][0] for s in sides if i < len(s.curve))
        print(f"| {t:.0f} | {cells[0]} | {cells[1]} |")
    a, b = sides
    print(f"\nours: {a.steps:,} steps, {a.steps * B * T / a.elapsed:,.0f} tok/s, final val bpb {a.curve[-1][2]:.4f}")
    print(f"nanochat: {b.steps:,} steps, {b.steps * B * T / b.elapsed:,.0f} tok/s, final val bpb {b.curve[-1][2]:.4f}")
    print(f"ours - nanochat: {a.curve[-1][2] - b.curve[-1][2]:+.4f} bits per byte (negative = ours lower)")


if __name__ == "__main__":
    main()
