"""
Benchmark: issue #11's GPU tables in one run: training tok/s and MFU (model + optimizer step on random
tokens) and decode tok/s with the KV cache, ours beside nanochat's own modules when they are given.

    python benchmarks/bench_gpu.py                              # ours, on the GPU
    python benchmarks/bench_gpu.py --nanochat /tmp/nanochat     # + nanochat's modules (a checkout of
                                                                #   github.com/karpathy/nanochat, commit 92d63d4;
                                                                #   fetched into /tmp, never committed here)
    python benchmarks/bench_gpu.py --smoke                      # tiny sizes on the CPU: checks that the
                                                                #   script runs; its figures mean nothing
    python benchmarks/bench_gpu.py --out results.md             # also write the tables to a file

Without a CUDA GPU (and without --smoke) it prints the tables with every cell "not measured".

Training: 3 warm-up steps (compilation included), then --steps timed steps between two
torch.cuda.synchronize() calls; window pattern "L" (full attention in every layer, as nanochat runs
without FlashAttention-3), head dim 128. Our step is mini_nanochat.training.train_step (one loss read
per step); nanochat's is forward, backward, its optimizer's step, zero_grad and one loss.item().
MFU = tok/s x the model's own estimate_flops() / 989 TFLOP/s (the H100/H200 SXM dense bf16 peak that
nanochat quotes), so both sides are measured against the same number; the data-sheet peak of the GPU in
use (common.gpu_peak_flops) is printed in the header.

Decoding: depth 12, vocab 32768, a 64-token prompt, then --new tokens at batch 1, 8 and 64; our Engine
with fast=True (a CUDA graph of the one-token step over a static KV cache, ADR 0028) and fast=False (the
model's own forward, one kernel launch per op), and nanochat's Engine. Random weights; stop tokens are
disabled so that every run decodes --new tokens.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import subprocess
import sys
import time

import torch

from mini_nanochat.common import compute_dtype, gpu_peak_flops, setup_device, synchronize
from mini_nanochat.engine import Engine
from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.optim import MuonAdamW, build_param_groups
from mini_nanochat.training import train_step

MFU_PEAK = 989e12  # dense bf16, H100/H200 SXM: the figure nanochat's MFU uses (../shared/anchors.md)

# (label, depth, T, B, V, optimizer, compile, run nanochat too)
TRAIN = [
    ("d20 T2048 B32 V32768, Muon, compiled", 20, 2048, 32, 32768, "muon", True, True),
    ("same, AdamW for every matrix (no Muon)", 20, 2048, 32, 32768, "adamw", True, False),
    ("d12 T2048 B32 V32768, Muon, eager", 12, 2048, 32, 32768, "muon", False, True),
]
SMOKE_TRAIN = [("smoke d2 T64 B2 V512, Muon, eager", 2, 64, 2, 512, "muon", False, True)]
# measured on one H200 on 2026-11-30 before this change (../shared/anchors.md, issue #11), for reference
BEFORE = {"d20 T2048 B32 V32768, Muon, compiled": (98_800, 151_000),
          "same, AdamW for every matrix (no Muon)": (177_800, None),
          "d12 T2048 B32 V32768, Muon, eager": (237_600, 286_800)}
BEFORE_DECODE = {1: (130, 123), 8: (951, 968), 64: (9_216, 8_048)}


class _Tok:
    """What our Engine needs of a tokenizer when no text is involved."""
    special_tokens = {"<|bos|>": 0}
    bos_id = 0


class _NanochatTok:
    """What nanochat's Engine asks of a tokenizer; special ids lie beyond the vocabulary, never sampled."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode_special(self, name: str) -> int:
        return self.vocab + 1 + abs(hash(name)) % 1000

    def get_bos_token_id(self) -> int:
        return self.vocab

    def encode(self, text, *a, **k):
        return [1]

    def decode(self, ids):
        return ""


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def _timed(step, warmup: int, steps: int, device: str) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def ours_train(depth, T, B, V, optimizer, compile_, device, steps) -> tuple[float, int]:
    torch.manual_seed(0)
    cfg = GPTConfig.from_depth(depth, vocab_size=V, sequence_len=T, window_pattern="L")
    model = GPT(cfg, device=device, compute_dtype=compute_dtype(device))
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
                                       scalar_lr=0.01, optimizer=optimizer))
    fwd = torch.compile(model, dynamic=False) if compile_ else model
    x = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device)
    batches = itertools.repeat((x, y))
    dt = _timed(lambda: train_step(fwd, opt, batches, 1), 3, steps, device)
    return B * T / dt, model.estimate_flops()


