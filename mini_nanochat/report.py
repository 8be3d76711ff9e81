"""
The report card of a run: one markdown page, with PNG plots, that says what was trained, on which
machine, how well it does, how long it took and what it would cost, and where that sits beside the
published figures of nanochat and GPT-2.

Nothing here trains or evaluates anything. The report only reads what the other stages wrote:

    runs/<tag>/summary.json, metrics.jsonl, samples.txt     base-train
    runs/<tag>/checkpoints/step_NNNNNN/meta.json            the model and training configuration
    runs/<tag>/eval/base_eval.json                          base-eval (val bpb, CORE per task)
    runs/<tag>/eval/chat_eval.json                          chat-eval (ARC, MMLU, GSM8K, HumanEval)
    reports/tok-eval.md, tokenizer/<name>/tokenizer.json    tok-eval, tok-train

and writes reports/<tag>.md with its plots in reports/<tag>/. Any input but the run itself may be missing
or unreadable: the report then says "not run yet" and names the command that makes it, because a report
card that crashes on a half-finished pipeline is useless exactly when it is most wanted.

    gather(tag)          -> a plain dict of everything found (and notes on what was not)
    make_plots(facts, d) -> PNGs in d (none, with a note, if matplotlib is missing)
    render(facts, ...)   -> the markdown text
    write_report(tag)    -> all three, written atomically
"""
from __future__ import annotations

import json
import math
import os
import platform
import urllib.parse
from datetime import datetime
from pathlib import Path

from .common import atomic_write, get_base_dir, is_plain_name, write_text_atomic

# ----------------------------------------------------------------------------------------------------
# The peers. Every published number the report cites lives here, copied from docs/anchors.md
# ("Headline results"; nanochat at commit 92d63d4). Chat figures are plain accuracies (not centred), as
# nanochat reports them; GPT-2's CORE is the reference CORE of the released checkpoints. A field that
# anchors.md does not give is left out (shown as "—"), never guessed.
PEERS = {
    "GPT-2 124M (2019)": {"params": 124e6, "core": 0.1139},
    "GPT-2 355M (2019)": {"params": 355e6, "core": 0.1849},
    "GPT-2 774M (2019)": {"params": 774e6, "core": 0.2146},
    "GPT-2 1.5B (2019)": {"params": 1.5e9, "core": 0.2565, "time": "~168 h", "cost_usd": 43_000},
    "nanochat d20 (Oct 2025 release)": {
        "params": 561e6, "core": 0.2219, "time": "~4 h",
        "chat": {"ARC-E": 0.388, "ARC-C": 0.281, "MMLU": 0.315, "GSM8K": 0.046, "HumanEval": 0.085}},
    "nanochat time-to-GPT-2 (Mar 2026)": {
        "core": 0.256525, "core_note": "> ", "time": "1.65 h on 8×H100", "cost_usd": 48, "val_bpb": 0.718},
}
PEER_CHAT_TASKS = ["ARC-E", "ARC-C", "MMLU", "GSM8K", "HumanEval"]
# How chat-eval may spell those tasks: lower case, letters and digits only.
CHAT_ALIASES = {"ARC-E": ("arce", "arceasy"), "ARC-C": ("arcc", "arcchallenge"), "MMLU": ("mmlu",),
                "GSM8K": ("gsm8k",), "HumanEval": ("humaneval",)}
GPU_PRICE_PER_HOUR = 3.0  # $ per GPU-hour: the H100 rate anchors.md uses for nanochat's ~$48 (1.65 h x 8 x $3)
CORE_TOTAL = 22  # the tasks of the DCLM CORE suite


def commands(tag: str) -> dict[str, str]:
    """The command that makes each input: what a "not run yet" line tells the reader to run."""
    return {"train": f"python -m mini_nanochat base-train --model-tag {tag}",
            "base_eval": f"python -m mini_nanochat base-eval --model-tag {tag}",
            "chat_eval": f"python -m mini_nanochat chat-eval --model-tag {tag}",
            "tok_eval": "python -m mini_nanochat tok-eval",
            "tok_train": "python -m mini_nanochat tok-train"}


# ----------------------------------------------------------------------------------------------------
# Reading. Every reader returns (value, note): value None and a note saying why when it cannot.


def run_dir_of(tag: str, base_dir: Path | None = None) -> Path | None:
    """The run directory of `tag` if it holds a run (a summary, metrics or a checkpoint), else None."""
    if not is_plain_name(tag):
        return None
    d = (base_dir or get_base_dir()) / "runs" / tag
    if d.is_dir() and any((d / name).exists() for name in ("summary.json", "metrics.jsonl", "checkpoints")):
        return d
    return None


