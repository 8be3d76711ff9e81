"""
Stage `rl`: reinforcement learning on verifiable arithmetic — the chat model practises and is rewarded
only for right answers.

    python -m mini_nanochat rl                     # runs/speedrun-sft -> runs/speedrun-rl

Each step (REINFORCE with a group-mean baseline, the core of GRPO; Shao et al. 2024, DeepSeekMath):
  1. P questions from chat_data's training distribution (never the held-out ones);
  2. the Engine samples k replies to each, calling the calculator as it goes (temperature > 0);
  3. reward = 1 if the reply called the calculator, got the true result and stated it, else 0
     (chat_eval.arithmetic_verdict: the same check the evaluation uses);
  4. advantage = reward - the mean reward of the question's k replies: better-than-its-siblings replies
     are pushed up, worse ones down, and a question all k got right (or wrong) teaches nothing;
  5. loss = - sum over sampled tokens of advantage x log p(token), divided by the number of sampled tokens
     (token-level normalisation); the tool's output tokens were forced, not sampled, so they get no
     gradient. No value network, no ratio clipping, no KL term: the samples are fresh every step
     (on-policy), which is what PPO's clipping exists to correct for.

Before and after: pass@1 (greedy) and pass@k (k samples at the training temperature) on held-out
questions. Checkpoints resume exactly (the questions of step s depend only on (seed, step)).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass

from ..common import (UserError, get_base_dir, get_dist_info, is_plain_name, print0, print_config, require,
                      write_json_atomic)


@dataclass
class RLConfig:
    model_tag: str = "speedrun"   # reads <tag>-sft (or --source-tag), writes <tag>-rl (or --output-tag)
    source_tag: str = ""
    output_tag: str = ""
    num_iterations: int = 60
    prompts_per_step: int = 8
    samples: int = 4              # k replies per question
    temperature: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 64      # as score_arithmetic's (held-out replies are at most ~49 tokens)
    lr_scale: float = 0.1         # x the default learning rates (a policy-gradient step is noisy)
    save_every: int = 20
    eval_questions: int = 50
    seed: int = 0
    device: str = ""
    dtype: str = ""
    resume: bool = False


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-nanochat rl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = RLConfig()
    a = p.add_argument
    a("--model-tag", default=d.model_tag, help="reads runs/<tag>-sft, writes runs/<tag>-rl")
    a("--source-tag", default=d.source_tag, help="the chat model to improve (default: <model-tag>-sft)")
    a("--output-tag", default=d.output_tag, help="where the result goes (default: <model-tag>-rl)")
    a("--num-iterations", type=int, default=d.num_iterations, help="optimizer steps")
    a("--prompts-per-step", type=int, default=d.prompts_per_step, help="questions per step")
    a("--samples", type=int, default=d.samples, help="replies sampled per question (the group)")
    a("--temperature", type=float, default=d.temperature, help="sampling temperature of the replies")
    a("--top-k", type=int, default=d.top_k, help="sample among the k most likely tokens (0: off)")
    a("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens per reply")
    a("--lr-scale", type=float, default=d.lr_scale, help="multiplies the default learning rates")
    a("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: only at the end)")
    a("--eval-questions", type=int, default=d.eval_questions, help="held-out questions before and after (0: none)")
    a("--seed", type=int, default=d.seed)
    a("--device", default=d.device)
    a("--dtype", default=d.dtype)
    a("--resume", action="store_true", help="continue the run in --output-tag from its last checkpoint")
    return p


def validate(cfg: RLConfig) -> None:
    for flag, tag in (("--model-tag", cfg.model_tag), ("--source-tag", cfg.source_tag), ("--output-tag", cfg.output_tag)):
        require(not tag or is_plain_name(tag), f"{flag} must be a plain name, got {tag!r}")
    require(cfg.num_iterations >= 1, f"--num-iterations must be at least 1, got {cfg.num_iterations}")
    require(cfg.prompts_per_step >= 1, f"--prompts-per-step must be at least 1, got {cfg.prompts_per_step}")
    require(2 <= cfg.samples <= 64, f"--samples must be in 2..64 (a group needs at least 2), got {cfg.samples}")
    require(0 < cfg.temperature <= 2, f"--temperature must be in (0, 2] (RL needs varied samples), got {cfg.temperature}")
    require(cfg.top_k >= 0, f"--top-k must be >= 0, got {cfg.top_k}")
    require(1 <= cfg.max_new_tokens <= 1024, f"--max-new-tokens must be in 1..1024, got {cfg.max_new_tokens}")
    require(0 < cfg.lr_scale <= 10, f"--lr-scale must be in (0, 10], got {cfg.lr_scale}")
    require(cfg.save_every >= 0 and cfg.eval_questions >= 0, "--save-every and --eval-questions must be >= 0")


class QuestionStream:
    """The questions of step s for this rank: a function of (seed, rank, s) only, so resuming needs no
    state beyond the step (kept in the checkpoint). Shaped like a data loader for training.start_or_resume."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def questions(self, step: int, n: int) -> list[tuple[str, str, str]]:
        from ..chat_data import arithmetic_question

        rng = random.Random(f"rl:{self.seed}:{self.rank}:{step}")
        return [arithmetic_question(rng, held_out=False) for _ in range(n)]

    def state_dict(self) -> dict:
        return {"kind": "questions", "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"the run was trained with --seed {state.get('seed')}, not {self.seed}")


def sample_group(engine, tok, question: str, k: int, cfg: RLConfig, seed: int) -> list[tuple[list[int], list[int], str]]:
    """k replies to one question: (prompt + reply ids, mask (1 = sampled), decoded reply) each. The stop
    token stays in (the model is rewarded for stopping where it should)."""
    ids = tok.render_for_completion([{"role": "user", "content": question}])
    for _ in engine.generate(ids, num_samples=k, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             top_k=cfg.top_k or None, seed=seed):
        pass
    return [(list(ids) + toks, [0] * len(ids) + masks, tok.decode(toks))
            for toks, masks in zip(engine.last_tokens, engine.last_masks)]


def policy_gradient_loss(model, sequences: list[list[int]], masks: list[list[int]], advantages: list[float], pad: int,
                         n_tokens: int):
    """-(1/N) sum over sampled tokens of advantage x log p(token), N = `n_tokens`, the sampled tokens of
    the whole step, including replies whose advantage is 0 (left out of the batch: they add nothing to the
    sum). Dividing by all of them keeps the step size independent of how many groups were all right or
    all wrong.

    One forward over the padded batch; targets are the next tokens where they were sampled, else -1."""
    import torch

    device = model.wte.weight.device
    T = max(len(s) for s in sequences)
    x = torch.full((len(sequences), T), pad, dtype=torch.long)
    y = torch.full((len(sequences), T), -1, dtype=torch.long)
    for i, (s, m) in enumerate(zip(sequences, masks)):
        x[i, :len(s)] = torch.tensor(s)
        tgt = torch.tensor(s[1:])
        keep = torch.tensor(m[1:], dtype=torch.bool)
        y[i, :len(s) - 1] = torch.where(keep, tgt, torch.full_like(tgt, -1))
    x, y = x.to(device), y.to(device)
    nll = model(x, y, loss_reduction="none").view(len(sequences), T)  # (B, T): -log p, 0 where ignored
    adv = torch.tensor(advantages, dtype=nll.dtype, device=device).unsqueeze(1)  # (B, 1)
    return (adv * nll).sum() / max(1, n_tokens)


def pass_rates(engine, tok, cfg: RLConfig, n: int, seed: int) -> dict:
    """pass@1 (greedy, chat_eval.score_arithmetic) and pass@k (k samples) on n held-out questions."""
    from ..chat_data import arithmetic_question
    from ..chat_eval import arithmetic_verdict, score_arithmetic

    greedy = score_arithmetic(engine, tok, n=n, seed=seed, max_new_tokens=cfg.max_new_tokens)
    rng = random.Random(seed)  # the same questions as the greedy pass
    hits = 0
    for i in range(n):
        question, _, result = arithmetic_question(rng, held_out=True)
        group = sample_group(engine, tok, question, cfg.samples, cfg, seed=seed + i)
        hits += any(arithmetic_verdict(reply, result)[1] for _, _, reply in group)
    return {"pass@1": greedy["accuracy"], f"pass@{cfg.samples}": hits / n if n else 0.0, "n": n}


def run(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from ..chat_eval import arithmetic_verdict
    from ..checkpoint import CheckpointError, load_model
    from ..distributed import GradSync, all_reduce, broadcast_parameters, destroy, start
    from ..engine import Engine
    from ..optim import MuonAdamW, build_param_groups
    from ..training import TrainingError, apply_schedule, save_training_checkpoint, start_or_resume

    cfg = RLConfig(**{k: v for k, v in vars(args).items() if k in RLConfig.__dataclass_fields__})
    validate(cfg)
    dist = get_dist_info()
    try:
        device, dtype = start(cfg.device, cfg.dtype)
    except ValueError as e:
        raise UserError(str(e)) from None
    source = get_base_dir() / "runs" / (cfg.source_tag or f"{cfg.model_tag}-sft")
    try:
        model, tok, src_meta = load_model(source, device, dtype)
    except CheckpointError as e:
        raise UserError(f"rl: {e} (run `python -m mini_nanochat sft` first)") from None
    out_tag = cfg.output_tag or f"{cfg.model_tag}-rl"
    run_dir = get_base_dir() / "runs" / out_tag
    print_config("rl", {**asdict(cfg), "source checkpoint": src_meta["checkpoint"], "output run": str(run_dir),
                        "device": device, "compute dtype": str(dtype).replace("torch.", ""),
                        "world size": dist.world_size,
                        "replies/step": f"{cfg.prompts_per_step} questions x {cfg.samples} samples x {dist.world_size} ranks"})
    s = cfg.lr_scale
    sync = GradSync(model, "ddp")
    optimizer = MuonAdamW(build_param_groups(model, matrix_lr=0.02 * s, embedding_lr=0.2 * s,
                                             unembedding_lr=0.004 * s, scalar_lr=0.01 * s))
    stream = QuestionStream(cfg.seed, dist.rank)
    try:
        start, _ = start_or_resume(run_dir, cfg.resume, model, optimizer, sync, stream, model.config.to_dict(), tok)
    except (TrainingError, CheckpointError) as e:
        raise UserError(f"rl: {e}") from None
    broadcast_parameters(model)
    run_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(model, tok)
    eval_seed = cfg.seed + 777
    before = None
    if cfg.eval_questions and dist.is_master and start == 0:
        before = pass_rates(engine, tok, cfg, cfg.eval_questions, eval_seed)
        print0(f"before: pass@1 {before['pass@1']:.0%}, pass@{cfg.samples} {before[f'pass@{cfg.samples}']:.0%} "
               f"on {cfg.eval_questions} held-out questions")
    meta = {"model_config": model.config.to_dict(), "train_config": asdict(cfg), "num_iterations": cfg.num_iterations,
            "tokenizer": src_meta.get("tokenizer", "default"), "tokenizer_sha256": tok.sha256(),
            "sft": True, "kind": "rl", "parent": src_meta["checkpoint"], "world_size": dist.world_size}
    metrics = run_dir / "metrics.jsonl"
    bar = tqdm(total=cfg.num_iterations, initial=start, desc="rl", unit="step", disable=not dist.is_master)
    t0 = time.time()
    step = start
    while step < cfg.num_iterations:
        apply_schedule(optimizer, step, cfg.num_iterations, warmup_steps=0, warmdown_ratio=1.0)
        model.train()
        rewards, sequences, masks, advantages = [], [], [], []
        n_tokens = 0
        for i, (question, _, result) in enumerate(stream.questions(step, cfg.prompts_per_step)):
            group = sample_group(engine, tok, question, cfg.samples, cfg,
                                 seed=(cfg.seed * 1_000_003 + step * 1009 + i * 31 + dist.rank) % (1 << 62))
            r = [float(arithmetic_verdict(reply, result)[1]) for _, _, reply in group]
            mean = sum(r) / len(r)
            rewards += r
            n_tokens += sum(sum(m) for _, m, _ in group)
            for (seq, m, _), ri in zip(group, r):
                if ri != mean:  # a question all replies got right (or wrong) has no signal
                    sequences.append(seq)
                    masks.append(m)
                    advantages.append(ri - mean)
        model.train()
        if sequences:
            loss = policy_gradient_loss(model, sequences, masks, advantages, tok.bos_id, n_tokens)
            loss.backward()
        sync.before_step()
        optimizer.step()
        sync.after_step()
        optimizer.zero_grad(set_to_none=True)
        mean_reward = all_reduce(torch.tensor(sum(rewards) / len(rewards), device=device), "avg").item()
        step += 1
        if dist.is_master:
            with open(metrics, "a") as f:
                f.write(json.dumps({"step": step, "reward": mean_reward, "groups_with_signal": len(sequences)}) + "\n")
        bar.set_postfix(reward=f"{mean_reward:.2f}")
        bar.update(1)
        if step == cfg.num_iterations or (cfg.save_every and step % cfg.save_every == 0):
            try:
                save_training_checkpoint(run_dir, step, model, optimizer, sync, stream, meta)
            except CheckpointError as e:
                raise UserError(f"rl: {e}") from None
    bar.close()
    summary = {"run_dir": str(run_dir), "steps": step, "seconds": time.time() - t0, "before": before}
    if cfg.eval_questions and dist.is_master:
        after = pass_rates(engine, tok, cfg, cfg.eval_questions, eval_seed)
        summary["after"] = after
        summary["arithmetic"] = {"accuracy": after["pass@1"], "n": after["n"]}
        was = f"{before['pass@1']:.0%} -> " if before else ""
        print0(f"arithmetic with the tool on {cfg.eval_questions} held-out questions: pass@1 {was}{after['pass@1']:.0%}, "
               f"pass@{cfg.samples} {after[f'pass@{cfg.samples}']:.0%}")
    if dist.is_master:
        write_json_atomic(run_dir / "summary.json", summary)
        print0(f"done: {step} RL steps in {summary['seconds']:.0f}s; chat with: python -m mini_nanochat chat --model-tag {out_tag}")
    destroy()
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run(get_parser().parse_args(argv))
