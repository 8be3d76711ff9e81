"""
Stage `report`: a markdown report card with PNG plots for a run: the machine, the tokenizer's
compression, the model and its training (val bpb curve, loss, tokens, throughput, MFU), CORE per task,
the chat evals, wall times and an estimated cost, and nanochat's / GPT-2's published figures beside ours.

    python -m mini_nanochat report                        # the speedrun's run -> reports/speedrun.md
    python -m mini_nanochat report --model-tag d4 --price-per-hour 0.10
    python -m mini_nanochat report --out /tmp/card.md     # PNGs beside it in /tmp/card/

It only reads what the other stages wrote (mini_nanochat/report.py says which files); a stage that has
not run yet appears as "not run yet" with the command that runs it. Rerunning it rewrites the report.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..common import UserError, get_base_dir, is_plain_name, print0, print_config


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-tag", default="speedrun", help="the run under <base>/runs/<tag> (default: the speedrun's)")
    p.add_argument("--out", default="", help="the markdown file to write (default: <base>/reports/<tag>.md); "
                   "its PNGs go in the folder of the same name without .md")
    p.add_argument("--price-per-hour", type=float, default=None,
                   help="$ per hour of the whole machine, for the cost estimate (default: $3 per GPU-hour on a GPU "
                        "run, the H100 rate docs/anchors.md prices nanochat at; $0 on a CPU)")
    return p


def check_args(args: argparse.Namespace) -> tuple[Path, Path]:
    """Every flag and the run itself checked before anything is written: (run dir, markdown path)."""
    from ..report import default_out, plot_dir_for, run_dir_of

    if not is_plain_name(args.model_tag):
        raise UserError(f"--model-tag {args.model_tag!r:.60} is not a plain name (letters, digits, '.', '_', '-'; "
                        f"no '/' or '..')")
    if args.price_per_hour is not None and not (math.isfinite(args.price_per_hour) and args.price_per_hour >= 0):
        raise UserError(f"--price-per-hour must be a finite number >= 0, got {args.price_per_hour}")
    run_dir = run_dir_of(args.model_tag)
    if run_dir is None:
        raise UserError(f"no run {args.model_tag!r} under {get_base_dir() / 'runs'}: train one with "
                        f"python -m mini_nanochat base-train --model-tag {args.model_tag} (or run the speedrun)")
    out = Path(args.out).expanduser() if args.out else default_out(args.model_tag)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; name the markdown file to write, e.g. {out / 'report.md'}")
    if plot_dir_for(out).exists() and not plot_dir_for(out).is_dir():
        raise UserError(f"the plots of {out} go in {plot_dir_for(out)}, which is a file; move it or choose "
                        f"another --out")
    return run_dir, out


def run(args: argparse.Namespace) -> dict:
    from ..report import plot_dir_for, write_report

    run_dir, out = check_args(args)
    print_config("report", {"model tag": args.model_tag, "run dir": str(run_dir), "markdown": str(out),
                            "plots": str(plot_dir_for(out)),
                            "price per hour": "auto ($3/GPU-h on a GPU run, $0 on a CPU)"
                            if args.price_per_hour is None else f"${args.price_per_hour:,.2f}"})
    replacing = out.exists()
    result = write_report(args.model_tag, out, args.price_per_hour)
    if result["note"]:
        print0(f"note: {result['note']}")
    plots = f" and {len(result['plots'])} plots in {plot_dir_for(out)}" if result["plots"] else ""
    print0(f"{'rewrote' if replacing else 'wrote'} {out}{plots}")
    return result


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
