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
    """Bits per byte of `model` over `batches` [(inputs, targets), ...]; token_bytes: (vocab,) int."""
    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64)
    total_bytes = torch.zeros((), dtype=torch.int64)
    for x, y in batches:
        loss = model(x, y, loss_reduction="none").view(-1).double().cpu()  # (B*T,) nats per target
        y = y.reshape(-1).cpu()
        valid = y >= 0
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)], torch.zeros_like(y))
        total_nats += (loss * (nbytes > 0)).sum()
        total_bytes += nbytes.sum()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        both = torch.stack([total_nats, total_bytes.double()])
        torch.distributed.all_reduce(both)
        total_nats, total_bytes = both[0], both[1]
    model.train(was_training)
    if total_bytes.item() == 0:
        raise ValueError("no target bytes to evaluate (empty batches?)")
    return (total_nats / (math.log(2) * total_bytes.double())).item()
