"""
Break a training run on purpose, to see what the health metrics and `inspect` show (docs/debugging.md).
DEBUGGING ONLY: this script patches the model in-process before running a stage; the library and the
stages have no such switches.

    python tools/broken_runs.py --no-qk-norm -- base-train --depth 2 --num-iterations 100 --model-tag noqk
    python tools/broken_runs.py --zero-layer 1 -- base-train --depth 2 --num-iterations 100 --model-tag dead1

--no-qk-norm    build the model with qk_norm=False (the modern preset otherwise unchanged)
--zero-layer N  after initialisation, set every matrix of block N to zero. Its output is then 0 and so is
                every gradient that reaches its weights (q = k = v = 0, MLP hidden = 0): the block stays
                dead for the whole run, whatever the optimizer does. A model whose layer was zeroed by a
                bad init, a bad checkpoint merge or a masking bug looks like this.

(For a learning rate x30, no patch is needed: multiply base-train's --matrix-lr, --embedding-lr,
--unembedding-lr and --scalar-lr.)
"""
from __future__ import annotations

import argparse
import sys


def patch(no_qk_norm: bool, zero_layer: int | None) -> None:
    import torch

    from mini_nanochat import gpt

    if no_qk_norm:
        original = gpt.GPTConfig.from_depth.__func__

        def from_depth(cls, *args, **kwargs):
            return original(cls, *args, **{**kwargs, "qk_norm": False})

        gpt.GPTConfig.from_depth = classmethod(from_depth)
    if zero_layer is not None:
        init = gpt.GPT.init_weights

        def init_weights(self):
            init(self)
            if not 0 <= zero_layer < len(self.blocks):
                raise SystemExit(f"--zero-layer {zero_layer}: the model has layers 0..{len(self.blocks) - 1}")
            with torch.no_grad():
                for m in self.blocks[zero_layer].modules():
                    if isinstance(m, gpt.Linear):
                        m.weight.zero_()

        gpt.GPT.init_weights = init_weights


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-qk-norm", action="store_true", help="qk_norm=False in the model config")
    p.add_argument("--zero-layer", type=int, default=None, help="zero every matrix of this block after init")
    args = p.parse_args(ours)
    if not rest:
        p.error("give the stage after --, e.g. -- base-train --depth 2 --num-iterations 100")
    patch(args.no_qk_norm, args.zero_layer)
    from mini_nanochat.__main__ import main as cli

    print(f"broken_runs: {'qk_norm=False ' if args.no_qk_norm else ''}"
          f"{f'block {args.zero_layer} zeroed ' if args.zero_layer is not None else ''}-> {' '.join(rest)}", flush=True)
    return cli(rest)


if __name__ == "__main__":
    sys.exit(main())
