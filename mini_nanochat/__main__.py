"""
The one command line: `python -m mini_nanochat <stage> [--flags]` (console script: `mini-nanochat`).
Each stage lives in mini_nanochat/stages/<stage>.py; `<stage> --help` lists its flags.

Exit codes: 0 done; 2 a user mistake (bad flag, missing or mismatched artifact, full disk...), printed as
one line `mini-nanochat <stage>: <why and what to do>` without a traceback (MINI_NANOCHAT_DEBUG=1 shows
it); 130 interrupted (Ctrl-C); anything else is a bug in mini-nanochat, shown with its traceback.
"""
from __future__ import annotations

import errno
import importlib
import sys

# stage name on the command line -> (module, one-line description)
STAGES = {
    "data": ("data", "build a corpus as train/val parquet shards (default: the embedded offline corpus)"),
    "tok-train": ("tok_train", "train the BPE tokenizer on the corpus"),
    "tok-eval": ("tok_eval", "compare the tokenizer with GPT-2 / GPT-4 / GPT-4o; show how text is split"),
    "base-train": ("base_train", "pretrain the GPT (AdamW + Muon, checkpoints, exact resume)"),
    "base-eval": ("base_eval", "evaluate a base model: val bits per byte, CORE on the real benchmark items, samples"),
    "chat-eval": ("chat_eval", "evaluate a chat model: ARC, MMLU, GSM8K (with the calculator), HumanEval"),
    "report": ("report", "a markdown report card with plots for a run"),
    "sft": ("sft", "supervised fine-tuning: a base model becomes a chat model that uses its calculator"),
    "rl": ("rl", "reinforcement learning on verifiable arithmetic (REINFORCE with group-mean baselines)"),
    "serve": ("serve", "serve a model: OpenAI-compatible API and a web chat"),
    "chat": ("chat", "talk to a trained model in the terminal (streaming; -p for one answer)"),
    "inspect": ("inspect", "look inside a model: attention maps, logit lens, per-token loss, embeddings (HTML page)"),
    "checkpoint": ("checkpoint_check", "check a phase's learning checkpoint automatically: checkpoint 0-9 or all"),
    "history": ("history", "the history lab: era recipes and single-idea ablations, same CPU budget, 3 seeds"),
    "export": ("export", "export a gpt2- or llama-preset model: Hugging Face folder or GGUF file (llama.cpp)"),
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
    from .common import debug_enabled

    module = importlib.import_module(f"mini_nanochat.stages.{STAGES[name][0]}")
    try:
        module.main(rest)
    except KeyboardInterrupt:
        print(f"\nmini-nanochat {name}: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # noqa: BLE001 - sorted into user mistakes and bugs just below
        message = user_message(e)
        if message is None or debug_enabled():
            raise
        if message.startswith(f"{name}: "):  # older messages carry the stage's name already
            message = message[len(name) + 2:]
        print(f"mini-nanochat {name}: {message}", file=sys.stderr)
        return 2
    return 0


def user_message(e: BaseException) -> str | None:
    """The one-line message of an error that the user can fix, or None for anything else (a bug).

    User errors: UserError; a SystemExit carrying a message (argparse and older stages raise those);
    the library's own error types, whose messages are written for the user (a corrupt checkpoint, a
    missing tokenizer, a failed download, a stopped training run); and the file-system refusals a user
    fixes outside the program (permission denied, read-only file system, disk full)."""
    from .checkpoint import CheckpointError
    from .common import UserError
    from .dataset import CorpusNotFoundError
    from .download import DownloadError
    from .tokenizer import TokenizerError
    from .training import TrainingError

    if isinstance(e, UserError):
        return e.message
    if isinstance(e, SystemExit):
        if isinstance(e.code, str):
            return e.code
        raise e  # a plain exit code (0, argparse's 2 after it printed its own message): pass it on
    if isinstance(e, (CheckpointError, TokenizerError, DownloadError, TrainingError, CorpusNotFoundError)):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or type(e).__name__}{where} (check the permissions and free space of the base " \
               f"directory, or point MINI_NANOCHAT_HOME at another one)"
    return None


if __name__ == "__main__":
    sys.exit(main())