def nanochat_model(depth: int, T: int, V: int, device: str):
    from nanochat.gpt import GPT as NGPT, GPTConfig as NConfig  # noqa: N813 - from --nanochat's checkout

    n_embd = 128 * -(-depth * 64 // 128)
    kw = dict(sequence_len=T, vocab_size=V, n_layer=depth, n_head=n_embd // 128, n_kv_head=n_embd // 128,
              n_embd=n_embd)
    if "window_pattern" in getattr(NConfig, "__dataclass_fields__", {}):
        kw["window_pattern"] = "L"
    with torch.device("meta"):
        model = NGPT(NConfig(**kw))
    model.to_empty(device=device)
    model.init_weights()
    return model


def nanochat_train(depth, T, B, V, compile_, device, steps) -> tuple[float, int]:
    torch.manual_seed(0)
    model = nanochat_model(depth, T, V, device)
    opt = model.setup_optimizer() if hasattr(model, "setup_optimizer") else model.setup_optimizers()
    opts = opt if isinstance(opt, (list, tuple)) else [opt]
    fwd = torch.compile(model, dynamic=False) if compile_ else model
    x = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device)

    def step():
        loss = fwd(x, y)
        loss.backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        loss.item()

    return B * T / _timed(step, 3, steps, device), model.estimate_flops()


def ours_decode(model, batch: int, prompt: list[int], new: int, fast: bool, device: str) -> float:
    engine = Engine(model, _Tok(), fast=fast)
    engine.stop_ids = set()
    for _ in engine.generate(prompt, num_samples=batch, max_tokens=new, temperature=1.0):
        pass  # warm-up: CUDA-graph capture (and compilation) for this batch size happen here
    if engine.graph_error:
        print(f"  note: {engine.graph_error}")
    synchronize(device)
    t0 = time.perf_counter()
    n = sum(1 for _ in engine.generate(prompt, num_samples=batch, max_tokens=new, temperature=1.0))
    synchronize(device)
    return n * batch / (time.perf_counter() - t0)


def nanochat_decode(model, batch: int, prompt: list[int], new: int, device: str) -> float:
    from nanochat.engine import Engine as NEngine

    engine = NEngine(model, _NanochatTok(model.config.vocab_size))

    def run() -> int:
        return sum(1 for _ in engine.generate(prompt, num_samples=batch, max_tokens=new, temperature=1.0, seed=0))

    run()
    synchronize(device)
    t0 = time.perf_counter()
    n = run()
    synchronize(device)
    return n * batch / (time.perf_counter() - t0)


def _try(fn, *args):
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - a failing cell is reported, the rest of the table still runs
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        _free()


