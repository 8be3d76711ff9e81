"""
Stage `checkpoint`: check a phase's learning checkpoint automatically. Reproduces what
docs/checkpoints/phaseN.md says a learner should observe, on tiny models in a temporary directory (your
runs are never read or written), and prints a table `check | measured | expected | PASS/FAIL`.

    python -m mini_nanochat checkpoint 1          # loss at init = ln V, one batch overfit, causality, ...
    python -m mini_nanochat checkpoint all        # every phase (Phase 4 starts torchrun: the slow one)

Exit code 0 when every check passes; 2, with one line naming the failures, when any fails. The checks
themselves live in mini_nanochat/checkpoints_lab.py (one function per phase).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..common import UserError, print0


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", help="0-9, or 'all' (2 and 3 share one page and one set of checks)")
    p.add_argument("--workdir", default="", help="keep the temporary base directory here (default: a fresh "
                   "temporary one, removed afterwards)")
    return p


def table(rows: list[tuple[str, object]]) -> str:
    """The checks as a plain-text table (the widths follow the content)."""
    head = ("check", "measured", "expected", "result")
    cells = [head] + [(c.name, c.measured, c.expected, "PASS" if c.ok else "FAIL") for _, c in rows]
    widths = [min(60, max(len(r[i]) for r in cells)) for i in range(4)]
    line = lambda r: " | ".join(str(v)[:widths[i]].ljust(widths[i]) for i, v in enumerate(r))  # noqa: E731
    return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def main(argv: list[str] | None = None) -> dict:
    from ..checkpoints_lab import PHASES, TITLES, Workdir, run_phase

    args = get_parser().parse_args(argv)
    if args.phase == "all":
        phases = ["0", "1", "2", "4", "5", "6", "7", "8", "9"]
    elif args.phase in PHASES:
        phases = [args.phase]
    else:
        raise UserError(f"unknown phase {args.phase!r}: give 0-9 or 'all'")
    tmp = None
    if args.workdir:
        root = Path(args.workdir)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mini-nanochat-checkpoint-")
        root = Path(tmp.name)
    work = Workdir(root)
    rows, seconds = [], {}
    try:
        for ph in phases:
            start = time.time()
            print0(f"== Phase {ph if ph not in '23' else '2-3'}: {TITLES[ph]} ...")
            checks = run_phase(ph, work)
            seconds[ph] = time.time() - start
            rows += [(ph, c) for c in checks]
            print0(table([(ph, c) for c in checks]) + f"\n({seconds[ph]:.0f} s)\n")
    finally:
        if tmp is not None:
            tmp.cleanup()
    failed = [f"phase {ph}: {c.name}" for ph, c in rows if not c.ok]
    summary = {"phases": phases, "checks": len(rows), "failed": failed, "seconds": seconds}
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} checks failed: " + "; ".join(failed))
    print0(f"all {len(rows)} checks passed")
    return summary