def read_json(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, "missing"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(obj, dict):
        return None, "unreadable (not a JSON object)"
    return obj, None


def is_number(x) -> bool:
    """A finite int or float (JSON's null, NaN, strings and booleans are not numbers to report)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_metrics(path: Path) -> dict:
    """metrics.jsonl as curves: val bpb and train loss per step, and the summed step times. A half-written
    last line (a run killed mid-write) is skipped; a step logged twice keeps its last record."""
    val, train = {}, {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(r, dict) or not isinstance(r.get("step"), int):
                continue
            if is_number(r.get("val_bpb")):
                val[r["step"]] = r["val_bpb"]
            if is_number(r.get("loss")):
                train[r["step"]] = r
    return {"val_bpb": sorted(val.items()),
            "loss": sorted((s, r["loss"]) for s, r in train.items()),
            # the sum of the timed optimizer steps: in-training evaluation, sampling and checkpoints excluded
            "train_seconds": sum(r["dt"] for r in train.values() if is_number(r.get("dt"))),
            "steps_logged": len(train)}


def model_facts(model_config: dict) -> tuple[dict | None, str | None]:
    """Parameter counts and FLOPs per token of a model config, from a model built on the meta device
    (shapes only, no memory, no weights read): the checkpoint does not store them."""
    try:
        from .gpt import GPT, GPTConfig

        cfg = GPTConfig.from_dict(model_config)
        model = GPT(cfg, device="meta")
        return {"params": model.param_counts(), "flops_per_token": model.estimate_flops(),
                "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head,
                "vocab_size": cfg.vocab_size, "sequence_len": cfg.sequence_len, "preset": cfg.preset}, None
    except Exception as e:  # noqa: BLE001 - an old or hand-edited config: the report goes on without it
        return None, f"model_config not understood ({type(e).__name__}: {str(e)[:120]})"


def last_samples(path: Path, max_lines: int = 12) -> str | None:
    """The last block of samples.txt (the samples of the final step)."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    block = text.rsplit("--- step", 1)
    text = ("--- step" + block[1]) if len(block) == 2 else text
    return "\n".join(text.splitlines()[:max_lines]) or None


def tok_eval_table(base: Path) -> str | None:
    """The bytes-per-token table of reports/tok-eval.md (its lines that are table rows)."""
    path = base / "reports" / "tok-eval.md"
    if not path.is_file():
        return None
    rows = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.startswith("|")]
    return "\n".join(rows) or None


