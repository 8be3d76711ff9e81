"""
The history lab: train each era's recipe and single-idea ablations on the same data, under the same
CPU-time budget, with several seeds, and compare validation bits per byte.

    runs = lab_runs()                                  # name -> RunSpec (what changed from "modern")
    result = train_one(runs["gpt2"], seed=0, budget_s=60, lab_dir=..., base_dir=...)
    rows = summarise(results)                          # mean, std, delta vs modern, "within noise"

Method (ADR 0042):
- **Model**: a small lab size, `GPTConfig.from_depth(4, aspect_ratio=32, head_dim=64)` = 4 layers, width 128,
  2 heads, T 128, batch 8 x 128 tokens; a run changes only what its RunSpec says.
- **Budget**: each run trains until its main thread has used `budget_s` seconds of CPU time
  (`time.thread_time()`), single-threaded (`torch.set_num_threads(1)`). CPU time, not wall time, because the
  machine is shared: another process slows a run's wall clock, much less its CPU time. The data loader
  tokenizes in a background thread that is not counted (it is the same work for every run of a tokenizer).
  The learning-rate schedule is a function of the budget used, not of the step (the number of steps is not
  known in advance): warmup over the first 5%, linear warmdown over the last 65% (base-train's ratio).
- **Evaluation**: bits per byte on the same bytes for every run: the first ~50 kB of the val split's
  documents, each tokenized with the run's tokenizer, concatenated and cut into rows, so every byte is
  scored exactly once whatever the vocabulary (the val loader's best-fit packing crops documents
  differently for different tokenizers, which would make vocabularies incomparable).
- **Noise**: a difference from "modern" is "within noise" when |delta| < 2 x its standard error,
  sqrt(s_a^2 / n_a + s_b^2 / n_b) over seeds (about a 95% interval; with 3 seeds a rough one).

Everything lands under the lab directory: `tokenizers/v<N>/` (the lab's own tokenizers, trained on the
embedded corpus, so the lab does not depend on the user's default tokenizer), `results/<run>-s<seed>-b<budget>.json`
(one per finished run: a re-run skips it), `history.md`, `history.json`, `history.png`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The lab's model size and batch (see the module docstring); small enough for ~400 steps per minute of
# one core's CPU time at width 128.
LAB_DEPTH, LAB_ASPECT, LAB_HEAD_DIM, LAB_T, LAB_B = 4, 32, 64, 128, 8
DEFAULT_VOCAB = 4096
EVAL_BYTES = 50_000
WARMUP_FRAC, WARMDOWN_RATIO = 0.05, 0.65
# base-train's defaults (stages/base_train.TrainConfig) for the groups that no run changes
EMBEDDING_LR, UNEMBEDDING_LR, SCALAR_LR = 0.2, 0.004, 0.01
MUON_LR, ADAMW_LR = 0.02, 0.003


@dataclass(frozen=True)
class RunSpec:
    """One recipe: a preset plus GPTConfig overrides, an optimizer with its matrix LR, a vocabulary size."""
    name: str
    changed: str  # what differs from "modern", in words
    group: str  # "era", "ablation" or "optimizer"
    preset: str = "modern"
    overrides: dict = field(default_factory=dict)
    optimizer: str = "muon"
    matrix_lr: float = MUON_LR
    vocab_size: int = DEFAULT_VOCAB

    def key(self) -> str:
        """Identifies the recipe in result files: a changed definition is never mistaken for an old result."""
        return json.dumps({k: v for k, v in asdict(self).items() if k not in ("changed", "group")}, sort_keys=True)


def lab_runs() -> dict[str, RunSpec]:
    """The era recipes and the single-idea ablations from "modern" (nanochat's recipe, our default).

    >>> runs = lab_runs(); runs["gpt2"].preset, runs["gpt2"].optimizer, runs["no-qk-norm"].overrides
    ('gpt2', 'adamw', {'qk_norm': False})
    """
    specs = [
        RunSpec("modern", "baseline: modern preset + Muon (nanochat 2025)", "era"),
        RunSpec("gpt2", "GPT-2 2019 preset + AdamW", "era", preset="gpt2", optimizer="adamw", matrix_lr=ADAMW_LR),
        RunSpec("llama", "LLaMA 2023 preset + AdamW", "era", preset="llama", optimizer="adamw", matrix_lr=ADAMW_LR),
        RunSpec("learned-pos", "learned absolute positions instead of RoPE", "ablation",
                overrides={"pos_emb": "learned"}),
        RunSpec("no-qk-norm", "no QK-norm", "ablation", overrides={"qk_norm": False}),
        RunSpec("gelu", "GELU MLP instead of ReLU^2", "ablation", overrides={"mlp": "gelu"}),
        RunSpec("swiglu", "SwiGLU MLP (8/3 x) instead of ReLU^2", "ablation", overrides={"mlp": "swiglu"}),
        RunSpec("tied", "tied embedding / unembedding", "ablation", overrides={"tie_embeddings": True}),
        RunSpec("no-softcap", "no logit soft-cap", "ablation", overrides={"logit_softcap": 0.0}),
        RunSpec("value-embeds", "value embeddings on", "ablation", overrides={"value_embeds": True}),
        RunSpec("full-attn", "full attention in every layer (no sliding windows)", "ablation",
                overrides={"window_pattern": "L"}),
        RunSpec("vocab-1024", "vocabulary 1,024 instead of 4,096", "ablation", vocab_size=1024),
        RunSpec("vocab-16384", "vocabulary 16,384 instead of 4,096", "ablation", vocab_size=16384),
        RunSpec("muon-lr0.01", "Muon matrix LR 0.01", "optimizer", matrix_lr=0.01),
        RunSpec("muon-lr0.04", "Muon matrix LR 0.04", "optimizer", matrix_lr=0.04),
        RunSpec("adamw-lr0.001", "AdamW for the matrices, LR 0.001", "optimizer", optimizer="adamw", matrix_lr=0.001),
        RunSpec("adamw-lr0.003", "AdamW for the matrices, LR 0.003", "optimizer", optimizer="adamw", matrix_lr=0.003),
        RunSpec("adamw-lr0.01", "AdamW for the matrices, LR 0.01", "optimizer", optimizer="adamw", matrix_lr=0.01),
    ]
    return {s.name: s for s in specs}


def model_config(spec: RunSpec, vocab_size: int):
    from .gpt import GPTConfig

    return GPTConfig.from_depth(LAB_DEPTH, vocab_size=vocab_size, sequence_len=LAB_T, preset=spec.preset,
                                aspect_ratio=LAB_ASPECT, head_dim=LAB_HEAD_DIM, **spec.overrides)


# ---- tokenizers and evaluation data ---------------------------------------------------------------------

def lab_tokenizer(lab_dir: Path, vocab_size: int, corpus: str = "embedded", base_dir=None, max_chars: int = 3_000_000):
    """The lab's tokenizer of `vocab_size`, trained (rustbpe) on the first `max_chars` of the corpus's train
    split once and kept under lab_dir/tokenizers/v<N>. A file lock keeps two workers from training it twice."""
    from .common import file_lock
    from .dataset import iter_texts
    from .tokenizer import Tokenizer, iter_chunks_of_text

    d = Path(lab_dir) / "tokenizers" / f"v{vocab_size}"
    d.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(d.parent / f".train-v{vocab_size}.lock"):
        if (d / "tokenizer.json").exists():
            return Tokenizer.load(d)
        texts = list(iter_chunks_of_text(iter_texts(corpus, "train", base_dir), max_chars))
        tok = Tokenizer.train(texts, vocab_size)
        tok.save(d)
        return Tokenizer.load(d)


def eval_batches(tok, corpus: str = "embedded", base_dir=None, n_bytes: int = EVAL_BYTES, B: int = LAB_B,
                 T: int = LAB_T) -> list:
    """The same held-out bytes for every tokenizer: the first val documents up to `n_bytes` UTF-8 bytes,
    each as <|bos|> + tokens, concatenated and cut into (B, T) rows with next-token targets. Every token but
    the first is a target exactly once; the tail is padded with targets -1 (ignored).

    Returns [(x, y), ...] of int64 (B, T) tensors."""
    import torch

    from .dataset import iter_texts

    stream, used = [], 0
    for text in iter_texts(corpus, "val", base_dir):
        stream += tok.encode(text, prepend=tok.bos_id)
        used += len(text.encode("utf-8"))
        if used >= n_bytes:
            break
    rows_needed = math.ceil((len(stream) - 1) / T)
    rows_needed = B * math.ceil(rows_needed / B)
    ids = torch.full((rows_needed * T + 1,), -1, dtype=torch.int64)
    ids[: len(stream)] = torch.tensor(stream, dtype=torch.int64)
    x = ids[:-1].clone().view(rows_needed, T)
    y = ids[1:].clone().view(rows_needed, T)
    x[x < 0] = tok.bos_id  # padded inputs: any valid id; their targets are -1
    return [(x[i:i + B], y[i:i + B]) for i in range(0, rows_needed, B)]


# ---- one run -----------------------------------------------------------------------------------------------

def result_path(lab_dir: Path, spec: RunSpec, seed: int, budget_s: float) -> Path:
    return Path(lab_dir) / "results" / f"{spec.name}-s{seed}-b{budget_s:g}.json"


def load_result(lab_dir: Path, spec: RunSpec, seed: int, budget_s: float) -> dict | None:
    """A finished run's result, if one with the same recipe, seed and budget is on disk."""
    p = result_path(lab_dir, spec, seed, budget_s)
    try:
        r = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return r if r.get("key") == spec.key() else None


def warm_up() -> None:
    """Run one tiny training step of each kind in this process, so that one-time costs (lazy imports inside
    torch, first-call allocations) land outside every run's timed budget, not in the first run of a worker."""
    import torch

    from .gpt import GPT, GPTConfig
    from .optim import MuonAdamW, build_param_groups

    torch.set_num_threads(1)
    for opt in ("muon", "adamw"):
        model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=64, sequence_len=8))
        optimizer = MuonAdamW(build_param_groups(model, matrix_lr=0.01, embedding_lr=0.1, unembedding_lr=0.01,
                                                 scalar_lr=0.01, optimizer=opt))
        x = torch.randint(0, 64, (2, 8))
        model(x, x).backward()
        optimizer.step()


