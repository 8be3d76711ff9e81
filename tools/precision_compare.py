"""
Does bf16 compute hold the loss curve on CPU? Train the same model on the same batches twice, fp32 and
bf16 (fp32 master weights in both), and compare train loss, validation bits-per-byte and speed.

    python tools/precision_compare.py --steps 300      # ~10 min on 2 cores
Uses the embedded corpus and tokenizer under $MINI_NANOCHAT_HOME (built if missing).
"""
from __future__ import annotations

import argparse
import math
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--val-tokens", type=int, default=2 ** 16)
    p.add_argument("--preset", default="modern")
    args = p.parse_args()

    from mini_nanochat.dataloader import DataLoader, build_val_loader
    from mini_nanochat.gpt import GPT, GPTConfig
    from mini_nanochat.stages import data, tok_train
    from mini_nanochat.tokenizer import get_tokenizer

    data.main([])
    tok_train.main([])
    tok = get_tokenizer()
    token_bytes = torch.tensor(tok.token_bytes())
    val = list(build_val_loader(tok, args.B, args.T, tokens=args.val_tokens))

    def val_bpb(model) -> float:
        nats, nbytes = 0.0, 0
        with torch.no_grad():
            for x, y in val:
                loss = model(x, y, loss_reduction="none")
                b = token_bytes[y.reshape(-1)]
                nats += (loss * (b > 0)).sum().item()
                nbytes += b.sum().item()
        return nats / (math.log(2) * nbytes)

    results = {}
    for dname in ("float32", "bfloat16"):
        torch.manual_seed(0)
        cfg = GPTConfig.from_depth(args.depth, vocab_size=tok.vocab_size, sequence_len=args.T, preset=args.preset)
        model = GPT(cfg, compute_dtype=getattr(torch, dname))
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        loader = DataLoader(tok, args.B, args.T, seed=0)
        curve, vals = [], {}
        t0 = time.perf_counter()
        for step in range(args.steps + 1):
            if step % args.eval_every == 0:
                vals[step] = val_bpb(model)
                print(f"{dname} step {step}: val bpb {vals[step]:.4f}", flush=True)
            if step == args.steps:
                break
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, (step + 1) / 20)
            x, y = next(loader)
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(loss.item())
        elapsed = time.perf_counter() - t0
        loader.close()
        results[dname] = (curve, vals, elapsed)

    print("\n| step | train loss fp32 (mean of last 10) | train loss bf16 | val bpb fp32 | val bpb bf16 |")
    print("|---:|---:|---:|---:|---:|")
    for step in sorted(results["float32"][1]):
        def tl(name):
            c = results[name][0][max(0, step - 10):step]
            return f"{sum(c) / len(c):.4f}" if c else "-"
        print(f"| {step} | {tl('float32')} | {tl('bfloat16')} | {results['float32'][1][step]:.4f} | "
              f"{results['bfloat16'][1][step]:.4f} |")
    for name, (_, _, elapsed) in results.items():
        print(f"{name}: {args.steps} steps in {elapsed:.0f}s (including evaluation)")


if __name__ == "__main__":
    main()
