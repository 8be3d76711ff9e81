"""
Stage `chat-eval`: score a chat model on ARC-Easy, ARC-Challenge and MMLU (categorical: the answer
letters' logits) and GSM8K and HumanEval (generative: the Engine writes a reply, with the calculator
tool; HumanEval code runs in a sandbox), then ChatCORE, the mean centred accuracy.

    python -m mini_nanochat chat-eval --model-tag d20                          # every task, every item
    python -m mini_nanochat chat-eval --model-tag d4 --max-per-task 20         # a quick look
    python -m mini_nanochat chat-eval --model-tag d20 --tasks GSM8K --num-samples 10 --temperature 0.8
    torchrun --nproc_per_node=8 -m mini_nanochat chat-eval --model-tag d20     # items split over ranks

Writes, under runs/<tag>/eval/: chat/<task>.jsonl (one line per item: id, prediction, gold, correct;
the completion and the sandbox status for generative tasks) and chat_eval.json (the summary that the
report stage reads). Tasks scored earlier on the same checkpoint with the same --max-per-task stay in the
summary, so tasks can be run one at a time. A base model (no SFT yet) can be scored too: expect
chance-level numbers.
The library is mini_nanochat/chat_eval.py; the items come from mini_nanochat/tasks/.
"""
from __future__ import annotations

import argparse
import datetime
import math
import time

from ..common import UserError, autodetect_device, get_dist_info, is_plain_name, print0, print_config

DEFAULT_MAX_NEW_TOKENS = 256