def train_one(spec: RunSpec, seed: int, budget_s: float, lab_dir: Path, corpus: str = "embedded",
              base_dir=None) -> dict:
    """Train `spec` from scratch with `seed` until the main thread has used `budget_s` CPU seconds, then
    measure val bits per byte on the fixed eval bytes. Single-threaded. Writes and returns the result."""
    import torch

    from .common import seed_everything, write_json_atomic
    from .dataloader import DataLoader
    from .gpt import GPT
    from .loss_eval import evaluate_bpb
    from .optim import MuonAdamW, build_param_groups
    from .training import lr_multiplier, muon_momentum, train_step

    torch.set_num_threads(1)  # one core per run: two runs share a 2-core machine without fighting
    tok = lab_tokenizer(lab_dir, spec.vocab_size, corpus, base_dir)
    seed_everything(seed)
    cfg = model_config(spec, tok.vocab_size)
    model = GPT(cfg, device="cpu", compute_dtype=torch.float32)
    optimizer = MuonAdamW(build_param_groups(model, matrix_lr=spec.matrix_lr, embedding_lr=EMBEDDING_LR,
                                             unembedding_lr=UNEMBEDDING_LR, scalar_lr=SCALAR_LR,
                                             optimizer=spec.optimizer))
    loader = DataLoader(tok, LAB_B, LAB_T, corpus=corpus, seed=seed, base_dir=base_dir)
    batches = iter(loader)
    steps, losses = 0, []
    start_cpu, start_wall = time.thread_time(), time.time()
    try:
        while True:
            used = time.thread_time() - start_cpu
            if used >= budget_s:
                break
            # the schedule follows the budget used (1000 virtual steps), Muon's momentum the real step
            mult = lr_multiplier(min(999, int(1000 * used / budget_s)), 1000, round(1000 * WARMUP_FRAC),
                                 WARMDOWN_RATIO, 0.0)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * mult
                if g.get("kind") == "muon":
                    g["momentum"] = muon_momentum(steps)
            losses.append(train_step(model, optimizer, batches, 1))
            steps += 1
    finally:
        loader.close()
    train_cpu, train_wall = time.thread_time() - start_cpu, time.time() - start_wall
    bpb = evaluate_bpb(model, eval_batches(tok, corpus, base_dir),
                       torch.tensor(tok.token_bytes(), dtype=torch.int64))
    result = dict(run=spec.name, seed=seed, budget_s=budget_s, key=spec.key(), val_bpb=bpb, steps=steps,
                  train_tokens=steps * LAB_B * LAB_T, train_cpu_s=round(train_cpu, 2),
                  train_wall_s=round(train_wall, 2), final_train_loss=sum(losses[-10:]) / max(1, len(losses[-10:])),
                  params=model.param_counts()["total"], vocab_size=tok.vocab_size,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = result_path(lab_dir, spec, seed, budget_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return result


# ---- the summary -----------------------------------------------------------------------------------------

def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value).

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def verdict(delta: float, std_a: float | None, n_a: int, std_b: float | None, n_b: int) -> str:
    """"within noise" when |delta| < 2 standard errors of the difference, else "better" (lower bpb) or
    "worse"; "n/a" when either side has one seed.

    >>> verdict(-0.05, 0.01, 3, 0.01, 3), verdict(0.005, 0.01, 3, 0.01, 3), verdict(0.1, None, 1, 0.01, 3)
    ('better', 'within noise', 'n/a (1 seed)')
    """
    if std_a is None or std_b is None:
        return "n/a (1 seed)"
    se = math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b)
    if abs(delta) < 2 * se:
        return "within noise"
    return "better" if delta < 0 else "worse"