def system_info() -> dict:
    """The machine writing the report (normally the one that ran the stages)."""
    info = {"os": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        info["cpu"] = None
    info["cpu"] = info["cpu"] or platform.processor() or None
    try:
        with open("/proc/meminfo") as f:
            kb = next((int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:")), None)
            info["memory_gib"] = kb / 2**20 if kb else None
    except (OSError, ValueError):
        info["memory_gib"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            info["gpu"] = f"{n} × {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = None
    return info


def gather(tag: str, base_dir: Path | None = None) -> dict:
    """Everything the report shows, as a plain dict (JSON-able but for Paths). Missing pieces have value
    None and a note under "notes" ("missing" or why unreadable)."""
    from .checkpoint import CheckpointError, git_commit, latest_checkpoint, read_meta

    base = base_dir or get_base_dir()
    run = base / "runs" / tag
    facts: dict = {"tag": tag, "base": base, "run_dir": run, "notes": {},
                   "date": datetime.now().astimezone().isoformat(timespec="seconds"),
                   "git_commit": git_commit(), "system": system_info()}
    notes = facts["notes"]
    facts["summary"], notes["summary"] = read_json(run / "summary.json")
    facts["metrics"] = read_metrics(run / "metrics.jsonl")
    facts["meta"], facts["checkpoint"], notes["meta"] = None, latest_checkpoint(run), None
    if facts["checkpoint"] is None:
        notes["meta"] = "missing"
    else:
        try:
            facts["meta"] = read_meta(facts["checkpoint"])
        except CheckpointError as e:
            notes["meta"] = f"unreadable ({e})"
    meta = facts["meta"] or {}
    facts["model"], notes["model"] = (model_facts(meta["model_config"]) if isinstance(meta.get("model_config"), dict)
                                      else (None, "no checkpoint yet" if notes["meta"] == "missing" and not meta
                                            else "no model_config in the checkpoint"))
    facts["samples"] = last_samples(run / "samples.txt")
    for key, name in (("base_eval", "base_eval.json"), ("chat_eval", "chat_eval.json")):
        facts[key], notes[key] = read_json(run / "eval" / name)
        if facts[key] is not None and not isinstance(facts[key].get("tasks"), dict):
            facts[key]["tasks"] = {}

    gather_family(facts, base, tag)

    tok_name = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), str) else "default"
    tok = {"name": tok_name}
    if is_plain_name(tok_name):
        cfg, notes["tokenizer"] = read_json(base / "tokenizer" / tok_name / "tokenizer.json")
        if cfg:
            tok["vocab_size"] = cfg.get("vocab_size")
            tok.update({k: v for k, v in (cfg.get("meta") or {}).items() if isinstance(v, (int, float, str))})
    facts["tokenizer"] = tok
    facts["tok_eval"] = tok_eval_table(base)
    return facts


def gather_family(facts: dict, base: Path, tag: str) -> None:
    """The chat models fine-tuned from run `tag` (runs/<tag>-sft, runs/<tag>-rl): their summaries, the chat
    evaluation and chat card of the most trained one (when the base run has no chat-eval of its own), and
    the speedrun's stage times (runs/<tag>/speedrun_times.json)."""
    notes = facts["notes"]
    for suffix in ("sft", "rl"):
        path = base / "runs" / f"{tag}-{suffix}" / "summary.json"
        facts[suffix], notes[suffix] = read_json(path) if path.parent.is_dir() else (None, "missing")
    facts["chat_run"], facts["chat_card"] = None, None
    for suffix in ("rl", "sft"):
        ev = base / "runs" / f"{tag}-{suffix}" / "eval"
        if ev.is_dir():
            facts["chat_run"] = ev.parent.name
            if facts["chat_eval"] is None:
                facts["chat_eval"], notes["chat_eval"] = read_json(ev / "chat_eval.json")
                if facts["chat_eval"] is not None and not isinstance(facts["chat_eval"].get("tasks"), dict):
                    facts["chat_eval"]["tasks"] = {}
            facts["chat_card"], notes["chat_card"] = read_json(ev / "chat_card.json")
            break
    facts["speedrun_times"], notes["speedrun_times"] = read_json(facts["run_dir"] / "speedrun_times.json")


def display_reply(text: str) -> str:
    """A decoded reply as the terminal chat shows it: the calculator call as [calculator: expr = result].

    >>> display_reply("<|python_start|>2+3<|python_end|><|output_start|>5<|output_end|>2 plus 3 is 5.")
    '[calculator: 2+3 = 5] 2 plus 3 is 5.'
    """
    from .engine import TOOL_DISPLAY

    for marker, shown in TOOL_DISPLAY.items():
        text = text.replace(marker, shown)
    for marker in ("<|output_start|>", "<|assistant_end|>"):
        text = text.replace(marker, "")
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------------
# Derived numbers


def binomial_se(p, n) -> float | None:
    """The standard error of an accuracy p measured on n independent items: sqrt(p (1 - p) / n). With
    n = 100 and p = 0.3 it is 0.046: two tasks 0.05 apart on 100 items each are not told apart."""
    if not (is_number(p) and is_number(n)) or n <= 0 or not 0 <= p <= 1:
        return None
    return math.sqrt(p * (1 - p) / n)


def centred_se(task: dict) -> float | None:
    """The error of a centred accuracy (acc - chance) / (1 - chance): the accuracy's error / (1 - chance)."""
    se, chance = binomial_se(task.get("accuracy"), task.get("n")), task.get("chance")
    if se is None or not is_number(chance) or chance >= 1:
        return None
    return se / (1 - chance)


def training_facts(facts: dict) -> dict:
    """Steps, tokens per step, train tokens, tokens per parameter, training FLOPs, from meta + summary."""
    meta, summary, model = facts["meta"] or {}, facts["summary"] or {}, facts["model"] or {}
    tc = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    world = meta.get("world_size") if is_number(meta.get("world_size")) else 1
    per_step = tc.get("total_batch_size")
    if not (is_number(per_step) and per_step > 0):
        b, t = tc.get("device_batch_size"), tc.get("max_seq_len")
        per_step = b * t * world if is_number(b) and is_number(t) else None
    steps = next((s for s in (summary.get("steps"), meta.get("step")) if is_number(s)), None)
    if steps is None and facts["metrics"]["loss"]:
        steps = facts["metrics"]["loss"][-1][0]
    tokens = steps * per_step if steps is not None and per_step else None
    params = (model.get("params") or {}).get("total")
    return {"train_config": tc, "world_size": world, "tokens_per_step": per_step, "steps": steps,
            "num_iterations": meta.get("num_iterations"), "tokens": tokens,
            "tokens_per_param": tokens / params if tokens and params else None,
            "train_flops": tokens * model["flops_per_token"] if tokens and model.get("flops_per_token") else None}


def used_gpu(facts: dict) -> bool:
    """Did the run use a GPU? The device the stages recorded, else this machine (reports are normally
    written where the run ran)."""
    devices = [str(d.get("device", "")) for d in (facts["base_eval"], facts["chat_eval"]) if d]
    devices.append(str(training_facts(facts)["train_config"].get("device", "")))
    if any(d.startswith("cuda") for d in devices):
        return True
    if any(d in ("cpu", "mps") for d in devices):
        return False
    return bool(facts["system"].get("gpu"))


def price(facts: dict, price_per_hour: float | None) -> tuple[float, str]:
    """($ per hour of the whole machine, the assumption in words). Default: GPU_PRICE_PER_HOUR per GPU
    on a GPU run (the rate anchors.md prices nanochat at, so the two costs compare), 0 on a CPU."""
    if price_per_hour is not None:
        return price_per_hour, f"${price_per_hour:,.2f} per hour of the machine (--price-per-hour)"
    if used_gpu(facts):
        n = training_facts(facts)["world_size"]
        return (GPU_PRICE_PER_HOUR * n, f"${GPU_PRICE_PER_HOUR:.2f} per GPU-hour × {n} GPU(s), the H100 rental rate "
                f"docs/anchors.md prices nanochat's runs at (pass --price-per-hour to use your own)")
    return 0.0, ("$0 per hour: a CPU you already own charges no rent; pass --price-per-hour to price a rented "
                 "machine (the hours above are what it would bill)")


def chat_accuracy(chat_eval: dict | None, peer_task: str):
    """Our accuracy on one of nanochat's chat tasks, whichever way chat-eval spells its name."""
    for name, t in ((chat_eval or {}).get("tasks") or {}).items():
        if "".join(c for c in name.lower() if c.isalnum()) in CHAT_ALIASES[peer_task] and isinstance(t, dict):
            return t.get("accuracy")
    return None


# ----------------------------------------------------------------------------------------------------
# Plots: the object-oriented matplotlib API (Figure + savefig), which needs no pyplot state or backend
# switch, so writing a report inside another program (a notebook, the test suite) changes nothing there.


def _save_png(fig, path: Path) -> None:
    with atomic_write(path, "wb") as f:  # temp file + rename: a killed report never leaves half a PNG
        fig.savefig(f, format="png", dpi=100)


def _curve(points, ylabel: str, path: Path, smooth: bool = False) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    steps, ys = zip(*points)
    ax.plot(steps, ys, marker=None if smooth else "o", markersize=3, alpha=0.4 if smooth else 1.0, label=ylabel)
    if smooth and len(ys) >= 40:  # the raw loss is noisy; a centred moving average shows the trend without lag
        half = max(1, len(ys) // 40)
        mean = [sum(ys[max(0, i - half):i + half + 1]) / len(ys[max(0, i - half):i + half + 1]) for i in range(len(ys))]
        ax.plot(steps, mean, label=f"centred mean of {2 * half + 1} steps")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_png(fig, path)


def _bars(tasks: dict, title: str, path: Path, errors: bool) -> None:
    """Horizontal bars of centred accuracy, one per task, a line at 0 (= chance); error bars of one
    standard error when the tasks were subsampled. Tasks outside CORE (a user's own) are grey."""
    from matplotlib.figure import Figure

    rows = [(name, t) for name, t in tasks.items() if isinstance(t, dict) and is_number(t.get("centered"))]
    if not rows:
        return
    rows.reverse()  # barh draws bottom-up: keep the report's table order top-down
    fig = Figure(figsize=(7, 1.5 + 0.3 * len(rows)))
    ax = fig.add_subplot()
    values = [t["centered"] for _, t in rows]
    xerr = [centred_se(t) or 0.0 for _, t in rows] if errors else None
    colors = ["tab:blue" if t.get("core", True) else "tab:gray" for _, t in rows]
    ax.barh([name for name, _ in rows], values, xerr=xerr, color=colors, capsize=2)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("centred accuracy: (accuracy - chance) / (1 - chance); 0 = chance")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save_png(fig, path)


def make_plots(facts: dict, plot_dir: Path) -> tuple[list[tuple[str, Path]], str | None]:
    """Write the PNGs that have data: [(title, path)], and a note if plots could not be made at all."""
    try:
        import matplotlib.figure  # noqa: F401 - only to learn whether it is installed
    except ImportError:
        return [], "matplotlib is not installed (pip install matplotlib): this report has no plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    made = []
    m = facts["metrics"]
    if m["val_bpb"]:
        _curve(m["val_bpb"], "validation bits per byte", plot_dir / "val_bpb.png")
        made.append(("validation bits per byte", plot_dir / "val_bpb.png"))
    if m["loss"]:
        _curve(m["loss"], "train loss (nats/token)", plot_dir / "loss.png", smooth=True)
        made.append(("train loss", plot_dir / "loss.png"))
    from .health import plot_health  # the training-health panels (health.py), if the run logged any

    if facts.get("run_dir") and plot_health(Path(facts["run_dir"]) / "metrics.jsonl", plot_dir / "health.png"):
        made.append(("training health", plot_dir / "health.png"))
    for key, name, title, score, score_name in (("base_eval", "core.png", "CORE tasks", "core", "CORE"),
                                                ("chat_eval", "chat.png", "chat evals", "chatcore", "ChatCORE")):
        ev = facts[key]
        if ev and ev["tasks"]:
            sub = is_number(ev.get("max_per_task")) and ev["max_per_task"] > 0
            label = f"{title}: {score_name} {num(ev.get(score))}"
            _bars(ev["tasks"], label + (" (bars: ±1 s.e.)" if sub else ""), plot_dir / name, errors=sub)
            if (plot_dir / name).is_file():
                made.append((title, plot_dir / name))
    return made, None


# ----------------------------------------------------------------------------------------------------
# Markdown


def num(x, spec: str = ".4f", none: str = "—") -> str:
    """A number formatted, or "—" for anything that is not a finite number (a JSON file may hold 20.0
    where an integer was meant: it still prints as 20)."""
    if not is_number(x):
        return none
    return format(round(x) if spec.endswith("d") else x, spec)


def si(x, unit: str = "") -> str:
    """1.23M, 4.5B, 3.2e15-style: counts and FLOPs at a glance."""
    if not is_number(x):
        return "—"
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{' ' if unit else ''}{suffix}{unit}"
    return f"{x:.3g}{' ' if unit else ''}{unit}"


def hms(seconds) -> str:
    if not is_number(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h {rest // 60:02d}m {rest % 60:02d}s" if h else f"{rest // 60}m {rest % 60:02d}s"


def cell(x) -> str:
    """Text safe inside a markdown table cell: no '|' splitting it, no newline ending the row."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fenced(text: str) -> str:
    """A code block whose fence is longer than any run of backticks inside (model output may hold some)."""
    import re

    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def missing(note: str | None, command: str) -> str:
    if note and note != "missing":
        return f"*{note}*: rerun `{command}`"
    return f"*not run yet: `{command}`*"


def _eval_table(ev: dict, shots: bool) -> tuple[str, bool]:
    """The per-task table of an eval file; the ± column appears when the tasks were subsampled, the
    coverage column (how close our items are to DCLM's: exact / subset / close / missing) when recorded."""
    sub = is_number(ev.get("max_per_task")) and ev["max_per_task"] > 0
    cov = any(isinstance(t, dict) and "coverage" in t for t in ev["tasks"].values())
    header = ["task", "kind"] + (["shots"] if shots else []) + ["n", "accuracy"] + (["± s.e."] if sub else []) + \
             ["centred", "chance", "seconds"] + (["items"] if cov else []) + (["in CORE"] if shots else [])
    rows = []
    for name, t in ev["tasks"].items():
        if not isinstance(t, dict):
            continue
        row = [name, t.get("kind", "—")]
        if shots:
            k, mean = t.get("shots"), t.get("mean_shots")
            row.append(f"{k} (mean {mean:.1f})" if is_number(k) and is_number(mean) and abs(mean - k) > 0.05
                       else num(k, "d"))
        row += [num(t.get("n"), ",d"), num(t.get("accuracy"))]
        if sub:
            row.append(num(binomial_se(t.get("accuracy"), t.get("n"))))
        row += [num(t.get("centered")), num(t.get("chance"), ".3f"), num(t.get("seconds"), ".1f")]
        if cov:
            row.append(t.get("coverage", "—"))
        if shots:
            row.append("not scored: items unavailable" if t.get("missing") else
                       "yes" if t.get("core", True) else "no (own task)")
        rows.append(row)
    return table(header, rows), sub


def _core_se(ev: dict) -> float | None:
    """CORE is a mean of k centred accuracies; its standard error is sqrt(sum of their squared errors) / k."""
    ses = [centred_se(t) for t in ev["tasks"].values()
           if isinstance(t, dict) and t.get("core", True) and not t.get("missing")]
    if not ses or any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses)) / len(ses)


def render(facts: dict, plots: list[tuple[str, Path]], plot_note: str | None, md_path: Path,
           price_per_hour: float | None = None) -> str:
    """The markdown page. `plots` are linked relative to md_path, so the report folder can be moved."""
    tag, cmd, notes = facts["tag"], commands(facts["tag"]), facts["notes"]
    summary, metrics, model, meta = facts["summary"], facts["metrics"], facts["model"], facts["meta"] or {}
    tr = training_facts(facts)
    be, ce = facts["base_eval"], facts["chat_eval"]
    scored = (be or {}).get("core_tasks")
    links = {p.name: urllib.parse.quote(os.path.relpath(p, md_path.parent).replace(os.sep, "/")) for _, p in plots}

    def plot(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({links[name]})", ""] if name in links else []

    out = [f"# Report: run `{tag}`", "",
           f"Written {facts['date']} by `python -m mini_nanochat report` at git commit "
           f"`{facts['git_commit'] or 'unknown'}`" + (f"; the checkpoint was trained at `{meta['git_commit']}`"
                                                       if meta.get("git_commit") else "") + ".",
           f"Run directory: `{facts['run_dir']}`.", ""]
    if plot_note:
        out += [f"> {plot_note}.", ""]

    # ---- system
    s = facts["system"]
    out += ["## System", "", table(["what", "value"], [
        ["OS", s.get("os")], ["Python", s.get("python")], ["torch", s.get("torch") or "—"],
        ["CPU", f"{s.get('cpu') or 'unknown'}, {s.get('cores') or '?'} logical cores"],
        ["memory", f"{s['memory_gib']:.1f} GiB" if is_number(s.get("memory_gib")) else "—"],
        ["GPU", s.get("gpu") or "none visible to torch"]]),
        "", "The machine that wrote this report; the devices the stages ran on are listed with their results.", ""]

    # ---- tokenizer
    tok = facts["tokenizer"]
    out += ["## Tokenizer", ""]
    if "vocab_size" in tok:
        out += [f"`{tok['name']}`: vocabulary {num(tok.get('vocab_size'), ',d', '?')} tokens"
                + (f", trained on {num(tok.get('train_chars'), ',d')} characters of `{tok.get('corpus', '?')}` "
                   f"in {hms(tok.get('train_seconds'))}" if is_number(tok.get("train_chars")) else "")
                + (f"; held-out compression {num(tok.get('val_bytes_per_token'), '.3f')} bytes/token"
                   if is_number(tok.get("val_bytes_per_token")) else "") + ".", ""]
    else:
        out += [f"`{tok['name']}`: " + missing(notes.get("tokenizer"), cmd["tok_train"]), ""]
    if facts["tok_eval"]:
        out += ["Bytes per token beside GPT-2's, GPT-4's and GPT-4o's tokenizers (higher = fewer tokens for the "
                "same text), from `reports/tok-eval.md`:", "", facts["tok_eval"], ""]
    else:
        out += ["Compression beside GPT-2 / GPT-4 / GPT-4o: " + missing(None, cmd["tok_eval"]), ""]

    # ---- model and training
    out += ["## Model and training", ""]
    if summary is None and meta == {} and not metrics["loss"]:
        out += [missing(notes.get("summary"), cmd["train"]), ""]
    else:
        p = (model or {}).get("params") or {}
        tc = tr["train_config"]
        rows = [
            ["parameters", f"{num(p.get('total'), ',d')} ({si(p.get('total'))}): embedding {si(p.get('embedding'))}, "
                           f"blocks {si(p.get('blocks'))}, lm_head {si(p.get('lm_head'))}" if p else
             f"— ({notes.get('model') or 'no checkpoint'})"],
            ["shape", f"depth {model['n_layer']}, width {model['n_embd']}, {model['n_head']} heads "
                      f"({model['n_kv_head']} kv), vocab {model['vocab_size']:,}, context {model['sequence_len']}"
             if model else "—"],
            ["preset / optimizer",
             f"{(model or {}).get('preset', tc.get('preset', '—'))} / {tc.get('optimizer', '—')}"],
            ["corpus", meta.get("corpus", tc.get("corpus", "—"))],
            ["steps", f"{num(tr['steps'], ',d')} of {num(tr['num_iterations'], ',d')}"],
            ["tokens per step", num(tr["tokens_per_step"], ",d")],
            ["train tokens", f"{num(tr['tokens'], ',d')} ({num(tr['tokens_per_param'], '.3g')} per parameter; "
                             f"Chinchilla ~20, nanochat 12)"],
            ["training compute", f"{si(tr['train_flops'], 'FLOP')} (estimate_flops() per token × tokens)"],
            ["final val bpb", num((summary or {}).get("final_val_bpb")) if summary else
             num(metrics["val_bpb"][-1][1] if metrics["val_bpb"] else None)],
            ["final train loss", num((summary or {}).get("final_train_loss"))],
            ["throughput", f"{num((summary or {}).get('tok_per_s'), ',.0f')} tok/s"],
            ["MFU", f"{num((summary or {}).get('mfu'), '.1%')} of {si((summary or {}).get('peak_flops'), 'FLOP/s')}"],
            ["ranks", num(tr["world_size"], "d")],
            ["training time", f"{hms(metrics['train_seconds'])} (sum of {metrics['steps_logged']:,} step times)"],
        ]
        out += [table(["what", "value"], rows), ""]
        if summary is None:
            why = "" if notes.get("summary") == "missing" else f" ({notes.get('summary')})"
            out += [f"*No summary.json{why}: the run is unfinished or was interrupted; continue it with "
                    f"`{cmd['train']} --resume`.*", ""]
        out += plot("val_bpb.png", "validation bits per byte") + plot("loss.png", "train loss")
        out += plot("health.png", "training health: gradient norm, update ratios, residual RMS, attention entropy")
        if facts["samples"]:
            out += ["Samples at the last step (greedy):", "", fenced(facts["samples"]), ""]

    # ---- base evaluation
    out += ["## Evaluation (base model)", ""]
    if be is None:
        out += ["val bpb and CORE: " + missing(notes.get("base_eval"), cmd["base_eval"]), ""]
    else:
        out += [f"Checkpoint step {num(be.get('step'), ',d')}, {be.get('device', '?')} {be.get('dtype', '')}, "
                f"{be.get('date', '?')}, {hms(be.get('seconds'))}.", "",
                f"- **val bpb** {num(be.get('val_bpb'))} over {num(be.get('eval_tokens'), ',d')} tokens",
                f"- **CORE {num(be.get('core'))}**" + (f" ± {num(_core_se(be))}" if is_number(be.get('max_per_task'))
                                                      and be['max_per_task'] > 0 and _core_se(be) else "")
                + f", {num(scored, 'd', '?')} of {num(be.get('core_total', CORE_TOTAL), 'd')} tasks scored"
                + ("" if scored == be.get("core_total", CORE_TOTAL) else
                   " (a mean over the scored tasks only: not exactly comparable with a full CORE)"), ""]
        if be["tasks"]:
            text, sub = _eval_table(be, shots=True)
            out += [text, ""]
            if sub:
                out += [f"Each task was scored on at most {be['max_per_task']:,} items (`--max-per-task`), a "
                        "subsample: ± is the binomial standard error sqrt(p(1-p)/n) of the accuracy (the centred "
                        "value's is that ÷ (1 - chance); CORE's is sqrt(Σ se²)/k).", ""]
        out += plot("core.png", "CORE: centred accuracy per task")
        samples = [sm for sm in be.get("samples") or [] if isinstance(sm, dict)]
        if samples:
            out += ["Samples:", "", fenced("\n".join(f"{sm.get('prompt', '')} >>> {sm.get('completion', '')}"
                                                     for sm in samples[:8])), ""]

    # ---- chat evaluation
    out += ["## Chat evaluation", ""]
    if ce is None:
        out += ["ARC, MMLU, GSM8K, HumanEval: " + missing(notes.get("chat_eval"), cmd["chat_eval"]), ""]
    else:
        out += [f"Run `{ce.get('run', '?')}`, checkpoint step {num(ce.get('step'), ',d')}, {ce.get('device', '?')}, "
                f"{ce.get('date', '?')}, "
                f"{hms(ce.get('seconds'))}. **ChatCORE {num(ce.get('chatcore'))}** (mean centred accuracy).", ""]
        if ce["tasks"]:
            text, sub = _eval_table(ce, shots=False)
            out += [text, ""]
            if sub:
                out += [f"At most {ce['max_per_task']:,} items per task (`--max-per-task`): ± is the binomial "
                        "standard error sqrt(p(1-p)/n).", ""]
        out += plot("chat.png", "chat evals: centred accuracy per task")

    out += chat_model_section(facts)

    # ---- time and cost
    rate, assumption = price(facts, price_per_hour)
    phases = [["tokenizer training", hms(tok.get("train_seconds")), "tokenizer.json meta"],
              ["pretraining", hms(metrics["train_seconds"]) if metrics["steps_logged"] else "—",
               "sum of step times in metrics.jsonl (in-training evals and checkpoints excluded)"],
              ["base-eval", hms((be or {}).get("seconds")), "eval/base_eval.json"],
              ["chat-eval", hms((ce or {}).get("seconds")), "eval/chat_eval.json"]]
    total = sum(x for x in (tok.get("train_seconds"), metrics["train_seconds"], (be or {}).get("seconds"),
                            (ce or {}).get("seconds")) if is_number(x))
    for name in ("sft", "rl"):
        if is_number((facts.get(name) or {}).get("seconds")):
            phases.append([name.upper() if name == "sft" else "RL", hms(facts[name]["seconds"]),
                           f"runs/{tag}-{name}/summary.json"])
            total += facts[name]["seconds"]
    out += ["## Time and estimated cost", "",
            table(["phase", "wall time", "from"], phases + [["**total**", hms(total), ""]]),
            "", f"Estimated cost: **${total / 3600 * rate:,.2f}** = {total / 3600:.3f} h × {assumption}.", ""]
    st = facts.get("speedrun_times")
    if isinstance(st, dict) and isinstance(st.get("stages_seconds"), dict):
        rows = [[k, hms(v)] for k, v in st["stages_seconds"].items() if is_number(v)]
        out += [f"The speedrun (preset `{st.get('preset', '?')}`, {st.get('date', '?')}) took "
                f"**{hms(st.get('total_seconds'))}** from its start to the report, stage by stage (wall time, "
                "probes, evaluations and checkpoints included):", "", table(["stage", "wall time"], rows), ""]

    # ---- peers
    out += ["## Beside nanochat and GPT-2", ""]
    ours_params = ((model or {}).get("params") or {}).get("total")
    ours_bpb = next((x for x in ((be or {}).get("val_bpb"), (summary or {}).get("final_val_bpb")) if is_number(x)), None)
    ours_core = num((be or {}).get("core")) + (f" ({scored}/{CORE_TOTAL} tasks)" if be and is_number(be.get("core"))
                                            and scored != CORE_TOTAL else "")
    rows = [[f"**this run (`{tag}`)**", si(ours_params), hms(total), num(ours_bpb), ours_core]
            + [num(chat_accuracy(ce, t), ".3f") for t in PEER_CHAT_TASKS] + [f"${total / 3600 * rate:,.2f}"]]
    for name, p in PEERS.items():
        chat = p.get("chat", {})
        rows.append([name, si(p.get("params")), p.get("time", "—"), num(p.get("val_bpb"), ".3f"),
                     p.get("core_note", "") + num(p.get("core"))] + [num(chat.get(t), ".3f") for t in PEER_CHAT_TASKS]
                    + [f"~${p['cost_usd']:,}" if "cost_usd" in p else "—"])
    out += [table(["system", "params", "time", "val bpb", "CORE"] + PEER_CHAT_TASKS + ["cost"], rows), "",
            "Published figures from docs/anchors.md (nanochat's chat scores are accuracies after SFT; GPT-2's "
            "CORE is measured on the released checkpoints). val bpb is measured on each project's own validation "
            "text, so it compares only in kind; our chat columns are plain accuracies too.", ""]
    if is_number(ours_params) and 0 < ours_params < 50e6:
        smaller = f", {124e6 / ours_params:,.0f}× fewer than GPT-2 124M"
        out += [f"An honest note: a CPU-sized model ({si(ours_params)} parameters{smaller}; "
                f"{si(tr['train_flops'], 'FLOP')} of training) scores near chance, so CORE and ChatCORE near 0 are "
                "what it should get. The table shows the distance to the peers, not a race.", ""]
    return "\n".join(out).rstrip() + "\n"


def chat_model_section(facts: dict) -> list[str]:
    """SFT and RL of the run's chat models: arithmetic with the calculator, identity, sample replies."""
    sft, rl, card, tag = facts.get("sft"), facts.get("rl"), facts.get("chat_card"), facts["tag"]
    out = ["## The chat model (SFT and RL)", ""]
    if sft is None:
        return out + [missing(facts["notes"].get("sft"), f"python -m mini_nanochat sft --model-tag {tag}"), ""]
    a = sft.get("arithmetic") or {}
    rows = [["SFT", f"{num(sft.get('steps'), ',d')} steps, {hms(sft.get('seconds'))}; val loss "
                    f"{num(sft.get('final_val_loss'))}",
             f"{num(a.get('accuracy'), '.0%')} of {num(a.get('n'), 'd')}" + (
                 f" ± {num(binomial_se(a['accuracy'], a['n']), '.0%')}" if is_number(a.get("accuracy")) and
                 is_number(a.get("n")) and a["n"] > 0 else ""),
             num(a.get("tool_use"), ".0%")]]
    if rl is not None:
        b, r = rl.get("before") or {}, rl.get("after") or {}
        rows.append(["RL", f"{num(rl.get('steps'), ',d')} steps, {hms(rl.get('seconds'))}; pass@1 "
                           f"{num(b.get('pass@1'), '.0%')} before",
                     f"{num(r.get('pass@1'), '.0%')} of {num(r.get('n'), 'd')}" + (
                         f" ± {num(binomial_se(r['pass@1'], r['n']), '.0%')}" if is_number(r.get("pass@1")) and
                         is_number(r.get("n")) and r["n"] > 0 else ""), "—"])
    out += ["Arithmetic with the calculator: held-out questions (numbers and sentences never trained on), "
            "greedy; right = the calculator was called with a correct expression and the answer states the "
            "result.", "", table(["stage", "training", "arithmetic right", "used the tool"], rows), ""]
    if card:
        ident = card.get("identity") or {}
        out += [f"Identity ({facts.get('chat_run') or '?'}, step {num(card.get('step'), ',d')}): "
                f"**{ident.get('correct', '?')} of {ident.get('n', '?')}** held-out phrasings of \"who are you?\" "
                "answered with the model's name.", ""]
        lines = [f"> {x.get('user', '')}\n{display_reply(str(x.get('reply', '')))}"
                 for x in (ident.get("replies") or [])[:2] + (card.get("conversations") or [])]
        mt = card.get("multi_turn") or {}
        if mt.get("replies"):
            lines.append("-- one conversation, turn by turn (stopped by itself: "
                         f"{mt.get('stopped', '?')} of {mt.get('turns', '?')} turns) --\n"
                         + "\n".join(f"> {x.get('user', '')}\n{display_reply(str(x.get('reply', '')))}"
                                     for x in mt["replies"]))
        out += ["Sample replies (greedy; a calculator call shows as `[calculator: expression = result]`):", "",
                fenced("\n\n".join(lines)), ""]
    else:
        out += ["Identity and sample replies: " + missing(facts["notes"].get("chat_card"),
                                                          f"python -m mini_nanochat chat-eval --model-tag {tag}"), ""]
    return out


def headline(facts: dict) -> str:
    """The few numbers the speedrun prints at its end, as a small table."""
    be, ce, sft, rl, card = (facts.get(k) or {} for k in ("base_eval", "chat_eval", "sft", "rl", "chat_card"))
    summary, st = facts.get("summary") or {}, facts.get("speedrun_times") or {}
    bpb = next((x for x in (be.get("val_bpb"), summary.get("final_val_bpb")) if is_number(x)), None)
    arith = (rl.get("after") or {}).get("pass@1") if rl else (sft.get("arithmetic") or {}).get("accuracy")
    ident = card.get("identity") or {}
    rows = [["val bpb", num(bpb)], ["CORE", num(be.get("core"))],
            ["arithmetic with the tool", num(arith, ".0%")],
            ["identity", f"{ident.get('correct', '—')} of {ident.get('n', '—')}" if ident else "—"],
            ["ChatCORE", num(ce.get("chatcore"))], ["total time", hms(st.get("total_seconds"))]]
    return table([f"run `{facts['tag']}`", "value"], rows)


# ----------------------------------------------------------------------------------------------------


def default_out(tag: str, base_dir: Path | None = None) -> Path:
    return (base_dir or get_base_dir()) / "reports" / f"{tag}.md"


def plot_dir_for(out: Path) -> Path:
    """Where the PNGs of the report `out` go: reports/<tag>.md -> reports/<tag>/ (a name without a suffix
    gets <name>_plots/, so the folder never collides with the file)."""
    return out.with_suffix("") if out.suffix else out.parent / f"{out.name}_plots"


def write_report(tag: str, out: Path | None = None, price_per_hour: float | None = None,
                 base_dir: Path | None = None) -> dict:
    """Gather, plot and render the report of run `tag`: writes `out` (default reports/<tag>.md) and its
    PNGs in the folder beside it named like it without .md. Returns {"markdown", "plots", "note", "facts"}.
    The caller checks that the run exists (run_dir_of)."""
    out = Path(out) if out else default_out(tag, base_dir)
    plot_dir = plot_dir_for(out)
    facts = gather(tag, base_dir)
    plots, note = make_plots(facts, plot_dir)
    write_text_atomic(out, render(facts, plots, note, out, price_per_hour))
    return {"markdown": out, "plots": [p for _, p in plots], "note": note, "facts": facts}
