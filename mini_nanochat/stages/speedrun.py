"""
Stage `speedrun`: the main job, from nothing to a chat model and its report card, every stage in order:

    data -> tok-train -> tok-eval -> base-train -> base-eval -> sft -> rl -> chat-eval -> report

    python -m mini_nanochat speedrun                      # preset cpu: 2 CPU cores, offline, ~20 minutes
    python -m mini_nanochat speedrun --preset tiny        # a smoke run in a few minutes (the test suite's)
    python -m mini_nanochat speedrun --preset gpu         # one GPU (not yet run by this project)
    python -m mini_nanochat speedrun --preset gpu8        # 8 GPUs through torchrun, nanochat's d24 recipe
    python -m mini_nanochat speedrun --force sft          # redo SFT and what depends on it (rl, chat-eval)

Time, not steps, is the budget on a CPU (ADR 0041): before pretraining, a short probe (8 steps of
base-train) measures this machine's speed, and the plan gives pretraining --pretrain-seconds and SFT
--sft-seconds worth of steps at that speed. The plan is saved (runs/<tag>/speedrun_plan.json), so a
re-run or a resumed run trains the same number of steps; `--force base-train` plans again. Explicit
`--iterations` / `--sft-iterations` replace the plan.

Each stage is skipped when its artifact is complete, and an interrupted training stage resumes from its
last checkpoint, so the command can simply be run again. `--force STAGE` (repeatable) redoes a stage and
every stage downstream of it (its run directory is removed first: a run is the stage's own artifact).
At the end: the report's headline, the time of every stage (also in runs/<tag>/speedrun_times.json and
in the report), and the commands to chat with the model and to serve it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

from ..checkpoint import latest_checkpoint
from ..common import UserError, get_base_dir, get_dist_info, print0, write_json_atomic
from . import base_eval, base_train, chat_eval, data, report, rl, sft, tok_eval, tok_train


@dataclass(frozen=True)
class Preset:
    """One column of the presets table: everything the speedrun decides. Flags override single fields."""
    depth: int
    max_seq_len: int
    device_batch_size: int
    total_batch_size: int          # tokens per optimizer step (-1: one micro-batch per rank)
    vocab_size: int
    pretrain_seconds: float        # > 0: plan the pretraining steps from a speed probe (CPU presets)
    iterations: int                # pretraining steps when not planned (or the planner's upper bound)
    sft_seconds: float
    sft_iterations: int
    rl_iterations: int
    eval_per_task: int             # CORE items per task (base-eval); -1 all
    chat_eval_per_task: int        # chat-eval items per task; -1 all
    chat_eval_tasks: str
    eval_questions: int            # held-out arithmetic questions after sft and rl
    corpus: str = "embedded"
    num_shards: int = 0            # remote corpora: shards to download
    tok_max_chars: int = 0         # 0: all the text
    tokenizer: str = "default"
    nproc: int = 1                 # > 1: the training and evaluation stages run under torchrun
    extra_base_train: tuple = ()


PRESETS = {
    # The smoke test's: every stage on tiny sizes (tests/test_speedrun.py); it proves the plumbing only.
    "tiny": Preset(depth=2, max_seq_len=128, device_batch_size=4, total_batch_size=-1, vocab_size=1024,
                   pretrain_seconds=0, iterations=40, sft_seconds=0, sft_iterations=30, rl_iterations=2,
                   eval_per_task=2, chat_eval_per_task=2, chat_eval_tasks="ARC-Easy,MMLU,GSM8K",
                   eval_questions=4, tokenizer="tiny"),
    # 2 CPU cores, offline, <= 30 minutes in all: the budget study (ADR 0041) chose the shape and the split.
    "cpu": Preset(depth=4, max_seq_len=256, device_batch_size=8, total_batch_size=-1, vocab_size=4096,
                  pretrain_seconds=480, iterations=4000, sft_seconds=360, sft_iterations=1500, rl_iterations=60,
                  eval_per_task=20, chat_eval_per_task=20,
                  chat_eval_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,HumanEval", eval_questions=50),
    # One GPU on the embedded corpus (it travels with the tree, no download): depth 12, ~6.5M tokens a pass.
    "gpu": Preset(depth=12, max_seq_len=1024, device_batch_size=32, total_batch_size=-1, vocab_size=4096,
                  pretrain_seconds=0, iterations=400, sft_seconds=0, sft_iterations=600, rl_iterations=60,
                  eval_per_task=500, chat_eval_per_task=-1,
                  chat_eval_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,HumanEval", eval_questions=200,
                  tokenizer="default"),
    # nanochat's d24 speedrun recipe (runs/speedrun.sh at 92d63d4): ClimbMix shards, a 32,768-token
    # vocabulary trained on 2B characters, depth 24, tokens = 8 x parameters, 8 ranks.
    "gpu8": Preset(depth=24, max_seq_len=2048, device_batch_size=16, total_batch_size=524288, vocab_size=32768,
                   pretrain_seconds=0, iterations=-1, sft_seconds=0, sft_iterations=1500, rl_iterations=0,
                   eval_per_task=-1, chat_eval_per_task=-1,
                   chat_eval_tasks="ARC-Easy,ARC-Challenge,MMLU,GSM8K,HumanEval", eval_questions=200,
                   corpus="climbmix", num_shards=170, tok_max_chars=2_000_000_000, tokenizer="v32k", nproc=8,
                   extra_base_train=("--target-param-data-ratio", "8")),
}

STAGES = ["data", "tok-train", "tok-eval", "base-train", "base-eval", "sft", "rl", "chat-eval", "report"]
# what each stage's artifact feeds: forcing a stage forces these too (transitively)
FEEDS = {"data": ["tok-train", "base-train"], "tok-train": ["tok-eval", "base-train"],
         "base-train": ["base-eval", "sft"], "sft": ["rl", "chat-eval"], "rl": ["chat-eval"]}
DISTRIBUTED = {"base-train", "base-eval", "sft", "rl", "chat-eval"}  # run under torchrun when nproc > 1
PROBE_STEPS = 8
MIN_STEPS = 20  # a plan never goes below this, however slow the machine (the run is then just longer)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat speedrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=list(PRESETS), default="cpu", help="sizes and budgets (see the table in examples/README.md)")
    a("--model-tag", default="", help="the pretraining run: <base>/runs/<tag> (default: speedrun, or speedrun-<preset>)")
    a("--force", action="append", default=[], choices=STAGES, metavar="STAGE",
      help=f"redo STAGE and every stage it feeds, even if complete (repeatable): {', '.join(STAGES)}")
    a("--depth", type=int, help="model depth (the one dial)")
    a("--vocab-size", type=int, help="tokenizer vocabulary size")
    a("--iterations", type=int, help="pretraining steps (instead of the time plan)")
    a("--pretrain-seconds", type=float, help="pretraining time budget on a CPU (the plan turns it into steps)")
    a("--sft-iterations", type=int, help="SFT steps (instead of the time plan; 0 = stop before SFT)")
    a("--sft-seconds", type=float, help="SFT time budget (the plan turns it into steps)")
    a("--rl-iterations", type=int, help="RL steps after SFT (0 = none)")
    a("--eval-per-task", type=int, help="CORE items per task scored by base-eval (0 = skip base-eval)")
    a("--chat-eval-per-task", type=int, help="items per task scored by chat-eval (0 = skip chat-eval)")
    a("--eval-questions", type=int, help="held-out arithmetic questions after sft and rl")
    a("--nproc-per-node", type=int, help="ranks for the training and evaluation stages (torchrun)")
    return p


def resolve(args: argparse.Namespace) -> tuple[Preset, str, set[str]]:
    """The preset with the flags applied, the run tag, and the set of stages to force."""
    fields = {"depth": args.depth, "vocab_size": args.vocab_size, "iterations": args.iterations,
              "pretrain_seconds": args.pretrain_seconds, "sft_iterations": args.sft_iterations,
              "sft_seconds": args.sft_seconds, "rl_iterations": args.rl_iterations,
              "eval_per_task": args.eval_per_task, "chat_eval_per_task": args.chat_eval_per_task,
              "eval_questions": args.eval_questions, "nproc": args.nproc_per_node}
    pre = replace(PRESETS[args.preset], **{k: v for k, v in fields.items() if v is not None})
    if args.iterations is not None:
        pre = replace(pre, pretrain_seconds=0)
    if args.sft_iterations is not None:
        pre = replace(pre, sft_seconds=0)
    for name in ("depth", "vocab_size", "nproc"):
        if getattr(pre, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(pre, name)}")
    for name in ("pretrain_seconds", "sft_seconds", "sft_iterations", "rl_iterations", "eval_questions"):
        if getattr(pre, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(pre, name)}")
    if pre.pretrain_seconds == 0 and pre.iterations == 0:
        raise UserError("--iterations must be at least 1")
    tag = args.model_tag or ("speedrun" if args.preset == "cpu" else f"speedrun-{args.preset}")
    forced, todo = set(), list(args.force)
    while todo:
        s = todo.pop()
        if s not in forced:
            forced.add(s)
            todo += FEEDS.get(s, [])
    return pre, tag, forced


# ---- running a stage: in this process, or under torchrun for the distributed stages


def call(stage: str, module, flags: list[str], pre: Preset):
    if pre.nproc > 1 and stage in DISTRIBUTED:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={pre.nproc}",
               "-m", "mini_nanochat", stage, *flags]
        print0("$ " + shlex.join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"{stage} failed under torchrun (its messages are above); fix it and run the speedrun "
                            f"again: finished stages are skipped")
        return None
    return module.main(flags)


def _read(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finished(run_dir, steps: int) -> dict | None:
    """The summary of a training stage that completed `steps` steps (-1: the horizon base-train derived
    itself, as in the gpu8 preset: any finished run), else None."""
    s = _read(run_dir / "summary.json")
    return s if s and (s.get("steps") == steps or steps == -1) else None


def _remove_run(run_dir) -> None:
    if run_dir.exists():
        print0(f"--force: removing {run_dir}")
        shutil.rmtree(run_dir)


# ---- the plan: time budgets -> steps, from a probe of this machine's speed


def tokens_per_step(pre: Preset) -> int:
    return pre.total_batch_size if pre.total_batch_size > 0 else pre.device_batch_size * pre.max_seq_len * pre.nproc


def model_flags(pre: Preset) -> list[str]:
    return ["--depth", str(pre.depth), "--max-seq-len", str(pre.max_seq_len), "--device-batch-size",
            str(pre.device_batch_size), "--total-batch-size", str(pre.total_batch_size), "--corpus", pre.corpus,
            "--tokenizer", pre.tokenizer, *pre.extra_base_train]


def probe_speed(pre: Preset, tag: str) -> float:
    """Tokens per second of the pretraining step on this machine: PROBE_STEPS steps of base-train into a
    scratch run (the first step, which warms up, is not timed), then the scratch run is removed."""
    scratch = get_base_dir() / "runs" / f"{tag}-probe"
    shutil.rmtree(scratch, ignore_errors=True)
    print0(f"probing the training speed ({PROBE_STEPS} steps in {scratch.name})")
    try:
        s = base_train.main(model_flags(pre) + ["--num-iterations", str(PROBE_STEPS), "--model-tag", scratch.name,
                                                "--eval-every", "0", "--eval-tokens", "2048", "--sample-every", "0",
                                                "--save-every", "0"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return float(s["tok_per_s"])


def make_plan(pre: Preset, tag: str, forced: set[str]) -> dict:
    """Steps for pretraining and SFT. Saved in runs/<tag>/speedrun_plan.json and reused, so a re-run (or
    a resume after an interruption) trains exactly what was planned; a plan whose settings differ from
    this preset's (another depth, budget...) is made again if pretraining has not started, and refused
    if it has."""
    run_dir = get_base_dir() / "runs" / tag
    path = run_dir / "speedrun_plan.json"
    settings = {k: v for k, v in asdict(pre).items() if k not in ("eval_per_task", "chat_eval_per_task",
                                                                   "chat_eval_tasks", "eval_questions", "rl_iterations")}
    settings["extra_base_train"] = list(settings["extra_base_train"])
    old = _read(path) if "base-train" not in forced else None
    if old and old.get("settings") == settings:
        print0(f"plan (from {path.name}): pretraining {old['iterations']:,} steps, SFT {old['sft_iterations']:,} steps")
        return old
    if old and latest_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} was planned with other settings ({path}); use --force base-train to start it "
                        f"again, or --model-tag to keep both")
    if old is None and pre.pretrain_seconds > 0 and "base-train" not in forced and latest_checkpoint(run_dir):
        # a run trained without a plan (an older speedrun, or base-train by hand): its step count is not ours
        raise UserError(f"{run_dir} holds a run that no speedrun plan made; use --force base-train to train it "
                        f"again, --iterations N to continue it to N steps, or --model-tag to keep both")
    plan = {"settings": settings, "iterations": pre.iterations, "sft_iterations": pre.sft_iterations,
            "tokens_per_step": tokens_per_step(pre)}
    if pre.pretrain_seconds > 0 or pre.sft_seconds > 0:
        speed = probe_speed(pre, tag)
        step_s = plan["tokens_per_step"] / speed
        plan["probe_tok_per_s"] = speed
        if pre.pretrain_seconds > 0:  # the preset's `iterations` caps the plan (a very fast machine)
            plan["iterations"] = max(MIN_STEPS, min(pre.iterations, int(pre.pretrain_seconds / step_s)))
        if pre.sft_seconds > 0 and pre.sft_iterations > 0:
            # SFT's step has the same shape (same model, device batch and context), so the same speed;
            # measured on 2 cores it is ~15% slower (the mixture's packing), which the budget absorbs.
            plan["sft_iterations"] = max(MIN_STEPS, min(pre.sft_iterations, int(pre.sft_seconds / step_s)))
        print0(f"plan: {speed:,.0f} tok/s measured -> pretraining {plan['iterations']:,} steps "
               f"(~{pre.pretrain_seconds:.0f}s), SFT {plan['sft_iterations']:,} steps (~{pre.sft_seconds:.0f}s)")
    if get_dist_info().is_master:
        write_json_atomic(path, plan)
    return plan


# ---- the stages


def _data(pre: Preset, forced: set[str]) -> None:
    flags = ["--corpus", pre.corpus] + (["-n", str(pre.num_shards)] if pre.num_shards else [])
    data.main(flags + (["--force"] if "data" in forced else []))


def _tok_train(pre: Preset, forced: set[str]) -> None:
    flags = ["--vocab-size", str(pre.vocab_size), "--corpus", pre.corpus, "--name", pre.tokenizer]
    flags += ["--max-chars", str(pre.tok_max_chars)] if pre.tok_max_chars else []
    tok_train.main(flags + (["--force"] if "tok-train" in forced else []))


def _pretrain(pre: Preset, tag: str, plan: dict, forced: set[str]) -> None:
    run_dir = get_base_dir() / "runs" / tag
    s = _finished(run_dir, plan["iterations"]) if "base-train" not in forced else None
    if s:
        print0(f"pretraining already done in {run_dir}: val bpb {s['final_val_bpb']:.4f} (--force base-train to redo)")
        return
    steps = plan["iterations"]
    flags = model_flags(pre) + ["--num-iterations", str(steps), "--model-tag", tag,
                                "--eval-every", str(max(50, steps // 6)), "--eval-tokens", str(2**16),
                                "--save-every", str(max(100, steps // 8)), "--sample-every", str(max(100, steps // 2))]
    if latest_checkpoint(run_dir) is not None:
        flags.append("--resume")
    call("base-train", base_train, flags, pre)


def _base_eval(pre: Preset, tag: str, forced: set[str]) -> None:
    if pre.eval_per_task == 0:
        print0("base-eval skipped (--eval-per-task 0)")
        return
    run_dir = get_base_dir() / "runs" / tag
    s, ck = _read(run_dir / "eval" / "base_eval.json"), latest_checkpoint(run_dir)
    if s and ck is not None and "base-eval" not in forced and s.get("checkpoint") == str(ck) \
            and s.get("max_per_task") == pre.eval_per_task and s.get("core_tasks") == 20:
        print0(f"base-eval already done for {ck.name}: CORE {s['core']:.4f}, val bpb {s['val_bpb']:.4f}")
        return
    call("base-eval", base_eval, ["--model-tag", tag, "--max-per-task", str(pre.eval_per_task)], pre)


def _sft(pre: Preset, tag: str, plan: dict, forced: set[str]) -> None:
    if plan["sft_iterations"] <= 0:
        print0("sft skipped (--sft-iterations 0)")
        return
    run_dir = get_base_dir() / "runs" / f"{tag}-sft"
    if "sft" in forced:
        _remove_run(run_dir)
    s = _finished(run_dir, plan["sft_iterations"])
    if s is not None:
        a = s.get("arithmetic", {})
        print0(f"sft already done in {run_dir}: val loss {s['final_val_loss']:.4f}"
               + (f", arithmetic {a['accuracy']:.0%}" if a else "") + " (--force sft to redo)")
        return
    flags = ["--model-tag", tag, "--num-iterations", str(plan["sft_iterations"]),
             "--eval-questions", str(pre.eval_questions)]
    call("sft", sft, flags + (["--resume"] if latest_checkpoint(run_dir) is not None else []), pre)


def _rl(pre: Preset, tag: str, plan: dict, forced: set[str]) -> None:
    if pre.rl_iterations <= 0 or plan["sft_iterations"] <= 0:
        print0("rl skipped")
        return
    run_dir = get_base_dir() / "runs" / f"{tag}-rl"
    if "rl" in forced:
        _remove_run(run_dir)
    if _finished(run_dir, pre.rl_iterations) is not None:
        print0(f"rl already done in {run_dir} (--force rl to redo)")
        return
    flags = ["--model-tag", tag, "--num-iterations", str(pre.rl_iterations), "--eval-questions", str(pre.eval_questions)]
    call("rl", rl, flags + (["--resume"] if latest_checkpoint(run_dir) is not None else []), pre)


def _chat_eval(pre: Preset, tag: str, plan: dict, forced: set[str]) -> None:
    if pre.chat_eval_per_task == 0 or plan["sft_iterations"] <= 0:
        print0("chat-eval skipped")
        return
    from ..checkpoint import resolve_run
    from .chat_eval import parse_tasks

    run_dir = resolve_run(get_base_dir() / "runs", tag)  # the most trained of the family: rl, else sft
    s, ck = _read(run_dir / "eval" / "chat_eval.json"), latest_checkpoint(run_dir)
    tasks = parse_tasks(pre.chat_eval_tasks)
    if s and ck is not None and "chat-eval" not in forced and s.get("checkpoint") == str(ck) \
            and s.get("max_per_task") == pre.chat_eval_per_task and set(tasks) <= set(s.get("tasks", {})) \
            and (run_dir / "eval" / "chat_card.json").is_file():
        print0(f"chat-eval already done for {run_dir.name}/{ck.name}: ChatCORE {s['chatcore']:.4f}")
        return
    flags = ["--model-tag", tag, "--tasks", pre.chat_eval_tasks, "--max-per-task", str(pre.chat_eval_per_task)]
    # a small context: replies of at most half of it (chat-eval's default), and at most 128 tokens on a CPU
    flags += ["--max-new-tokens", str(min(128, pre.max_seq_len // 2))] if pre.max_seq_len <= 256 else []
    call("chat-eval", chat_eval, flags, pre)


def run(args: argparse.Namespace) -> dict:
    pre, tag, forced = resolve(args)
    base = get_base_dir()
    print0(f"== speedrun == preset {args.preset}, run {tag}, artifacts under {base}"
           + (f", forcing {', '.join(s for s in STAGES if s in forced)}" if forced else ""))
    t0 = time.time()
    times: dict[str, float] = {}
    plan: dict = {}

    def pretrain():
        nonlocal plan
        if "base-train" in forced:
            _remove_run(base / "runs" / tag)
        plan = make_plan(pre, tag, forced)
        _pretrain(pre, tag, plan, forced)

    steps = [
        ("data", lambda: _data(pre, forced)),
        ("tok-train", lambda: _tok_train(pre, forced)),
        ("tok-eval", lambda: tok_eval.main(["--name", pre.tokenizer, "--corpus", pre.corpus])),
        ("base-train", pretrain),
        ("base-eval", lambda: _base_eval(pre, tag, forced)),
        ("sft", lambda: _sft(pre, tag, plan, forced)),
        ("rl", lambda: _rl(pre, tag, plan, forced)),
        ("chat-eval", lambda: _chat_eval(pre, tag, plan, forced)),
    ]
    times_path = base / "runs" / tag / "speedrun_times.json"
    for i, (name, fn) in enumerate(steps, 1):
        print0(f"\n[{i}/{len(STAGES)}] {name}")
        t = time.time()
        fn()
        times[name] = time.time() - t
    total = time.time() - t0
    record = {"preset": args.preset, "stages_seconds": times, "total_seconds": total,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    if get_dist_info().is_master:
        write_json_atomic(times_path, record)  # before the report, which shows it
    print0(f"\n[{len(STAGES)}/{len(STAGES)}] report")
    out = report.main(["--model-tag", tag])
    print0(f"\nspeedrun done in {total:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + ")")
    if isinstance(out, dict) and out.get("facts") is not None:
        from ..report import headline

        print0("\n" + headline(out["facts"]))
    if plan.get("sft_iterations", 0) > 0:
        print0(f'\ntalk to the chat model:  python -m mini_nanochat chat --model-tag {tag} -p "What is 123 + 456?"'
               f"   (or without -p for a conversation; --stage base for the pretrained model)")
        print0(f"serve it (OpenAI API + web chat):  python -m mini_nanochat serve --model-tag {tag}   "
               f"then open http://127.0.0.1:8000")
    print0(f"the report card:  {base / 'reports' / (tag + '.md')}")
    return record


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
