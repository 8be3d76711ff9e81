"""Run under torchrun by tests/test_distributed.py (or directly, as the 1-process reference): a few
optimizer steps of a tiny GPT on fixed batches through the library's training step. With W ranks, rank r
takes micro-batch r of each step; with 1 process, all W micro-batches are accumulated. Writes losses and
final weights to --out.

--check-devices: every torch.distributed collective is wrapped to record the device of each tensor it
receives, and the library's training step, evaluation and checkpoint gathers run with torch's default
device set to "meta". A tensor that the library creates without an explicit device then lands on
"meta" instead of the training device: on GPUs the same mistake puts it on the CPU, where NCCL refuses
it. The recorded devices are written to --out for the test to check."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
import torch.distributed as dist

from mini_nanochat import distributed
from mini_nanochat.distributed import GradSync, broadcast_parameters, destroy, gather_objects, init_distributed
from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.loss_eval import evaluate_bpb
from mini_nanochat.optim import MuonAdamW, build_param_groups
from mini_nanochat.training import train_step

COLLECTIVES = ["all_reduce", "reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "scatter", "gather", "send", "recv"]


def record_collectives(seen: list) -> None:
    """Wrap torch.distributed's tensor collectives so that each records (name, device of its tensors)."""
    for name in COLLECTIVES:
        real = getattr(dist, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            tensors = [a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
            tensors += [t for a in args if isinstance(a, (list, tuple)) for t in a if torch.is_tensor(t)]
            seen.extend((_name, str(t.device)) for t in tensors)
            return _real(*args, **kwargs)

        setattr(dist, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="ddp")
    p.add_argument("--micro", type=int, default=2, help="micro-batches per step (= ranks when distributed)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--check-devices", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    info = init_distributed("cpu", timeout_s=60)
    seen: list[tuple[str, str]] = []
    if args.check_devices:
        record_collectives(seen)
    # default device "meta" for the library calls: any tensor made without device= is caught
    ctx = torch.device("meta") if args.check_devices else contextlib.nullcontext()
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=97, sequence_len=16, head_dim=32, aspect_ratio=32))
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.01, scalar_lr=0.01))
    sync = GradSync(model, args.mode)
    with ctx:
        broadcast_parameters(model)  # as base-train does: every rank starts from rank 0's weights
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(args.steps):
        batches = [torch.randint(0, 97, (2, 17), generator=gen) for _ in range(args.micro)]
        mine = [batches[info.rank]] if info.world_size > 1 else batches
        with ctx:
            losses.append(train_step(model, opt, iter((b[:, :-1], b[:, 1:]) for b in mine), len(mine), sync))
    val = [torch.randint(0, 97, (2, 17), generator=gen) for _ in range(2)]
    token_bytes = torch.ones(97, dtype=torch.int64)
    with ctx:
        bpb = evaluate_bpb(model, [(v[:, :-1], v[:, 1:]) for v in val], token_bytes)
        full = sync.full_optimizer_state(opt)
        ranks = gather_objects({"rank": info.rank})
    caught = None
    if args.check_devices:  # the harness itself: a tensor made without a device must be refused
        with ctx:
            try:
                distributed.all_reduce(torch.zeros(1))
            except RuntimeError as e:
                caught = str(e)
    if info.rank == 0:
        torch.save({"losses": losses, "weights": model.state_dict(), "n_state": len(full["state"]),
                    "n_local_state": len(opt.state), "n_params": len(list(model.parameters())), "bpb": bpb,
                    "ranks": ranks, "seen": seen, "caught": caught}, args.out)
    destroy()


if __name__ == "__main__":
    main()
    # Leave without the interpreter's own teardown: now and then (1 of about 35 runs on 2026-11-30), a gloo thread
    # still alive at interpreter finalization aborted the process ("terminate called without an active
    # exception") after everything had been written and the process group destroyed (a known class of
    # torch.distributed teardown bug; pytorch PR #179291). The results are on disk by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
