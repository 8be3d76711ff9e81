"""
Benchmark: tokens/s of base-train with 2 processes (torchrun, gloo, 1 thread each) vs 1 process (1 thread,
and 2 threads), at the reference CPU config (depth 4, T 256, device batch 8). Each run trains
--steps steps in a temporary run directory and reads tok/s from its summary.json.

    python benchmarks/bench_distributed.py --steps 30
Uses the corpus and tokenizer under $MINI_NANOCHAT_HOME (built if missing).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def run(cmd: list[str], threads: int, run_dir: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(open(os.path.join(run_dir, "summary.json")).read())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--depth", type=int, default=4)
    args = p.parse_args()
    from mini_nanochat.stages import data, tok_train

    data.main([])
    tok_train.main([])
    common = ["base-train", "--depth", str(args.depth), "--max-seq-len", "256", "--device-batch-size", "8",
              "--num-iterations", str(args.steps), "--eval-every", "0", "--eval-tokens", "2048", "--dtype", "float32"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, launcher, threads in [
            ("1 process, 1 thread", [sys.executable, "-m", "mini_nanochat"], 1),
            ("1 process, 2 threads", [sys.executable, "-m", "mini_nanochat"], 2),
            ("2 processes (ddp), 1 thread each", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 "--nproc_per_node=2", "-m", "mini_nanochat"], 1),
            ("2 processes (zero2), 1 thread each", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node=2", "-m", "mini_nanochat"], 1),
        ]:
            d = os.path.join(tmp, name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""))
            extra = ["--sync", "zero2"] if "zero2" in name else []
            s = run(launcher + common + ["--run-dir", d] + extra, threads, d)
            rows.append((name, s["tok_per_s"], s["mfu"]))
            print(f"{name}: {s['tok_per_s']:,.0f} tok/s", flush=True)
    base = rows[0][1]
    print(f"\n| configuration (depth {args.depth}, T 256, B 8 per rank, {args.steps} steps) | tok/s | MFU | x 1 process 1 thread |")
    print("|---|---:|---:|---:|")
    for name, tps, mfu in rows:
        print(f"| {name} | {tps:,.0f} | {mfu:.2f} | {tps / base:.2f} |")


if __name__ == "__main__":
    main()
