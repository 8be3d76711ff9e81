"""
The parts of a training loop that every training stage shares: pretraining (`base-train`) uses them now,
supervised fine-tuning and RL will use the same functions instead of copying the loop.

    start, meta = start_or_resume(run_dir, resume, model, optimizer, sync, loader, model_config)
    for step in range(start, num_iterations):
        apply_schedule(optimizer, step, num_iterations, warmup_steps=40, warmdown_ratio=0.65)
        loss = train_step(fwd, optimizer, loader, grad_accum, sync)   # raises NonFiniteLoss on NaN / inf
        if step % save_every == 0:
            save_training_checkpoint(run_dir, step, model, optimizer, sync, loader, meta)

- Schedules: the LR multiplier (warmup, constant, linear warmdown) and Muon's momentum warmup.
- The step: gradient accumulation over micro-batches, gradient sync across ranks, one optimizer step.
  It reads the loss back to the host once per optimizer step (not once per micro-batch): on a GPU each
  read waits for all queued work, so fewer reads let the host queue the next kernels while the GPU runs.
- The NaN policy: a loss that is not finite stops training *before* the optimizer step, so the weights
  and the last checkpoint stay good; the stage tells the user which checkpoint that is.
- The resume protocol: a run directory that holds a run is resumed (with --resume) or refused, never
  overwritten; model, optimizer and data-loader position come back exactly; hyperparameters given now
  win over the saved ones; a checkpoint written by W ranks resumes under any number of ranks.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .checkpoint import (check_tokenizer, latest_valid_checkpoint, list_checkpoints, load_checkpoint, read_meta,
                         save_checkpoint)
from .common import get_dist_info, print0
from .distributed import all_reduce, barrier, gather_objects


class TrainingError(Exception):
    """A condition that stops training with a message for the user (the stage prints it, no traceback)."""


class NonFiniteLoss(TrainingError):
    def __init__(self, loss: float):
        super().__init__(f"the loss became {loss}")
        self.loss = loss


# ---- schedules ---------------------------------------------------------------------------------------

def lr_multiplier(step: int, num_iterations: int, warmup_steps: int, warmdown_ratio: float,
                  final_lr_frac: float) -> float:
    """Warmup (linear from 1/warmup to 1) -> constant 1 -> warmdown (linear to final_lr_frac at the end).

    >>> [round(lr_multiplier(s, 100, 10, 0.5, 0.0), 2) for s in (0, 9, 10, 50, 75, 100)]
    [0.1, 1.0, 1.0, 1.0, 0.5, 0.0]
    """
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int) -> float:
    """Muon momentum warms up from 0.85 to 0.95 over 300 steps (nanochat).

    >>> muon_momentum(0), round(muon_momentum(150), 6), muon_momentum(1000)
    (0.85, 0.9, 0.95)
    """
    frac = min(step / 300, 1.0)
    return (1 - frac) * 0.85 + frac * 0.95


def apply_schedule(optimizer: torch.optim.Optimizer, step: int, num_iterations: int, warmup_steps: int,
                   warmdown_ratio: float, final_lr_frac: float = 0.0) -> float:
    """Set every group's LR (its `initial_lr` x the multiplier) and Muon's momentum for `step`; return
    the multiplier."""
    mult = lr_multiplier(step, num_iterations, warmup_steps, warmdown_ratio, final_lr_frac)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * mult
        if group.get("kind") == "muon":
            group["momentum"] = muon_momentum(step)
    return mult


# ---- the step ----------------------------------------------------------------------------------------

def train_step(model, optimizer: torch.optim.Optimizer, batches, grad_accum: int, sync=None,
               before_update=None) -> float:
    """One optimizer step over `grad_accum` micro-batches `(inputs, targets) = next(batches)`.

    Each micro-batch's loss is divided by grad_accum before backward, so the accumulated gradient is the
    gradient of the mean loss (tests/test_train.py: equal to one big batch). Returns the mean loss over
    the micro-batches and all ranks, read to the host once. Raises NonFiniteLoss, before the optimizer
    step, if that loss is NaN or infinite. `sync` (distributed.GradSync) averages gradients across ranks.
    `before_update()`, if given, is called with the final gradients just before the optimizer step (the
    training-health probe, health.HealthMonitor.hook: gradient norm, a copy of the weights).
    """
    total = None
    for _ in range(grad_accum):
        x, y = next(batches)
        loss = model(x, y)
        (loss / grad_accum).backward()
        total = loss.detach().float() if total is None else total + loss.detach().float()
    mean = all_reduce(total / grad_accum, "avg")  # on the training device: NCCL reduces device tensors only
    value = mean.item()  # the step's one host synchronisation
    if not math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(value)
    if sync is not None:
        sync.before_step()
    if before_update is not None:
        before_update()
    optimizer.step()
    if sync is not None:
        sync.after_step()
    optimizer.zero_grad(set_to_none=True)
    return value


# ---- memory -------------------------------------------------------------------------------------------

def estimate_training_bytes(model, batch: int, seq_len: int) -> int:
    """A rough peak-memory estimate of one training step, in bytes:

      16 bytes per parameter   fp32 weights (4) + gradients (4) + optimizer state (AdamW 8, Muon 4; 8 assumed)
      per token, per layer     12 x width activations kept for backward, in the compute dtype
      per token                12 bytes per vocabulary entry: fp32 logits, their soft-capped copy, their gradient

    Calibrated on one measurement: our d20 step at T 2048, B 32, vocab 32768 in bf16 peaked at 73.7 GB on
    an H200 (docs/anchors.md); this formula gives 73.7 GB there (the activation factor 12 was fitted to it). Good to tens of percent, enough to
    refuse a batch that is several times too big before it runs out of memory halfway through a step."""
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    act_bytes = torch.finfo(model.compute_dtype).bits // 8
    per_token = cfg.n_layer * 12 * cfg.n_embd * act_bytes + 12 * cfg.padded_vocab_size
    return 16 * n_params + batch * seq_len * per_token


def available_bytes(device: str) -> int | None:
    """Memory free for this process: the GPU's free memory on CUDA, MemAvailable on a Linux CPU, else None."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_memory(model, batch: int, seq_len: int, device: str, margin: float = 1.2) -> str:
    """Refuse (TrainingError) a micro-batch whose estimated need exceeds `margin` x the free memory; return a
    one-line summary for the run's configuration printout. The margin keeps the rough estimate from
    refusing a run that would just fit."""
    need = estimate_training_bytes(model, batch, seq_len)
    free = available_bytes(device)
    summary = f"~{need / 2**30:.1f} GiB estimated" + (f", {free / 2**30:.1f} GiB free" if free is not None else "")
    if free is not None and need > margin * free:
        raise TrainingError(f"a micro-batch of {batch} x {seq_len} tokens needs about {need / 2**30:.1f} GiB "
                            f"({summary}); lower --device-batch-size (gradient accumulation keeps the "
                            f"--total-batch-size), --max-seq-len or --depth")
    return summary