def fmt(v, spec=",.0f") -> str:
    return "not measured" if v is None else format(v, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanochat", default="", help="path to a nanochat checkout to import its modules from")
    p.add_argument("--steps", type=int, default=15, help="timed training steps")
    p.add_argument("--new", type=int, default=256, help="decoded tokens per run")
    p.add_argument("--batches", default="1,8,64", help="decode batch sizes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check that the script runs")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--out", default="", help="also write the tables to this file")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    measure = cuda or args.smoke
    if args.nanochat:
        sys.path.insert(0, args.nanochat)
    if cuda:
        setup_device(device)
    lines: list[str] = []

    def out(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    gpu = torch.cuda.get_device_name() if cuda else "no CUDA GPU"
    peak = gpu_peak_flops(gpu, torch.bfloat16) if cuda else None
    out(f"# bench_gpu, {datetime.date.today()}, {gpu}, torch {torch.__version__}"
        f"{', CUDA ' + torch.version.cuda if cuda else ''}, mini-nanochat {commit or '?'}"
        f"{', nanochat from ' + args.nanochat if args.nanochat else ', nanochat not loaded (--nanochat)'}")
    out(f"data-sheet bf16 peak of this GPU: {fmt(peak and peak / 1e12, '.0f')} TFLOP/s; MFU below uses 989 "
        f"TFLOP/s for both sides")
    if not measure:
        out("\nNo CUDA GPU here: the GPU figures are NOT MEASURED. Run this script on a GPU (or --smoke on the CPU "
            "to check that it runs).")

    if not args.skip_train:
        out("\n## Training: model + optimizer step, random tokens\n")
        out("| config | ours tok/s | ours MFU | ours peak memory | nanochat tok/s | nanochat MFU | ours / nanochat "
            "| before (ours / nanochat, H200) |")
        out("|---|---:|---:|---:|---:|---:|---:|---|")
        for label, depth, T, B, V, optimizer, comp, with_nc in (SMOKE_TRAIN if args.smoke else TRAIN):
            ours = nc = mem = None
            if measure:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                r, err = _try(ours_train, depth, T, B, V, optimizer, comp, device, 2 if args.smoke else args.steps)
                if err:
                    out(f"<!-- ours failed: {err} -->")
                ours = r
                mem = torch.cuda.max_memory_allocated() / 1e9 if cuda and r else None
                if with_nc and args.nanochat:
                    nc, err = _try(nanochat_train, depth, T, B, V, comp, device, 2 if args.smoke else args.steps)
                    if err:
                        out(f"<!-- nanochat failed: {err} -->")
            ratio = ours[0] / nc[0] if ours and nc else None
            before = BEFORE.get(label, (None, None))
            out(f"| {label} | {fmt(ours and ours[0])} | {fmt(ours and ours[0] * ours[1] / MFU_PEAK, '.1%')} | "
                f"{fmt(mem, '.1f')}{' GB' if mem else ''} | {fmt(nc and nc[0])} | "
                f"{fmt(nc and nc[0] * nc[1] / MFU_PEAK, '.1%')} | {fmt(ratio, '.2f')}{'x' if ratio else ''} | "
                f"{fmt(before[0])} / {fmt(before[1])} |")

    if not args.skip_decode:
        depth, V = (2, 512) if args.smoke else (12, 32768)
        new = 8 if args.smoke else args.new
        batches = [1, 2] if args.smoke else [int(b) for b in args.batches.split(",")]
        out(f"\n## Decoding: depth {depth}, vocab {V}, 64-token prompt + {new} new tokens, KV cache, tok/s\n")
        out("| batch | ours, fast (CUDA graph) | ours, plain forward | nanochat Engine | fast / nanochat | "
            "before (ours / nanochat, H200) |")
        out("|---:|---:|---:|---:|---:|---|")
        model = nmodel = None
        if measure:
            torch.manual_seed(0)
            model = GPT(GPTConfig.from_depth(depth, vocab_size=V, sequence_len=2048, window_pattern="L"),
                        device=device, compute_dtype=compute_dtype(device)).eval()
            with torch.no_grad():
                for prm in model.parameters():
                    prm.add_(0.02 * torch.randn_like(prm))
            if args.nanochat:
                nmodel, err = _try(nanochat_model, depth, 2048, V, device)
                if err:
                    out(f"<!-- nanochat model failed: {err} -->")
        prompt = list(range(1, 65))
        for b in batches:
            fast = plain = nc = None
            if measure:
                fast, err = _try(ours_decode, model, b, prompt, new, True, device)
                if err:
                    out(f"<!-- ours fast failed: {err} -->")
                plain, err = _try(ours_decode, model, b, prompt, new, False, device)
                if err:
                    out(f"<!-- ours plain failed: {err} -->")
                if nmodel is not None:
                    nc, err = _try(nanochat_decode, nmodel, b, prompt, new, device)
                    if err:
                        out(f"<!-- nanochat failed: {err} -->")
            ratio = fast / nc if fast and nc else None
            before = BEFORE_DECODE.get(b, (None, None))
            out(f"| {b} | {fmt(fast)} | {fmt(plain)} | {fmt(nc)} | {fmt(ratio, '.2f')}{'x' if ratio else ''} | "
                f"{fmt(before[0])} / {fmt(before[1])} |")
        if cuda and model is not None:
            weights = sum(p.numel() for p in model.parameters()) * 2  # bf16 bytes read per token at batch 1
            out(f"\nbatch-1 bound from memory bandwidth (~4.3 TB/s on an H200): {4.3e12 / weights:,.0f} tok/s "
                f"({weights / 1e6:.0f} MB of bf16 weights per token)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
