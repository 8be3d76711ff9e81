"""
The speedrun's budget study: which depth, context length and batch give the lowest val bpb for a fixed
amount of pretraining *time* on this machine (ADR 0041).

    python tools/budget_study.py --home /tmp/study probe                  # speed of every candidate
    python tools/budget_study.py --home /tmp/study train --seconds 240    # quality at equal time
    python tools/budget_study.py --home /tmp/study table

`--home` is a base directory that already holds the embedded corpus and the `default` tokenizer (run
`data` and `tok-train` there first, or point at a speedrun's base directory: the study writes only
runs/budget-* and budget_study.json).

Speed and quality are measured apart, and in CPU time rather than wall time, because the machine this
study ran on was shared (ADR 0041):
1. `probe`: CPU seconds per training step of each candidate with one torch thread: the process time of
   base-train at 16 steps minus that at 8 steps, over 8 (setup and the final evaluation cancel out).
   One thread, so that other processes on the machine take turns with it instead of stalling its
   thread team; CPU time, so that waiting for the core does not count.
2. `train`: each candidate trains for as many steps as `--seconds` of CPU time buys at its probed cost
   (the LR schedule needs its horizon up front, as the speedrun's plan does), one thread, then its final
   val bpb on the same 65,536 held-out tokens the speedrun evaluates. A fixed step count fixes the result
   whatever the load (`--jobs 2` trains two candidates side by side).
Two threads on a quiet machine run each step 1.5-2x faster than one; the ranking at equal CPU time is
what carries over to the speedrun, whose plan measures its own wall-clock speed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

# name -> base-train flags (tokens per step = device batch x T)
CANDIDATES = {
    "d4-T256-b8": ["--depth", "4", "--max-seq-len", "256", "--device-batch-size", "8"],
    "d4-T512-b8": ["--depth", "4", "--max-seq-len", "512", "--device-batch-size", "8"],
    "d4-T256-b4": ["--depth", "4", "--max-seq-len", "256", "--device-batch-size", "4"],
    "d4-T128-b16": ["--depth", "4", "--max-seq-len", "128", "--device-batch-size", "16"],
    "d6-T256-b8": ["--depth", "6", "--max-seq-len", "256", "--device-batch-size", "8"],
    "d6-T512-b8": ["--depth", "6", "--max-seq-len", "512", "--device-batch-size", "8"],
}
COMMON = ["--eval-tokens", str(2**16), "--sample-every", "0", "--save-every", "0"]


def tokens_per_step(flags: list[str]) -> int:
    f = dict(zip(flags[::2], flags[1::2]))
    return int(f["--max-seq-len"]) * int(f["--device-batch-size"])


def train(name: str, flags: list[str], steps: int, eval_every: int) -> dict:
    from mini_nanochat.common import get_base_dir
    from mini_nanochat.stages import base_train

    tag = f"budget-{name}"
    shutil.rmtree(get_base_dir() / "runs" / tag, ignore_errors=True)
    t0 = time.time()
    summary = base_train.main(flags + COMMON + ["--num-iterations", str(steps), "--eval-every", str(eval_every),
                                                "--model-tag", tag])
    summary["wall_s"] = time.time() - t0
    return summary


def probe_once(name: str) -> float:
    """CPU seconds per step (one thread): process time at 16 steps minus at 8 steps, over 8."""
    cpu = []
    for steps in (8, 16):
        t = time.process_time()
        train(name, CANDIDATES[name], steps, 0)
        cpu.append(time.process_time() - t)
    return (cpu[1] - cpu[0]) / 8


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"probe": {}, "train": {}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="base directory with the corpus and the default tokenizer")
    p.add_argument("what", choices=["probe", "train", "table", "common-eval"])
    p.add_argument("--seconds", type=float, default=240.0, help="pretraining CPU time per candidate (train)")
    p.add_argument("--only", default="", help="comma-separated candidate names")
    p.add_argument("--rounds", type=int, default=1, help="probe rounds (the median is kept)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for `train` (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="candidates trained side by side (`train`)")
    args = p.parse_args()
    home = Path(args.home).resolve()
    os.environ["MINI_NANOCHAT_HOME"] = str(home)
    names = [n for n in CANDIDATES if not args.only or n in args.only.split(",")]
    out = home / "budget_study.json"
    import torch

    torch.set_num_threads(1) if args.what == "probe" else None
    if args.what == "probe":
        speeds = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                speeds[n].append(probe_once(n))
                shutil.rmtree(home / "runs" / f"budget-{n}", ignore_errors=True)
        res = load(out)
        for n, v in speeds.items():
            res["probe"][n] = {"cpu_s_per_step": sorted(v)[len(v) // 2], "all": v,
                               "date": time.strftime("%Y-%m-%d %H:%M")}
        out.write_text(json.dumps(res, indent=1))
    elif args.what == "train":
        if args.jobs > 1:
            import subprocess
            import sys
            groups = [names[i::args.jobs] for i in range(args.jobs)]
            procs = [subprocess.Popen([sys.executable, __file__, "--home", str(home), "train", "--seconds",
                                       str(args.seconds), "--threads", str(args.threads), "--only", ",".join(g),
                                       ]) for g in groups if g]
            for pr in procs:
                pr.wait()
        else:
            import torch
            if args.threads:
                torch.set_num_threads(args.threads)
            for n in names:
                res = load(out)
                cost = res["probe"][n]["cpu_s_per_step"]
                steps = max(20, int(args.seconds / cost))
                s = train(n, CANDIDATES[n], steps, max(1, steps // 4))
                res = load(out)  # another job may have written meanwhile
                res["train"][f"{n}@{args.seconds:.0f}s"] = {
                    "candidate": n, "seconds_budget": args.seconds, "cpu_s_per_step": cost, "steps": steps,
                    "tokens": steps * tokens_per_step(CANDIDATES[n]), "val_bpb": s["final_val_bpb"],
                    "date": time.strftime("%Y-%m-%d %H:%M")}
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(res, indent=1))
                tmp.replace(out)
                print(f"== {n}: {steps} steps, val bpb {s['final_val_bpb']:.4f}", flush=True)
    elif args.what == "common-eval":
        # val bpb depends on the context it is measured with: at T=128 best-fit packing keeps mostly the
        # openings of documents, at T=512 more of their middles. Every finished run is measured again on
        # one stream (T=128 rows, the shortest any candidate trained on) so the shapes compare.
        from mini_nanochat.checkpoint import latest_checkpoint, load_model
        from mini_nanochat.dataloader import build_val_loader
        from mini_nanochat.loss_eval import evaluate_bpb

        res = load(out)
        res.setdefault("common_eval", {})
        for n in names:
            run = home / "runs" / f"budget-{n}"
            ck = latest_checkpoint(run)
            if ck is None:
                continue
            model, tok, meta = load_model(run, "cpu", dtype=torch.float32)
            token_bytes = torch.tensor(tok.token_bytes(), dtype=torch.int64)
            bpb = evaluate_bpb(model, build_val_loader(tok, 16, 128, 2**16), token_bytes)
            res["common_eval"][f"{n}@step{meta.get('step')}"] = {"candidate": n, "step": meta.get("step"),
                                                                  "val_bpb_T128": bpb}
            print(f"{n} step {meta.get('step')}: val bpb at T=128 {bpb:.4f}", flush=True)
        out.write_text(json.dumps(res, indent=1))
    res = load(out)
    print("| candidate | CPU s budget | CPU s/step (1 thread) | steps | tokens | val bpb |")
    print("|---|---|---|---|---|---|")
    for r in sorted(res["train"].values(), key=lambda r: (r["seconds_budget"], r["val_bpb"])):
        print(f"| {r['candidate']} | {r['seconds_budget']:.0f} | {r['cpu_s_per_step']:.3f} | {r['steps']:,} | "
              f"{r['tokens']:,} | {r['val_bpb']:.4f} |")


if __name__ == "__main__":
    main()