# ---- checkpoints and resume --------------------------------------------------------------------------

def save_training_checkpoint(run_dir: str | Path, step: int, model, optimizer, sync, loader, meta: dict,
                             keep_last: int = 2) -> Path | None:
    """Every rank calls this (the optimizer state and loader positions are gathered from all ranks);
    rank 0 writes the checkpoint. Returns its path on rank 0, None elsewhere. Raises CheckpointError."""
    full_optim = sync.full_optimizer_state(optimizer) if sync is not None else optimizer.state_dict()
    loaders = {"world_size": get_dist_info().world_size, "ranks": gather_objects(loader.state_dict())}
    if not get_dist_info().is_master:
        return None
    return save_checkpoint(run_dir, step, model, None, loaders, meta, keep_last=keep_last,
                           optimizer_state=full_optim)


def start_or_resume(run_dir: str | Path, resume: bool, model, optimizer, sync, loader,
                    model_config: dict, tokenizer=None) -> tuple[int, dict | None]:
    """Fresh start (step 0) or resume from the run directory's latest valid checkpoint. Returns (start
    step, the checkpoint's meta or None). Never overwrites: a directory that holds checkpoints without
    --resume is refused. A directory with metrics but no checkpoint (a run stopped before its first save)
    starts again. A newest checkpoint that fails its checksums is skipped with a warning, and the next
    valid one is used. Raises TrainingError with the reason (and CheckpointError for an unreadable one).

    On resume: weights, the full optimizer state (sharded again under zero2) and the RNG state are
    restored; the optimizer's hyperparameters are those of the optimizer built now (flags given now
    win, ADR 0021); the data loader continues exactly where the checkpoint's ranks stopped if the number
    of ranks is the same, else it restarts at the next epoch (the model and optimizer are still exact).
    """
    run_dir = Path(run_dir)
    dist = get_dist_info()
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints and (run_dir / "metrics.jsonl").exists():
        # a run that was stopped before its first checkpoint: nothing to resume and nothing to lose
        # but the dead run's metrics, so it starts again (the speedrun would otherwise be stuck)
        print0(f"note: {run_dir} holds a run that stopped before its first checkpoint; starting it again from step 0")
        if dist.is_master:
            (run_dir / "metrics.jsonl").unlink()
        barrier()
        return 0, None
    if not resume:
        if checkpoints:
            raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
                                f"--model-tag / --run-dir. Nothing was overwritten.")
        return 0, None
    if not checkpoints:
        raise TrainingError(f"--resume: no checkpoint in {run_dir}")
    latest, skipped = latest_valid_checkpoint(run_dir)
    for note in skipped:
        print0(f"warning: skipping a checkpoint that fails its checks: {note}")
    if latest is None:
        raise TrainingError(f"--resume: no valid checkpoint in {run_dir} ({len(skipped)} found, all corrupt; "
                            f"the newest: {skipped[0]})")
    if skipped:
        print0(f"warning: resuming from the newest valid checkpoint, {latest.name}")
    meta = read_meta(latest)
    if meta.get("model_config") != model_config:
        raise TrainingError(f"--resume: {latest} was trained with a different model config; "
                            f"use the same --depth / --preset / --max-seq-len or another --model-tag")
    if tokenizer is not None:
        check_tokenizer(meta, tokenizer, latest)  # the same ids must mean the same text
    state = load_checkpoint(latest, model, None)
    if state["optimizer"] is None:
        raise TrainingError(f"--resume: {latest} holds no optimizer state")
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    if sync is not None:
        sync.load_full_optimizer_state(optimizer, state["optimizer"])
    else:
        optimizer.load_state_dict(state["optimizer"])
    for g, hyper in zip(optimizer.param_groups, fresh):  # flags given now win over the saved ones
        g.update(hyper)
    saved = state["loader"]
    if saved["world_size"] == dist.world_size:
        loader.load_state_dict(saved["ranks"][dist.rank])  # exact: each rank continues its own stream
    else:  # a different number of ranks reads the data in a different partition: continue approximately
        epoch = min(r["epoch"] for r in saved["ranks"])
        loader.load_state_dict({**loader.state_dict(), "epoch": epoch + 1, "unit": 0, "row": 0, "buffer": []})
        print0(f"note: checkpoint written by {saved['world_size']} ranks, resuming with {dist.world_size}: "
               f"model and optimizer are exact; the data order restarts at epoch {epoch + 1}")
    print0(f"resumed from {latest} at step {state['step']}")
    return state["step"], meta
