"""
Stage `sft`: supervised fine-tuning — a base model becomes a chat model that uses its calculator.

    python -m mini_nanochat sft                                  # the speedrun's base model -> runs/speedrun-sft
    python -m mini_nanochat sft --model-tag d12 --num-iterations 2000 --online

1. loads the base run's latest checkpoint (weights only: checkpoint.load_model) and its tokenizer;
2. builds the conversation mixture (chat_data: human conversations, identity, arithmetic with calculator
   calls, spelling with the tool; `--online` adds SmolTalk, MMLU auxiliary train and GSM8K train) and
   prints its proportions;
3. trains on the assistant's tokens only (the mask of Tokenizer.render_conversation), whole conversations
   best-fit packed and padded (dataloader.ConversationLoader), with the shared training step, schedule,
   checkpoints and exact resume of training.py; hyperparameters come from the base run unless given;
4. reports the val loss on held-out conversations and, at the end, arithmetic with the tool on 50 questions
   the model never saw, in wordings it never saw.

The run is marked as a chat model in its meta.json ("sft": true), so `chat` talks to it in chat format.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

from ..common import (UserError, get_base_dir, get_dist_info, is_plain_name, print0, print_config, require,
                      write_json_atomic)


@dataclass
class SFTConfig:
    model_tag: str = "speedrun"       # the base run
    output_tag: str = ""              # default: <model-tag>-sft
    num_iterations: int = 600
    device_batch_size: int = 8        # rows of max_seq_len tokens per micro-batch
    total_batch_size: int = -1        # tokens per step; -1 = one micro-batch per rank
    lr_scale: float = 1.0             # x the base run's learning rates
    warmup_steps: int = 20
    warmdown_ratio: float = 0.5
    eval_every: int = 200
    save_every: int = 200
    health_every: int = 50
    mixture_size: int = 20000         # conversations in the offline training mixture
    online: bool = False
    seed: int = 0
    device: str = ""
    dtype: str = ""
    resume: bool = False
    eval_questions: int = 50


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SFTConfig()
    a = p.add_argument
    a("--model-tag", default=d.model_tag, help="the base run to fine-tune: <base>/runs/<tag>")
    a("--output-tag", default=d.output_tag, help="where the chat model goes (default: <model-tag>-sft)")
    a("--num-iterations", type=int, default=d.num_iterations, help="optimizer steps")
    a("--device-batch-size", type=int, default=d.device_batch_size, help="rows per micro-batch")
    a("--total-batch-size", type=int, default=d.total_batch_size, help="tokens per step (-1: one micro-batch per rank)")
    a("--lr-scale", type=float, default=d.lr_scale, help="multiplies every learning rate of the base run")
    a("--warmup-steps", type=int, default=d.warmup_steps)
    a("--warmdown-ratio", type=float, default=d.warmdown_ratio, help="share of the steps with a linear decay to 0")
    a("--eval-every", type=int, default=d.eval_every, help="val loss every N steps (0: only at the end)")
    a("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: only at the end)")
    a("--health-every", type=int, default=d.health_every, help="training-health metrics (health.py) every N steps "
      "into metrics.jsonl, and the gradient norm every step (0: off; loss spikes are watched anyway)")
    a("--mixture-size", type=int, default=d.mixture_size, help="conversations in the offline training mixture")
    a("--online", action="store_true", help="add SmolTalk, MMLU auxiliary train and GSM8K train (downloads)")
    a("--seed", type=int, default=d.seed)
    a("--device", default=d.device, help="cpu | cuda | mps (default: the best available)")
    a("--dtype", default=d.dtype, help="compute dtype (default: the device's)")
    a("--resume", action="store_true", help="continue the run in --output-tag from its last checkpoint")
    a("--eval-questions", type=int, default=d.eval_questions, help="held-out arithmetic questions at the end (0: none)")
    return p


def validate(cfg: SFTConfig) -> None:
    require(is_plain_name(cfg.model_tag), f"--model-tag must be a plain name, got {cfg.model_tag!r}")
    require(not cfg.output_tag or is_plain_name(cfg.output_tag), f"--output-tag must be a plain name, got {cfg.output_tag!r}")
    require(cfg.num_iterations >= 1, f"--num-iterations must be at least 1, got {cfg.num_iterations}")
    require(cfg.device_batch_size >= 1, f"--device-batch-size must be at least 1, got {cfg.device_batch_size}")
    require(0 < cfg.lr_scale <= 10, f"--lr-scale must be in (0, 10], got {cfg.lr_scale}")
    require(cfg.warmup_steps >= 0 and 0 <= cfg.warmdown_ratio <= 1, "--warmup-steps >= 0 and --warmdown-ratio in [0, 1]")
    require(cfg.eval_every >= 0 and cfg.save_every >= 0 and cfg.health_every >= 0,
            "--eval-every, --save-every and --health-every must be >= 0")
    require(cfg.mixture_size >= 10, f"--mixture-size must be at least 10, got {cfg.mixture_size}")
    require(0 <= cfg.eval_questions <= 10_000, f"--eval-questions must be in 0..10000, got {cfg.eval_questions}")


def mixture(cfg: SFTConfig) -> tuple[list[dict], list[dict]]:
    """(train, val) conversations; proportions printed."""
    from .. import chat_data

    train = chat_data.offline_mixture("train", seed=cfg.seed, size=cfg.mixture_size)
    if cfg.online:
        try:
            train = train + chat_data.online_mixture()
        except Exception as e:  # noqa: BLE001 - a download failure is the user's network, not a bug
            raise UserError(f"sft --online: {e}") from None
    val = chat_data.offline_mixture("val", seed=cfg.seed)
    props = chat_data.mixture_proportions(train)
    print0("mixture: " + ", ".join(f"{src} {n:,} ({share:.0%})" for src, (n, share) in props.items()))
    return train, val


def run(args: argparse.Namespace) -> dict:
    import torch

    from ..chat_eval import score_arithmetic, score_multiturn
    from ..checkpoint import CheckpointError, load_model
    from ..dataloader import ConversationLoader
    from ..distributed import GradSync, broadcast_parameters, destroy, start
    from ..engine import Engine
    from ..health import HealthMonitor
    from ..loss_eval import evaluate_loss
    from ..optim import MuonAdamW, build_param_groups
    from ..training import NonFiniteLoss, TrainingError, apply_schedule, save_training_checkpoint, start_or_resume, \
        train_step

    cfg = SFTConfig(**{k: v for k, v in vars(args).items() if k in SFTConfig.__dataclass_fields__})
    validate(cfg)
    dist = get_dist_info()
    try:
        device, dtype = start(cfg.device, cfg.dtype)
    except ValueError as e:
        raise UserError(str(e)) from None
    torch.manual_seed(cfg.seed)
    base_dir = get_base_dir() / "runs" / cfg.model_tag
    try:
        model, tok, base_meta = load_model(base_dir, device, dtype)
    except CheckpointError as e:
        raise UserError(f"sft: {e}") from None
    model.train()
    out_tag = cfg.output_tag or f"{cfg.model_tag}-sft"
    run_dir = get_base_dir() / "runs" / out_tag
    T = model.config.sequence_len
    base_tc = base_meta.get("train_config", {})
    micro = cfg.device_batch_size * T * dist.world_size
    total = micro if cfg.total_batch_size <= 0 else cfg.total_batch_size
    if total % micro:
        raise UserError(f"--total-batch-size {total} must be a multiple of device batch x T x ranks = {micro}")
    grad_accum = total // micro
    train, val = mixture(cfg)
    try:
        loader = ConversationLoader(tok, train, cfg.device_batch_size, T, device=device, seed=cfg.seed)
        val_loader = ConversationLoader(tok, val, cfg.device_batch_size, T, device=device, shuffle=False)
    except ValueError as e:
        raise UserError(f"sft: {e}") from None
    val_batches = val_loader.one_pass()
    lrs = {k: base_tc.get(k, v) * cfg.lr_scale for k, v in
           (("matrix_lr", 0.02), ("embedding_lr", 0.2), ("unembedding_lr", 0.004), ("scalar_lr", 0.01))}
    print_config("sft", {**asdict(cfg), "output run": str(run_dir), "base checkpoint": base_meta["checkpoint"],
                         "device": device, "compute dtype": str(dtype).replace("torch.", ""),
                         "world size": dist.world_size, "sequence length": T,
                         "tokens/step": f"{total:,} ({grad_accum} micro-batches)",
                         "learning rates": ", ".join(f"{k} {v:g}" for k, v in lrs.items()),
                         "conversations": f"{len(loader.items):,} train ({loader.dropped} longer than {T + 1} "
                                          f"tokens dropped), {len(val_loader.items):,} val"})

    sync = GradSync(model, base_tc.get("sync", "ddp"))
    optimizer = MuonAdamW(build_param_groups(model, weight_decay=base_tc.get("weight_decay", 0.0),
                                             optimizer=base_tc.get("optimizer", "muon"), **lrs))
    try:
        start, _ = start_or_resume(run_dir, cfg.resume, model, optimizer, sync, loader, model.config.to_dict(), tok)
    except (TrainingError, CheckpointError) as e:
        raise UserError(f"sft: {e}") from None
    broadcast_parameters(model)
    monitor = HealthMonitor(model, optimizer, val_batches[0][0][:2] if val_batches else None,  # probe: 2 val rows
                            cfg.health_every)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    meta = {"model_config": model.config.to_dict(), "train_config": asdict(cfg), "num_iterations": cfg.num_iterations,
            "tokenizer": base_meta.get("tokenizer", "default"), "tokenizer_sha256": tok.sha256(),
            "sft": True, "kind": "sft", "parent": base_meta["checkpoint"], "world_size": dist.world_size}

    def log(record: dict) -> None:
        if dist.is_master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    from tqdm import tqdm

    val_loss, loss = float("nan"), float("nan")
    bar = tqdm(total=cfg.num_iterations, initial=start, desc="sft", unit="step", disable=not dist.is_master)
    t0 = time.time()
    step = start
    while True:
        last = step == cfg.num_iterations
        if last or (cfg.eval_every > 0 and step % cfg.eval_every == 0 and not (cfg.resume and step == start)):
            val_loss = evaluate_loss(model, val_batches)
            log({"step": step, "val_loss": val_loss})
            if dist.is_master:
                bar.write(f"step {step:5d} | val loss {val_loss:.4f}")
        if step > start and (last or (cfg.save_every > 0 and step % cfg.save_every == 0)):
            try:
                save_training_checkpoint(run_dir, step, model, optimizer, sync, loader, meta)
            except CheckpointError as e:
                raise UserError(f"sft: {e}") from None
        if last:
            break
        mult = apply_schedule(optimizer, step, cfg.num_iterations, cfg.warmup_steps, cfg.warmdown_ratio)
        try:
            loss = train_step(model, optimizer, loader, grad_accum, sync, before_update=monitor.hook(step))
        except NonFiniteLoss as e:
            raise UserError(f"sft: {e} at step {step}; the last good checkpoint is in {run_dir}") from None
        step += 1
        health, alerts = monitor.after_update(step, loss)
        log({"step": step, "loss": loss, "lr_mult": mult, **({"health": health} if health else {})})
        for line in alerts if dist.is_master else ():
            bar.write(line)
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.update(1)
    bar.close()
    seconds = time.time() - t0
    summary = {"run_dir": str(run_dir), "steps": step, "final_val_loss": val_loss, "final_train_loss": loss,
               "seconds": seconds, "padding": loader.padding / max(1, loader.tokens)}
    if cfg.eval_questions and dist.is_master:
        model.eval()
        arith = score_arithmetic(Engine(model, tok), tok, n=cfg.eval_questions, seed=cfg.seed + 12345)
        summary["arithmetic"] = {k: arith[k] for k in ("accuracy", "tool_use", "n")}
        print0(f"arithmetic with the tool on {arith['n']} held-out questions: {arith['accuracy']:.0%} correct "
               f"({arith['tool_use']:.0%} used the calculator)")
        for r in arith["records"][:3]:
            print0(f"  {r['question']} >>> {r['reply']!r}")
        multi = score_multiturn(Engine(model, tok), tok)
        summary["multi_turn"] = {"stopped": multi["stopped"], "turns": multi["turns"]}
        print0(f"a {multi['turns']}-turn conversation: {multi['stopped']} of {multi['turns']} replies ended with "
               f"<|assistant_end|>; \"Who made you?\" >>> {multi['replies'][2]['reply']!r}")
    if dist.is_master:
        write_json_atomic(run_dir / "summary.json", summary)
        print0(f"done: {step} steps, val loss {val_loss:.4f}, {seconds:.0f}s; chat with: "
               f"python -m mini_nanochat chat --model-tag {out_tag}")
    destroy()
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
