"""
Stage `history`: the history lab. Train each era's recipe (GPT-2 2019, LLaMA 2023, modern 2025) and
single-idea ablations from the modern recipe on the same data and the same CPU-time budget, with several
seeds, and write a table and a plot of validation bits per byte with the spread over seeds.

    python -m mini_nanochat history --budget-s 120                  # quick mode: a smoke test, 2.2 CPU-s per run
    nice -n 10 python -m mini_nanochat history --budget-s 540       # the measured table (HISTORICAL_TIMELINE.md)
    python -m mini_nanochat history --only modern,gpt2,llama --seeds 2

--budget-s is the CPU-time budget of the whole lab: it is split evenly over runs x seeds, and each run
trains until its main thread has used its share (single-threaded; evaluation, startup and the loader's
tokenizer thread come on top). With --jobs 2 two runs go at once, so the wall time is about
budget / 2 plus overhead. Finished runs are kept under --out/results/ and skipped on a re-run with the same
budget, seeds and recipe, so an interrupted lab resumes. How and why: mini_nanochat/history_lab.py, ADR 0042.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

from ..common import UserError, get_base_dir, print0, print_config, require, write_json_atomic, write_text_atomic


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat history", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="CPU seconds for the whole lab, split evenly over runs x seeds (120: the quick mode)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per run (the spread in the table)")
    p.add_argument("--only", default="", help="comma-separated run names (default: all; 'modern' is always added)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one core each")
    p.add_argument("--out", default="", help="lab directory (default: <base>/history)")
    p.add_argument("--corpus", default="embedded", help="corpus under <base>/data (train split to train, val to evaluate)")
    p.add_argument("--table-only", action="store_true",
                   help="write the table and plot from the runs already finished at this budget; train nothing")
    p.add_argument("--list", action="store_true", help="list the runs and what each changes, then stop")
    return p


def _work(task):
    """Worker: one (run, seed) in its own process (a Pool worker, reused for several runs)."""
    spec, seed, budget, lab_dir, corpus, base_dir = task
    from ..history_lab import train_one

    return train_one(spec, seed, budget, Path(lab_dir), corpus, base_dir)


def main(argv: list[str] | None = None) -> dict:
    from ..history_lab import (LAB_B, LAB_DEPTH, LAB_T, lab_runs, load_result, markdown_table, plot,
                               summarise)

    args = get_parser().parse_args(argv)
    specs = lab_runs()
    if args.list:
        for s in specs.values():
            print0(f"{s.name:<15} {s.group:<10} {s.changed}")
        return {"runs": list(specs)}
    require(args.budget_s > 0, f"--budget-s must be positive, got {args.budget_s}")
    require(args.seeds >= 1, f"--seeds must be at least 1, got {args.seeds}")
    require(args.jobs >= 1, f"--jobs must be at least 1, got {args.jobs}")
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise UserError(f"--only: unknown run(s) {', '.join(unknown)}; `history --list` shows them")
        names = ["modern"] + [n for n in names if n != "modern"]  # the baseline every delta refers to
        specs = {n: specs[n] for n in specs if n in names}
    from ..dataset import list_shards

    base_dir = get_base_dir()
    list_shards(args.corpus, "train")  # a missing corpus is one line now (run the data stage), not a worker crash
    list_shards(args.corpus, "val")
    lab_dir = Path(args.out) if args.out else base_dir / "history"
    lab_dir.mkdir(parents=True, exist_ok=True)
    per_run = round(args.budget_s / (len(specs) * args.seeds), 2)
    require(per_run >= 0.1, f"--budget-s {args.budget_s:g} gives {per_run:g} s per run: too little to train")
    tasks, done = [], []
    for seed in range(args.seeds):  # seed-major: a lab stopped early has every run at some seeds
        for spec in specs.values():
            r = load_result(lab_dir, spec, seed, per_run)
            if r is not None:
                done.append(r)
            elif not args.table_only:
                tasks.append((spec, seed, per_run, str(lab_dir), args.corpus, str(base_dir)))
    print_config("history", {"runs": ", ".join(specs), "seeds": args.seeds, "budget (CPU s, whole lab)": args.budget_s,
                             "budget per run (CPU s)": per_run, "model": f"depth {LAB_DEPTH}, T {LAB_T}, batch {LAB_B}",
                             "jobs": args.jobs, "kept from earlier": len(done), "to train": len(tasks),
                             "lab dir": str(lab_dir)})
    start = time.time()
    if tasks:
        # the tokenizers first, in this process: workers would otherwise wait on each other's lock
        from ..history_lab import lab_tokenizer, warm_up

        for v in sorted({t[0].vocab_size for t in tasks}):
            lab_tokenizer(lab_dir, v, args.corpus, base_dir)
        if args.jobs == 1:  # in this process (the tests; no interpreter start-up per worker)
            import torch

            threads = torch.get_num_threads()
            warm_up()
            results = map(_work, tasks)
        else:
            ctx = mp.get_context("spawn")  # fresh interpreters: no fork of a process holding torch threads
            pool = ctx.Pool(min(args.jobs, len(tasks)), initializer=warm_up)
            results = pool.imap_unordered(_work, tasks)
        try:
            for i, r in enumerate(results, 1):
                done.append(r)
                print0(f"[{i}/{len(tasks)}] {r['run']} seed {r['seed']}: val bpb {r['val_bpb']:.4f} after "
                       f"{r['steps']} steps ({r['train_cpu_s']:.1f} CPU s), {time.time() - start:.0f} s elapsed")
        finally:
            if args.jobs == 1:
                torch.set_num_threads(threads)  # train_one set 1 for its runs; give the caller its threads back
            else:
                pool.terminate()
                pool.join()
    rows = summarise(specs, done)
    if not rows:
        raise UserError(f"no finished runs at {per_run:g} CPU s per run in {lab_dir}/results: run without --table-only")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    title = f"history lab: {args.seeds} seed(s), {per_run:g} CPU s per run, depth {LAB_DEPTH}, {stamp}"
    table = markdown_table(rows)
    write_text_atomic(lab_dir / "history.md", f"# {title}\n\n{table}\n\n"
                      f"verdict: 'within noise' when |delta| < 2 x sqrt(std_a^2/n_a + std_b^2/n_b) (ADR 0042)\n")
    write_json_atomic(lab_dir / "history.json", {"title": title, "budget_s": args.budget_s, "per_run_s": per_run,
                                                 "seeds": args.seeds, "corpus": args.corpus, "rows": rows})
    plot(rows, lab_dir / "history.png", title)
    print0(table)
    print0(f"wrote {lab_dir / 'history.md'}, history.json, history.png ({time.time() - start:.0f} s)")
    return {"rows": rows, "lab_dir": str(lab_dir), "trained": len(tasks), "kept": len(done) - len(tasks)}
