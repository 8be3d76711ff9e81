"""Run under torchrun by tests/test_distributed.py (or directly, as the 1-process reference): a few
optimizer steps of a tiny GPT on fixed batches. With W ranks, rank r takes micro-batch r of each step;
with 1 process, all W micro-batches are accumulated. Writes losses and final weights to --out."""
from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from mini_nanochat.distributed import GradSync, destroy, init_distributed
from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.optim import MuonAdamW, build_param_groups


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="ddp")
    p.add_argument("--micro", type=int, default=2, help="micro-batches per step (= ranks when distributed)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    info = init_distributed("cpu", timeout_s=60)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=97, sequence_len=16, head_dim=32, aspect_ratio=32))
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.01, scalar_lr=0.01))
    sync = GradSync(model, args.mode)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(args.steps):
        batches = [torch.randint(0, 97, (2, 17), generator=gen) for _ in range(args.micro)]
        mine = [batches[info.rank]] if info.world_size > 1 else batches
        total = 0.0
        for b in mine:
            loss = model(b[:, :-1], b[:, 1:])
            (loss / len(mine)).backward()
            total += loss.item() / len(mine)
        if info.world_size > 1:
            t = torch.tensor([total], dtype=torch.float64)
            dist.all_reduce(t)
            total = t.item() / info.world_size
        losses.append(total)
        sync.before_step()
        opt.step()
        sync.after_step()
        opt.zero_grad(set_to_none=True)
    full = sync.full_optimizer_state(opt)
    if info.rank == 0:
        torch.save({"losses": losses, "weights": model.state_dict(), "n_state": len(full["state"]),
                    "n_local_state": len(opt.state), "n_params": len(list(model.parameters()))}, args.out)
    destroy()


if __name__ == "__main__":
    main()
