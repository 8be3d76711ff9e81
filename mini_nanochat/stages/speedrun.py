"""
Stage `speedrun`: the main job, every stage that exists so far, in order, with default settings:

    data -> tok-train -> tok-eval

Later phases append pretraining, evaluation, SFT and chat. Stages whose artifacts are already complete
are skipped, so a second run is quick and an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import time

from ..common import get_base_dir, print0
from . import data, tok_eval, tok_train


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat speedrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    return p


def run(args: argparse.Namespace) -> None:
    print0(f"== speedrun == (artifacts under {get_base_dir()})")
    t0 = time.time()
    steps = [
        ("data", lambda: data.main([])),
        ("tok-train", lambda: tok_train.main(["--vocab-size", str(args.vocab_size)])),
        ("tok-eval", lambda: tok_eval.main([])),
    ]
    for i, (name, fn) in enumerate(steps, 1):
        print0(f"\n[{i}/{len(steps)}] {name}")
        fn()
    print0(f"\nspeedrun done in {time.time() - t0:.1f}s")


def main(argv: list[str] | None = None) -> None:
    run(get_parser().parse_args(argv))
