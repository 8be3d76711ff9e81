"""
The one command line: `python -m mini_nanochat <stage> [--flags]` (console script: `mini-nanochat`).
Each stage lives in mini_nanochat/stages/<stage>.py; `<stage> --help` lists its flags.
"""
from __future__ import annotations

import importlib
import sys

# stage name on the command line -> (module, one-line description)
STAGES = {
    "data": ("data", "build a corpus as train/val parquet shards (default: the embedded offline corpus)"),
    "tok-train": ("tok_train", "train the BPE tokenizer on the corpus"),
    "tok-eval": ("tok_eval", "compare the tokenizer with GPT-2 / GPT-4 / GPT-4o; show how text is split"),
    "base-train": ("base_train", "pretrain the GPT (AdamW + Muon, checkpoints, exact resume)"),
    "chat": ("chat", "talk to a trained model in the terminal (streaming; -p for one answer)"),
    "speedrun": ("speedrun", "the main job: every stage that exists so far, in order"),
}


def usage() -> str:
    lines = ["usage: python -m mini_nanochat <stage> [--flags]   (<stage> --help for its flags)", "", "stages:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        print(f"unknown stage {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"mini_nanochat.stages.{STAGES[name][0]}")
    module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
