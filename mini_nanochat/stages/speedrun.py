"""
Stage `speedrun`: the main job, every stage that exists so far, in order, with CPU-sized defaults:

    data -> tok-train -> tok-eval -> base-train (depth 4, 300 steps) -> base-eval (bits per byte, CORE on
    20 items per task) -> sft (800 steps: runs/speedrun-sft) -> rl (runs/speedrun-rl) -> report

About a quarter of an hour on 2 cores; it ends with a chat model that uses its calculator:
`python -m mini_nanochat chat -p "What is 123 + 456?"`. Stages whose artifacts are already complete are
skipped, and an interrupted training stage resumes from its last checkpoint, so the command can be re-run.
"""
from __future__ import annotations

import argparse
import time

import json

from ..checkpoint import latest_checkpoint
from ..common import get_base_dir, get_dist_info, print0, write_json_atomic
from . import base_eval, base_train, data, report, rl, sft, tok_eval, tok_train


RL_STEPS = 60
RL_FLAGS: list[str] = []  # the rl stage's defaults (ADR 0036)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat speedrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    p.add_argument("--depth", type=int, default=4, help="model depth for pretraining")
    p.add_argument("--iterations", type=int, default=300, help="pretraining steps (2,048 tokens each)")
    p.add_argument("--model-tag", default="speedrun", help="the pretraining run: <base>/runs/<tag>")
    p.add_argument("--sft-iterations", type=int, default=800, help="supervised fine-tuning steps (0 = stop before SFT)")
    p.add_argument("--rl-iterations", type=int, default=RL_STEPS, help="RL steps after SFT (0 = none)")
    p.add_argument("--eval-questions", type=int, default=50, help="held-out arithmetic questions after sft and rl")
    p.add_argument("--eval-per-task", type=int, default=20,
                   help="CORE items scored per task by base-eval (a seeded sample; 0 = skip base-eval)")
    return p


def _evaluate(args: argparse.Namespace) -> None:
    if args.eval_per_task <= 0:
        print0("base-eval skipped (--eval-per-task 0)")
        return
    run_dir = get_base_dir() / "runs" / args.model_tag
    done = run_dir / "eval" / "base_eval.json"
    ck = latest_checkpoint(run_dir)
    if done.is_file() and ck is not None:
        s = json.loads(done.read_text())
        if s.get("checkpoint") == str(ck) and s.get("max_per_task") == args.eval_per_task and s.get("core_tasks") == 20:
            print0(f"base-eval already done for {ck.name}: CORE {s['core']:.4f}, val bpb {s['val_bpb']:.4f} "
                   f"(delete {done} to redo)")
            return
    base_eval.main(["--model-tag", args.model_tag, "--max-per-task", str(args.eval_per_task)])


def _finished(run_dir, steps: int) -> dict | None:
    """The summary of a training stage that completed `steps` steps, else None."""
    path = run_dir / "summary.json"
    if path.is_file():
        s = json.loads(path.read_text())
        if s.get("steps") == steps:
            return s
    return None


def _sft(args: argparse.Namespace) -> None:
    if args.sft_iterations <= 0:
        print0("sft skipped (--sft-iterations 0)")
        return
    run_dir = get_base_dir() / "runs" / f"{args.model_tag}-sft"
    s = _finished(run_dir, args.sft_iterations)
    if s is not None:
        a = s.get("arithmetic", {})
        print0(f"sft already done in {run_dir}: val loss {s['final_val_loss']:.4f}"
               + (f", arithmetic {a['accuracy']:.0%}" if a else "") + " (delete it to redo)")
        return
    flags = ["--model-tag", args.model_tag, "--num-iterations", str(args.sft_iterations),
             "--eval-questions", str(args.eval_questions)]
    sft.main(flags + (["--resume"] if latest_checkpoint(run_dir) is not None else []))


def _rl(args: argparse.Namespace) -> None:
    if args.rl_iterations <= 0 or args.sft_iterations <= 0:
        print0("rl skipped")
        return
    run_dir = get_base_dir() / "runs" / f"{args.model_tag}-rl"
    if _finished(run_dir, args.rl_iterations) is not None:
        print0(f"rl already done in {run_dir} (delete it to redo)")
        return
    flags = ["--model-tag", args.model_tag, "--num-iterations", str(args.rl_iterations),
             "--eval-questions", str(args.eval_questions), *RL_FLAGS]
    rl.main(flags + (["--resume"] if latest_checkpoint(run_dir) is not None else []))


def _pretrain(args: argparse.Namespace) -> None:
    run_dir = get_base_dir() / "runs" / args.model_tag
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("steps") == args.iterations:
        s = json.loads(summary.read_text())
        print0(f"pretraining already done in {run_dir}: val bpb {s['final_val_bpb']:.4f} (delete it to retrain)")
        return
    flags = ["--depth", str(args.depth), "--num-iterations", str(args.iterations), "--model-tag", args.model_tag,
             "--eval-every", "100", "--eval-tokens", str(2**16), "--save-every", "100"]
    if latest_checkpoint(run_dir) is not None:
        flags.append("--resume")
    base_train.main(flags)


def run(args: argparse.Namespace) -> None:
    print0(f"== speedrun == (artifacts under {get_base_dir()})")
    t0 = time.time()
    steps = [
        ("data", lambda: data.main([])),
        ("tok-train", lambda: tok_train.main(["--vocab-size", str(args.vocab_size)])),
        ("tok-eval", lambda: tok_eval.main([])),
        ("base-train", lambda: _pretrain(args)),
        ("base-eval", lambda: _evaluate(args)),
        ("sft", lambda: _sft(args)),
        ("rl", lambda: _rl(args)),
        ("report", lambda: report.main(["--model-tag", args.model_tag])),
    ]
    times = {}
    for i, (name, fn) in enumerate(steps, 1):
        print0(f"\n[{i}/{len(steps)}] {name}")
        t = time.time()
        fn()
        times[name] = time.time() - t
    total = time.time() - t0
    print0(f"\nspeedrun done in {total:.1f}s  (" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + ")")
    if get_dist_info().is_master:
        write_json_atomic(get_base_dir() / "runs" / args.model_tag / "speedrun_times.json",
                          {"stages_seconds": times, "total_seconds": total})
    if args.sft_iterations > 0:
        print0('talk to the chat model:  python -m mini_nanochat chat -p "What is 123 + 456?"   (or `chat` for a '
               'conversation; `--stage base` for the pretrained model)')
        print0("serve it (OpenAI API + web chat):  python -m mini_nanochat serve   then open http://127.0.0.1:8000")
    print0(f"the report card:         {get_base_dir() / 'reports' / (args.model_tag + '.md')}")


def main(argv: list[str] | None = None) -> None:
    run(get_parser().parse_args(argv))
