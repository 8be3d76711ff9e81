"""
Stage `base-train`: pretrain the GPT on a corpus with the packing loader, AdamW + Muon, a warmup /
constant / warmdown schedule, periodic validation bits-per-byte and samples, and exact resume.

    python -m mini_nanochat base-train --depth 4 --num-iterations 300          # a few minutes on a CPU
    python -m mini_nanochat base-train --depth 4 --num-iterations 600 --resume # continue the same run
    torchrun --nproc_per_node=8 -m mini_nanochat base-train --depth 20         # GPUs (Phase 4)

One dial: --depth. From it: width, heads (GPTConfig.from_depth), the learning rates (scaled with width),
and the training horizon (tokens = --target-param-data-ratio x parameters unless --num-iterations or
--target-flops say otherwise). Everything lands in runs/<tag>/ under the base directory:
checkpoints/, metrics.jsonl, plots/*.png, samples.txt.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, latest_checkpoint
from ..common import (UserError, autodetect_device, compute_dtype, get_base_dir, get_dist_info, is_plain_name,
                      peak_flops, print0, print_config, require, seed_everything, setup_device, synchronize,
                      write_json_atomic, write_text_atomic)

SAMPLE_PROMPTS = ["The Congress shall", "Fellow-Citizens of the Senate and House of Representatives:",
                  "To be, or not to be,", "The state of the Union is"]


@dataclass
class TrainConfig:
    depth: int = 4
    preset: str = "modern"
    max_seq_len: int = 256
    device_batch_size: int = 8
    total_batch_size: int = -1  # tokens per optimizer step; -1 = one micro-batch per rank
    num_iterations: int = -1
    target_flops: float = -1.0
    target_param_data_ratio: float = 12.0
    optimizer: str = "muon"
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    scalar_lr: float = 0.01
    weight_decay: float = 0.0
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.0
    eval_every: int = 100
    eval_tokens: int = 2**17
    health_every: int = 50
    sample_every: int = 0
    save_every: int = 0
    keep_last: int = 2
    seed: int = 0
    dtype: str = ""
    device: str = ""
    compile: bool | None = None  # None: on for CUDA, off elsewhere
    corpus: str = "embedded"
    tokenizer: str = "default"
    model_tag: str = ""
    run_dir: str = ""
    resume: bool = False
    stop_at: int = -1
    wandb: str = ""
    sync: str = "ddp"
    dist_timeout: float = 300.0


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat base-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    a = p.add_argument
    a("--depth", type=int, default=d.depth, help="the one dial: number of transformer blocks (width = 64 x depth)")
    a("--preset", default=d.preset, choices=["modern", "gpt2", "llama"], help="architecture preset (gpt.py)")
    a("--max-seq-len", type=int, default=d.max_seq_len, help="context length T")
    a("--device-batch-size", type=int, default=d.device_batch_size, help="rows per micro-batch per rank")
    a("--total-batch-size", type=int, default=d.total_batch_size,
      help="tokens per optimizer step, reached by gradient accumulation (-1: one micro-batch per rank)")
    a("--num-iterations", type=int, default=d.num_iterations, help="optimizer steps (overrides the horizon rules)")
    a("--target-flops", type=float, default=d.target_flops, help="horizon from a FLOPs budget (if > 0)")
    a("--target-param-data-ratio", type=float, default=d.target_param_data_ratio,
      help="horizon: train tokens = ratio x parameters (Chinchilla ~20; nanochat 12)")
    a("--optimizer", default=d.optimizer, choices=["muon", "adamw"], help="update rule for the block matrices")
    a("--matrix-lr", type=float, default=d.matrix_lr, help="LR of the block matrices (Muon)")
    a("--embedding-lr", type=float, default=d.embedding_lr, help="AdamW LR of the embedding (x (width/768)^-0.5)")
    a("--unembedding-lr", type=float, default=d.unembedding_lr, help="AdamW LR of lm_head (x (width/768)^-0.5)")
    a("--scalar-lr", type=float, default=d.scalar_lr, help="AdamW LR of norm gains and biases")
    a("--weight-decay", type=float, default=d.weight_decay, help="decoupled weight decay of the block matrices")
    a("--warmup-steps", type=int, default=d.warmup_steps, help="linear LR warmup steps")
    a("--warmdown-ratio", type=float, default=d.warmdown_ratio, help="fraction of the run with a linear LR decay")
    a("--final-lr-frac", type=float, default=d.final_lr_frac, help="LR at the end, as a fraction of the peak")
    a("--eval-every", type=int, default=d.eval_every, help="validation bits-per-byte every N steps (0: end only)")
    a("--eval-tokens", type=int, default=d.eval_tokens, help="validation tokens per evaluation")
    a("--health-every", type=int, default=d.health_every, help="training-health metrics (health.py) every N steps "
      "into metrics.jsonl, and the gradient norm every step (0: off; loss spikes are watched anyway)")
    a("--sample-every", type=int, default=d.sample_every, help="write samples every N steps (0: end only)")
    a("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: end only)")
    a("--keep-last", type=int, default=d.keep_last, help="checkpoints to keep")
    a("--seed", type=int, default=d.seed, help="seed of init, data order and samples")
    a("--dtype", default=d.dtype, help="compute dtype: float32 / bfloat16 (default: bf16 on CUDA SM80+, else fp32)")
    a("--device", default=d.device, help="cuda / mps / cpu (default: autodetect)")
    a("--compile", action=argparse.BooleanOptionalAction, default=None,
      help="torch.compile the training step's model (default: on for CUDA, off on CPU / MPS)")
    a("--corpus", default=d.corpus, help="corpus under <base>/data (see the data stage)")
    a("--tokenizer", default=d.tokenizer, help="tokenizer under <base>/tokenizer")
    a("--model-tag", default=d.model_tag, help="run name: <base>/runs/<tag> (default d<depth>)")
    a("--run-dir", default=d.run_dir, help="explicit run directory (overrides --model-tag)")
    a("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    a("--sync", default="ddp", choices=["ddp", "zero2"],
      help="multi-process gradient sync: ddp (all-reduce) or zero2 (sharded optimizer state); see distributed.py")
    a("--dist-timeout", type=float, default=300.0,
      help="seconds a collective waits for another rank before the job fails (a dead rank never hangs it)")
    a("--wandb", default="", help="also log to Weights & Biases under this project (needs `pip install wandb`)")
    a("--stop-at", type=int, default=-1, help="save a checkpoint and stop at this step, without changing the "
      "schedule (train in slices: continue later with --resume)")
    return p


# ---- the horizon -------------------------------------------------------------------------------------

def resolve_horizon(cfg: TrainConfig, n_params: int, flops_per_token: int, tokens_per_step: int) -> tuple[int, str]:
    if cfg.num_iterations > 0:
        return cfg.num_iterations, "--num-iterations"
    if cfg.target_flops > 0:
        return max(1, round(cfg.target_flops / (flops_per_token * tokens_per_step))), "--target-flops"
    return (max(1, round(cfg.target_param_data_ratio * n_params / tokens_per_step)),
            f"{cfg.target_param_data_ratio:g} x {n_params:,} params")


# ---- the stage --------------------------------------------------------------------------------------

def validate(cfg: TrainConfig) -> None:
    """Every flag checked before anything is built or written: a mistake is one line (UserError, exit 2)."""
    import math as _math

    require(1 <= cfg.depth <= 256, f"--depth must be between 1 and 256, got {cfg.depth}")
    require(2 <= cfg.max_seq_len <= 2**20, f"--max-seq-len must be between 2 and {2**20:,}, got {cfg.max_seq_len}")
    require(1 <= cfg.device_batch_size <= 2**20,
         f"--device-batch-size must be between 1 and {2**20:,}, got {cfg.device_batch_size}")
    require(cfg.total_batch_size == -1 or cfg.total_batch_size >= 1,
         f"--total-batch-size must be positive (or -1: one micro-batch per rank), got {cfg.total_batch_size}")
    require(cfg.num_iterations == -1 or cfg.num_iterations >= 1,
         f"--num-iterations must be at least 1 (or -1: from the horizon rules), got {cfg.num_iterations}")
    require(cfg.target_flops == -1 or (cfg.target_flops > 0 and _math.isfinite(cfg.target_flops)),
         f"--target-flops must be positive (or -1), got {cfg.target_flops}")
    require(cfg.target_param_data_ratio > 0 and _math.isfinite(cfg.target_param_data_ratio),
         f"--target-param-data-ratio must be positive, got {cfg.target_param_data_ratio}")
    for flag in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay"):
        v = getattr(cfg, flag)
        require(_math.isfinite(v) and v >= 0, f"--{flag.replace('_', '-')} must be a finite number >= 0, got {v}")
    require(cfg.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {cfg.warmup_steps}")
    require(0 <= cfg.warmdown_ratio <= 1, f"--warmdown-ratio must be between 0 and 1, got {cfg.warmdown_ratio}")
    require(0 <= cfg.final_lr_frac <= 1, f"--final-lr-frac must be between 0 and 1, got {cfg.final_lr_frac}")
    for flag in ("eval_every", "sample_every", "save_every", "health_every"):
        require(getattr(cfg, flag) >= 0, f"--{flag.replace('_', '-')} must be >= 0 (0: at the end only), got {getattr(cfg, flag)}")
    require(cfg.eval_tokens >= 1, f"--eval-tokens must be at least 1 (capped near the val split's size), got {cfg.eval_tokens}")
    require(cfg.keep_last >= 1, f"--keep-last must be at least 1, got {cfg.keep_last}")
    require(cfg.stop_at == -1 or cfg.stop_at >= 1, f"--stop-at must be at least 1 (or -1), got {cfg.stop_at}")
    require(cfg.dist_timeout > 0 and _math.isfinite(cfg.dist_timeout), f"--dist-timeout must be positive, got {cfg.dist_timeout}")
    require(not cfg.model_tag or is_plain_name(cfg.model_tag),
         f"--model-tag {cfg.model_tag!r:.60} is not a plain name (letters, digits, '.', '_', '-'; no '/' or '..'); "
         f"use --run-dir for a path")

def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from ..dataloader import DataLoader, build_val_loader
    from ..distributed import GradSync, broadcast_parameters, destroy, device_for_rank, init_distributed
    from ..engine import Engine
    from ..gpt import GPT, GPTConfig
    from ..health import HealthMonitor
    from ..loss_eval import evaluate_bpb
    from ..optim import MuonAdamW, build_param_groups
    from ..tokenizer import get_tokenizer
    from ..training import (NonFiniteLoss, TrainingError, apply_schedule, check_memory, save_training_checkpoint,
                            start_or_resume, train_step)

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    validate(cfg)
    dist = get_dist_info()
    try:
        device = device_for_rank(autodetect_device(cfg.device or None))  # under torchrun: cuda:LOCAL_RANK
        dtype = compute_dtype(device, cfg.dtype or None)
    except (RuntimeError, ValueError) as e:  # --device cuda without CUDA, an unknown device or dtype
        raise UserError(str(e)) from None
    init_distributed(device, cfg.dist_timeout)
    setup_device(device)  # CUDA: TF32 for fp32 products
    use_compile = cfg.compile if cfg.compile is not None else device.startswith("cuda")
    seed_everything(cfg.seed)
    tok = get_tokenizer(cfg.tokenizer)
    corpus_check = _verify_corpus(cfg.corpus)  # a damaged shard is named now, not hours into training
    token_bytes = torch.tensor(tok.token_bytes(), dtype=torch.int64, device=device)
    mcfg = GPTConfig.from_depth(cfg.depth, vocab_size=tok.vocab_size, sequence_len=cfg.max_seq_len, preset=cfg.preset)
    try:  # sized on the meta device first (no memory): a model or batch that cannot fit is refused before allocation
        memory = check_memory(GPT(mcfg, device="meta", compute_dtype=dtype), cfg.device_batch_size,
                              cfg.max_seq_len, device)
    except TrainingError as e:
        raise UserError(f"base-train: {e}") from None
    model = GPT(mcfg, device=device, compute_dtype=dtype)
    n_params = model.param_counts()["total"]
    flops_per_token = model.estimate_flops()
    micro_tokens = cfg.device_batch_size * cfg.max_seq_len * dist.world_size
    total_batch = micro_tokens if cfg.total_batch_size <= 0 else cfg.total_batch_size
    if total_batch % micro_tokens:
        raise UserError(f"--total-batch-size {total_batch} must be a multiple of device_batch x T x ranks "
                        f"= {micro_tokens}")
    grad_accum = total_batch // micro_tokens
    num_iterations, horizon_rule = resolve_horizon(cfg, n_params, flops_per_token, total_batch)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else get_base_dir() / "runs" / (cfg.model_tag or f"d{cfg.depth}")

    print_config("base-train", {**asdict(cfg), "device": device, "compute dtype": str(dtype).replace("torch.", ""),
                                "compile": use_compile, "world size": dist.world_size,
                                "model": f"{mcfg.n_layer} layers, width {mcfg.n_embd}, {mcfg.n_head} heads "
                                f"({mcfg.n_kv_head} kv), vocab {mcfg.vocab_size} (padded to {mcfg.padded_vocab_size})",
                                "parameters": f"{n_params:,}", "FLOPs/token": f"{flops_per_token:,}",
                                "tokens/step": f"{total_batch:,} ({grad_accum} micro-batches)",
                                "iterations": f"{num_iterations:,} ({horizon_rule})",
                                "train tokens": f"{num_iterations * total_batch:,}", "memory": memory,
                                "corpus check": corpus_check,
                                "run dir": str(run_dir)})

    sync = GradSync(model, cfg.sync)
    optimizer = MuonAdamW(build_param_groups(model, matrix_lr=cfg.matrix_lr, embedding_lr=cfg.embedding_lr,
                                             unembedding_lr=cfg.unembedding_lr, scalar_lr=cfg.scalar_lr,
                                             weight_decay=cfg.weight_decay, optimizer=cfg.optimizer))
    loader = DataLoader(tok, cfg.device_batch_size, cfg.max_seq_len, corpus=cfg.corpus, device=device, seed=cfg.seed)

    # ---- fresh start or resume: never silently overwrite a run (training.start_or_resume) ----
    try:
        start_step, _ = start_or_resume(run_dir, cfg.resume, model, optimizer, sync, loader, mcfg.to_dict(), tok)
    except (TrainingError, CheckpointError) as e:
        raise UserError(f"base-train: {e}") from None
    broadcast_parameters(model)
    if start_step > num_iterations:
        raise UserError(f"checkpoint step {start_step} is beyond --num-iterations {num_iterations}")
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if dist.is_master and metrics_path.exists():  # drop records past the resume point (they will be redone)
        kept = [ln for ln in metrics_path.read_text(errors="replace").splitlines()
                if _record_step(ln) is not None and _record_step(ln) <= start_step]  # a half-written line is dropped
        write_text_atomic(metrics_path, "".join(ln + "\n" for ln in kept))

    # Train through the compiled model; evaluate and sample with the plain one (eval mode, other shapes and
    # the KV cache would each cost a recompilation, for a few calls).
    fwd = torch.compile(model, dynamic=False) if use_compile else model
    peak = peak_flops(device, dtype)
    peak = peak * dist.world_size if peak else None  # tok/s is global, so the peak is all ranks' together
    val_batches = list(build_val_loader(tok, cfg.device_batch_size, cfg.max_seq_len, tokens=cfg.eval_tokens,
                                        corpus=cfg.corpus, device=device))
    monitor = HealthMonitor(model, optimizer, val_batches[0][0][:2], cfg.health_every)  # probe: 2 fixed val rows

    wandb_run = None
    if cfg.wandb and dist.is_master:
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install wandb") from None
        wandb_run = wandb.init(project=cfg.wandb, name=run_dir.name, config=asdict(cfg), resume="allow")

    def log(record: dict) -> None:
        if dist.is_master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if wandb_run is not None:
                wandb_run.log(record, step=record["step"])

    def samples(step: int) -> None:
        if not dist.is_master:
            return
        engine = Engine(model, tok, fast=torch.device(device).type == "cpu")  # GPUs: no graph capture for 4 prompts
        n_new = min(32, mcfg.max_positions // 2)
        lines = [f"--- step {step} ---"]
        for prompt in SAMPLE_PROMPTS:
            ids = tok.encode(prompt, prepend=tok.bos_id)[-(mcfg.max_positions - n_new):]  # fit the context
            out, _ = engine.generate_batch(ids, max_tokens=n_new, temperature=0.0)
            lines.append(f"{prompt} >>> {tok.decode(out[0][len(ids):])}")
        with open(run_dir / "samples.txt", "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    meta = {"model_config": mcfg.to_dict(), "train_config": asdict(cfg), "num_iterations": num_iterations,
            "tokenizer": cfg.tokenizer, "tokenizer_sha256": tok.sha256(),
            "corpus": cfg.corpus, "world_size": dist.world_size}
    val_bpb, last_loss = float("nan"), float("nan")
    step = start_step
    bar = tqdm(total=num_iterations, initial=start_step, desc="base-train", unit="step", disable=not dist.is_master)
    t_train, t_first = 0.0, float("nan")
    while True:
        last = step == num_iterations
        pause = step == cfg.stop_at and not last and step > start_step
        resumed_here = cfg.resume and step == start_step and not last  # this step's val bpb is already logged
        if not resumed_here and (last or (cfg.eval_every > 0 and step % cfg.eval_every == 0)):
            val_bpb = evaluate_bpb(model, val_batches, token_bytes)
            log({"step": step, "val_bpb": val_bpb})
            if dist.is_master:
                bar.write(f"step {step:6d} | val bpb {val_bpb:.4f}")
        if last or pause or (cfg.save_every > 0 and step % cfg.save_every == 0 and step > start_step):
            try:  # saved before the samples: whatever happens next, the trained weights are on disk
                save_training_checkpoint(run_dir, step, model, optimizer, sync, loader,
                                         {**meta, "val_bpb": val_bpb, "train_loss": last_loss}, keep_last=cfg.keep_last)
            except CheckpointError as e:
                raise UserError(f"base-train: {e}") from None
        if last or (cfg.sample_every > 0 and step % cfg.sample_every == 0 and step > start_step):
            samples(step)
        if last:
            break
        if pause:
            print0(f"stopped at step {step} (--stop-at); continue with --resume")
            break

        t0 = time.perf_counter()
        mult = apply_schedule(optimizer, step, num_iterations, cfg.warmup_steps, cfg.warmdown_ratio, cfg.final_lr_frac)
        try:
            last_loss = train_step(fwd, optimizer, loader, grad_accum, sync, before_update=monitor.hook(step))
        except NonFiniteLoss as e:
            good = latest_checkpoint(run_dir)
            raise UserError(f"base-train: the loss became {e.loss} at step {step}. Stopping; the last good "
                             f"checkpoint is {good or 'none (none was saved yet)'}. Try a lower learning rate.") from None
        synchronize(device)  # the optimizer step may still be running on a GPU: wait before reading the clock
        dt = time.perf_counter() - t0
        step += 1
        if step > start_step + 1:  # the first step includes warm-up work (and compilation)
            t_train += dt
        else:
            t_first = dt
        tok_s = total_batch / dt
        mfu = tok_s * flops_per_token / peak if peak else None
        health, alerts = monitor.after_update(step, last_loss)
        log({"step": step, "loss": last_loss, "lr_mult": mult, "tok_per_s": tok_s, "mfu": mfu, "dt": dt,
             **({"health": health} if health else {})})
        for line in alerts if dist.is_master else ():
            bar.write(line)
        bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.2f}" if mfu else "?")
        bar.update(1)
    bar.close()
    loader.close()
    steps_timed = max(1, step - start_step - 1)
    summary = {"run_dir": str(run_dir), "steps": step, "final_val_bpb": val_bpb, "final_train_loss": last_loss,
               # a run of one step has only the first step, warm-up included, to time
               "tok_per_s": steps_timed * total_batch / t_train if t_train > 0 else total_batch / t_first,
               "peak_flops": peak}
    summary["mfu"] = summary["tok_per_s"] * flops_per_token / peak if peak else None
    if dist.is_master:
        write_json_atomic(run_dir / "summary.json", summary)
        _plots(run_dir)
    destroy()
    if dist.is_master:
        if peak:
            mfu_text = f"MFU {summary['mfu']:.2f} (peak {peak / 1e9:,.0f} GFLOP/s)"
        else:
            mfu_text = f"MFU unknown (no data-sheet peak for {_device_name(device)}: add it to common.GPU_PEAK_FLOPS)"
        print0(f"done: {step} of {num_iterations} steps, val bpb {val_bpb:.4f}, train loss {last_loss:.4f}, "
               f"{summary['tok_per_s']:,.0f} tok/s, {mfu_text}; {run_dir}")
    return summary


VERIFY_HASHES_UP_TO = 2 * 2**30  # bytes of shards: hashing reads them all (~0.1 s for the embedded 17 MB)


def _verify_corpus(corpus: str) -> str:
    """Check the corpus before training: every shard present, of its recorded size, with a readable
    footer, and, for corpora up to VERIFY_HASHES_UP_TO, its sha256 against the manifest. A CorpusError
    (a UserError naming the file and the command that rebuilds it) stops the run before it starts."""
    from ..dataset import verify_corpus

    manifest = verify_corpus(corpus, hashes=False)
    size = sum(int(e.get("bytes") or 0) for e in manifest["shards"])
    if size <= VERIFY_HASHES_UP_TO:
        verify_corpus(corpus, hashes=True)
        return f"{len(manifest['shards'])} shards, {size / 2**20:.1f} MiB, sizes and sha256 ok"
    return f"{len(manifest['shards'])} shards, {size / 2**30:.1f} GiB, sizes and footers ok (too large to hash each run)"


def _record_step(line: str) -> int | None:
    """The step of one metrics.jsonl record, or None for a line that is not a complete record (a run
    killed mid-write leaves half a line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def _plots(run_dir: Path) -> None:
    """loss.png and val_bpb.png from metrics.jsonl (skipped with a note if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print0("matplotlib is not installed: no plots")
        return
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text(errors="replace").splitlines()
               if _record_step(ln) is not None]
    (run_dir / "plots").mkdir(exist_ok=True)
    for key, name in (("loss", "train loss (nats/token)"), ("val_bpb", "validation bits per byte")):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*pts), marker="o" if key == "val_bpb" else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / "plots" / f"{key}.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except RuntimeError as e:  # under torchrun, a failed collective means another rank died or hung
        info = get_dist_info()
        if info.world_size > 1:
            raise SystemExit(f"base-train rank {info.rank}/{info.world_size}: a collective operation failed "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Another rank probably died; "
                             f"stopping instead of waiting. Complete checkpoints are kept; resume with --resume "
                             f"(any number of ranks).") from None
        raise