def get_parser() -> argparse.ArgumentParser:
    from ..chat_eval import ALL_TASKS, SUBSAMPLE_SEED

    p = argparse.ArgumentParser(prog="mini-nanochat chat-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    from ..checkpoint import add_run_flags

    add_run_flags(p, run_dir=False)
    a("--tasks", default=",".join(ALL_TASKS), help=f"comma-separated, from: {', '.join(ALL_TASKS)}")
    a("--max-per-task", type=int, default=-1,
      help=f"items per task: the first N after a shuffle with seed {SUBSAMPLE_SEED} (-1: all)")
    a("--max-new-tokens", type=int, default=None,
      help=f"tokens per generated reply (GSM8K, HumanEval); default {DEFAULT_MAX_NEW_TOKENS}, or half the model's "
           f"context if that is less (the prompt gets the rest)")
    a("--temperature", type=float, default=0.0, help="sampling temperature of generated replies (0 = greedy)")
    a("--top-k", type=int, default=50, help="sample among the k most likely tokens when temperature > 0 (0 = off)")
    a("--num-samples", type=int, default=1,
      help="replies per generative item (> 1 needs --temperature > 0); accuracy is the unbiased pass@1")
    a("--batch-size", type=int, default=8, help="questions per forward pass (categorical tasks)")
    a("--seed", type=int, default=0, help="seed of tie-breaking between equal letter logits and of sampling")
    a("--exec-timeout", type=float, default=10.0, help="seconds one HumanEval program may run in the sandbox")
    a("--exec-memory-mb", type=int, default=1024, help="memory limit of one HumanEval program (MiB)")
    a("--device", default="", help="cuda / mps / cpu (default: autodetect)")
    a("--card", action=argparse.BooleanOptionalAction, default=True,
      help="also write eval/chat_card.json for the report: identity answers, sample replies, a multi-turn chat")
    return p


def parse_tasks(text: str) -> list[str]:
    """"ARC-Easy, GSM8K" -> ["ARC-Easy", "GSM8K"] (order kept, duplicates dropped); UserError for a name
    that is not a task (case-insensitive match suggested)."""
    from ..chat_eval import ALL_TASKS

    names = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        if name not in ALL_TASKS:
            fix = next((t for t in ALL_TASKS if t.lower() == name.lower()), None)
            hint = f" (did you mean {fix}?)" if fix else ""
            raise UserError(f"unknown task {name!r:.60}{hint}; --tasks takes a comma-separated list of "
                            f"{', '.join(ALL_TASKS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise UserError(f"--tasks is empty; choose from {', '.join(ALL_TASKS)}")
    return names


def validate(args: argparse.Namespace) -> list[str]:
    """Every flag, before any item or model is loaded; returns the task names."""
    from ..engine import check_positive, check_seed, check_temperature, check_top_k

    if not is_plain_name(args.model_tag):
        raise UserError(f"--model-tag {args.model_tag!r:.60} is not a plain name (letters, digits, '.', '_', '-'; "
                        f"no '/' or '..')")
    tasks = parse_tasks(args.tasks)
    if args.max_per_task != -1 and args.max_per_task < 1:
        raise UserError(f"--max-per-task must be at least 1 (or -1: all items), got {args.max_per_task}")
    try:
        if args.max_new_tokens is not None:
            check_positive(args.max_new_tokens, "--max-new-tokens")
        check_positive(args.num_samples, "--num-samples")
        check_positive(args.batch_size, "--batch-size")
        check_temperature(args.temperature, "--temperature")
        check_top_k(args.top_k, "--top-k")
        check_seed(args.seed, "--seed")
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.num_samples > 1 and args.temperature == 0:
        raise UserError("--num-samples > 1 needs --temperature > 0: greedy decoding gives the same reply every time")
    if not (math.isfinite(args.exec_timeout) and 0 < args.exec_timeout <= 600):
        raise UserError(f"--exec-timeout must be in (0, 600] seconds, got {args.exec_timeout}")
    if not 64 <= args.exec_memory_mb <= 1 << 20:
        raise UserError(f"--exec-memory-mb must be between 64 and {1 << 20}, got {args.exec_memory_mb}")
    return tasks


def load_items(tasks: list[str], max_per_task: int) -> dict[str, list[dict]]:
    """Each task's items (the fixed subsample); a missing items package is one line."""
    from ..chat_eval import load_task, subsample
    from ..tasks import TaskDataError

    out = {}
    for name in tasks:
        try:
            out[name] = subsample(load_task(name), None if max_per_task == -1 else max_per_task)
        except TaskDataError as e:
            raise UserError(f"{name}: {e}") from None
    return out


def run(args: argparse.Namespace) -> dict:
    from ..chat_eval import ALL_TASKS, chatcore, evaluate_task
    from ..checkpoint import CheckpointError, latest_checkpoint, load_model
    from ..common import earlier_eval_summary, write_json_atomic, write_jsonl_atomic
    from ..distributed import destroy, device_for_rank, init_distributed
    from ..engine import Engine

    t0 = time.time()
    tasks = validate(args)
    from ..checkpoint import run_from_flags

    run_dir = run_from_flags(args)
    if latest_checkpoint(run_dir) is None:
        raise UserError(f"no checkpoint in {run_dir}; train one first (base-train --model-tag {args.model_tag})")
    items = load_items(tasks, args.max_per_task)  # before the model: a missing package costs nothing
    dist = get_dist_info()
    try:
        device = device_for_rank(autodetect_device(args.device or None))
    except (RuntimeError, ValueError) as e:
        raise UserError(str(e)) from None
    init_distributed(device)
    try:
        try:
            model, tok, meta = load_model(run_dir, device)
        except CheckpointError as e:
            raise UserError(str(e).splitlines()[0] if str(e) else "unreadable checkpoint") from None
        window = model.config.sequence_len
        if args.max_new_tokens is None:  # the speedrun's CPU model has a 256-token context: leave room for the prompt
            args.max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, max(1, window // 2))
        elif any(t in ("GSM8K", "HumanEval") for t in tasks) and args.max_new_tokens >= window:
            raise UserError(f"--max-new-tokens must be below the model's context ({window}), got {args.max_new_tokens}")
        print_config("chat-eval", {
            "run": run_dir.name, "checkpoint": meta["checkpoint"], "step": meta.get("step"),
            "fine-tuned": bool(meta.get("sft")), "device": device, "world_size": dist.world_size,
            "tasks": ", ".join(f"{t} ({len(items[t])})" for t in tasks),
            "max_per_task": args.max_per_task, "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "num_samples": args.num_samples, "seed": args.seed, "exec_timeout": args.exec_timeout,
            "exec_memory_mb": args.exec_memory_mb})
        if not meta.get("sft"):
            print0("note: a base model (never fine-tuned on conversations): expect scores near chance")
        engine = Engine(model, tok)
        out_dir = run_dir / "eval"
        results = {}
        for name in tasks:
            res = evaluate_task(name, model, tok, items[name], engine=engine, batch_size=args.batch_size,
                                num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                                exec_timeout=args.exec_timeout, memory_mb=args.exec_memory_mb,
                                rank=dist.rank, world_size=dist.world_size, progress=dist.is_master)
            results[name] = res
            extra = "".join(f"  pass@{k} {v:.4f}" for k, v in res.pass_at.items())
            cut = sum(1 for r in res.records if r.get("truncated"))
            extra += f"  ({cut} prompts cut to fit the context)" if cut and dist.is_master else ""
            print0(f"{name:<14} accuracy {res.accuracy:.4f}  centred {res.centered:+.4f}  chance {res.chance:.4f}  "
                   f"n {res.n}  {res.seconds:.1f}s{extra}")
            if dist.is_master:
                write_jsonl_atomic(out_dir / "chat" / f"{name}.jsonl", res.records)
        path = out_dir / "chat_eval.json"
        entries = {name: r.summary() for name, r in results.items()}
        settings = {"max_per_task": int(args.max_per_task), "temperature": args.temperature,
                    "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens}
        old = earlier_eval_summary(path, checkpoint=str(meta["checkpoint"]), **settings) or {}
        earlier = {k: v for k, v in old.get("tasks", {}).items()
                   if k in ALL_TASKS and isinstance(v, dict) and isinstance(v.get("centered"), (int, float))}
        kept = sorted(set(earlier) - set(entries))
        if kept:  # another run of other tasks under the same settings adds to the summary (as base-eval does)
            print0(f"kept the results of {', '.join(kept)} from the earlier {path}")
        entries = {name: ({**earlier, **entries})[name] for name in ALL_TASKS if name in entries or name in earlier}
        score = chatcore({name: e["centered"] for name, e in entries.items()})
        summary = {
            "stage": "chat-eval", "run": run_dir.name, "checkpoint": str(meta["checkpoint"]),
            "step": int(meta.get("step", -1)),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), **settings,
            "tasks": entries, "chatcore": score,
            "seconds": round(time.time() - t0 + (old.get("seconds", 0.0) if kept else 0.0), 3),
        }
        print0(f"ChatCORE {score:.4f} (mean centred accuracy over {len(entries)} task{'s' * (len(entries) > 1)}: "
               f"{', '.join(entries)})")
        if dist.is_master:
            write_json_atomic(path, summary)
            print0(f"wrote {path} and {out_dir / 'chat'}/<task>.jsonl")
            if args.card:
                from ..chat_eval import chat_card

                card = chat_card(engine, tok)
                card.update(checkpoint=str(meta["checkpoint"]), step=int(meta.get("step", -1)))
                write_json_atomic(out_dir / "chat_card.json", card)
                print0(f"identity: {card['identity']['correct']} of {card['identity']['n']} held-out \"who are "
                       f"you?\" questions answered with the name; wrote {out_dir / 'chat_card.json'}")
        return summary
    finally:
        destroy()


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