def summarise(specs: dict[str, RunSpec], results: list[dict], baseline: str = "modern") -> list[dict]:
    """One row per run: mean val bpb, its std over seeds, n, delta vs the baseline and the noise verdict."""
    by_run: dict[str, list[dict]] = {}
    for r in results:
        by_run.setdefault(r["run"], []).append(r)
    rows = []
    for name, spec in specs.items():
        rs = by_run.get(name)
        if not rs:
            continue
        mean, std = mean_std([r["val_bpb"] for r in rs])
        rows.append(dict(run=name, changed=spec.changed, group=spec.group, mean_bpb=mean, std_bpb=std, n=len(rs),
                         seeds=sorted(r["seed"] for r in rs), bpb_by_seed=[r["val_bpb"] for r in sorted(rs, key=lambda r: r["seed"])],
                         mean_steps=sum(r["steps"] for r in rs) / len(rs), params=rs[0]["params"]))
    base = next((r for r in rows if r["run"] == baseline), None)
    for r in rows:
        if base is None or r is base:
            r["delta"], r["verdict"] = None, ("baseline" if r is base else "no baseline")
            continue
        r["delta"] = r["mean_bpb"] - base["mean_bpb"]
        r["verdict"] = verdict(r["delta"], r["std_bpb"], r["n"], base["std_bpb"], base["n"])
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| run | what changed | val bpb (mean) | std | n | steps | delta vs modern | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        std = f"{r['std_bpb']:.4f}" if r["std_bpb"] is not None else "-"
        delta = f"{r['delta']:+.4f}" if r["delta"] is not None else "-"
        lines.append(f"| {r['run']} | {r['changed']} | {r['mean_bpb']:.4f} | {std} | {r['n']} | "
                     f"{r['mean_steps']:.0f} | {delta} | {r['verdict']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Mean val bpb per run (bar), each seed's value (dots) and +-1 std (error bar); the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ys = list(range(len(rows)))[::-1]
    colors = {"era": "tab:blue", "ablation": "tab:orange", "optimizer": "tab:green"}
    for y, r in zip(ys, rows):
        ax.barh(y, r["mean_bpb"], color=colors.get(r["group"], "grey"), alpha=0.5,
                xerr=r["std_bpb"] or 0, capsize=3)
        ax.plot(r["bpb_by_seed"], [y] * len(r["bpb_by_seed"]), "k.", markersize=4)
    base = next((r for r in rows if r["run"] == "modern"), None)
    if base:
        ax.axvline(base["mean_bpb"], color="tab:blue", linestyle="--", linewidth=1)
    lo = min(min(r["bpb_by_seed"]) for r in rows)
    hi = max(max(r["bpb_by_seed"]) for r in rows)
    pad = max(0.02, 0.1 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["run"] for r in rows])
    ax.set_xlabel("validation bits per byte (lower is better); bar = mean, dots = seeds, whisker = 1 std")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
