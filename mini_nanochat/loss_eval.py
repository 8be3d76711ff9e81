"""
Bits per byte: the validation metric that does not depend on the tokenizer.

Cross-entropy per token depends on how much text a token holds (a 4k vocabulary's tokens are shorter
than a 100k one's), so losses of models with different tokenizers cannot be compared. Dividing the total
loss (in bits) by the number of UTF-8 bytes the target tokens stand for can:

    bpb = sum over target tokens of nats / (ln 2 * sum of their byte lengths)

Special tokens (byte length 0, e.g. <|bos|>) are excluded from both sums; targets -1 are ignored.
"""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def evaluate_bpb(model, batches, token_bytes: torch.Tensor) -> float:
    """Bits per byte of `model` over `batches` [(inputs, targets), ...]; token_bytes: (vocab,) int.

    Sums stay on the model's device (one host sync at the end, not one per batch) and are summed over
    ranks with one all-reduce of a device tensor (NCCL accepts nothing else)."""
    from .distributed import all_reduce

    was_training = model.training
    model.eval()
    total_nats = total_bytes = None
    for x, y in batches:
        if total_nats is None:  # the first batch tells the device
            acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
            total_nats = torch.zeros((), dtype=acc, device=x.device)
            total_bytes = torch.zeros((), dtype=torch.int64, device=x.device)
            token_bytes = token_bytes.to(x.device)
        loss = model(x, y, loss_reduction="none").view(-1).to(acc)  # (B*T,) nats per target
        y = y.reshape(-1)
        nbytes = torch.where(y >= 0, token_bytes[y.clamp(min=0)], torch.zeros_like(y))
        total_nats += (loss * (nbytes > 0)).sum()
        total_bytes += nbytes.sum()
    model.train(was_training)
    if total_nats is None:
        raise ValueError("no batches to evaluate")
    both = all_reduce(torch.stack([total_nats, total_bytes.to(acc)]))  # summed over ranks
    nats, nbytes = both.tolist()
    if nbytes == 0:
        raise ValueError("no target bytes to evaluate (empty batches?)")
    return nats / (math.log(2) * nbytes)


@torch.no_grad()
def evaluate_loss(model, batches) -> float:
    """Mean loss in nats per trained target (targets -1 ignored) over `batches`, summed over ranks: the
    SFT validation loss, where only the assistant's tokens count."""
    from .distributed import all_reduce

    was_training = model.training
    model.eval()
    total = None
    for x, y in batches:
        loss = model(x, y, loss_reduction="sum")  # ignored targets add 0
        count = (y >= 0).sum()
        acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        pair = torch.stack([loss.to(acc), count.to(acc)])
        total = pair if total is None else total + pair
    model.train(was_training)
    if total is None:
        raise ValueError("no batches to evaluate")
    nats, n = all_reduce(total).tolist()
    if n == 0:
        raise ValueError("no trained targets in the batches")
    return nats / n
