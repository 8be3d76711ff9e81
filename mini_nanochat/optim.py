"""
Optimizers, written to be read: AdamW for embeddings, the unembedding and scalars, and Muon for the 2-D
matrices inside the transformer blocks, in one `torch.optim.Optimizer` (so state_dict / load_state_dict,
LR schedules and checkpoints work as usual).

AdamW: Kingma & Ba 2014 (arXiv:1412.6980) with decoupled weight decay, Loshchilov & Hutter 2017
(arXiv:1711.05101). Written out by hand and tested equal to torch.optim.AdamW (tests/test_optim.py).

Muon: Jordan et al. 2024 ("Muon: an optimizer for hidden layers in neural networks", kellerjordan.github.io).
Take SGD's Nesterov momentum, then replace the update matrix G by the nearest semi-orthogonal matrix
U V^T (G = U S V^T): every direction of the update gets the same step size, however unequal the
gradient's singular values. U V^T is approximated by a few Newton-Schulz iterations (only matrix
products, fine in low precision), batched over matrices of the same shape.
"""
from __future__ import annotations

import math

import torch

# Quintic Newton-Schulz coefficients (Jordan et al. 2024): chosen to push singular values in (0, 1] up
# towards ~1 as fast as possible in 5 steps; they land in roughly [0.7, 1.2], not exactly 1 - close
# enough for an optimizer, and cheaper than an exact polar decomposition.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of G (..., m, n), batched over leading dims.

    X <- a X + (b A + c A^2) X with A = X X^T, after scaling X so that its spectral norm is <= 1 (the
    Frobenius norm bounds it). Works on the wide orientation (m <= n) so A is the small Gram matrix.
    The iterations run in `dtype`: bf16 on GPUs (Jordan et al. run Muon's iterations in bf16, and so does
    nanochat; the result only needs to be roughly orthogonal), fp32 on CPUs, where bf16 products are
    slow without native support (ADR 0013). The scaling is always computed in fp32.
    """
    X = G.float()
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) + eps)).to(dtype)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = X @ X.mT  # (..., m, m)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X


_compiled_ns = None


def _orthogonalize(G: torch.Tensor, steps: int) -> torch.Tensor:
    """newton_schulz as the optimizer runs it: on CUDA in bf16 and compiled (the 15 products and the
    element-wise ops between them fuse into fewer kernels; it took ~40% of our d20 step in fp32 on an
    H200, issue #11); elsewhere eager fp32."""
    global _compiled_ns
    if G.device.type != "cuda":
        return newton_schulz(G, steps)
    if _compiled_ns is None:
        _compiled_ns = torch.compile(newton_schulz, dynamic=False, fullgraph=True)
    return _compiled_ns(G, steps, dtype=torch.bfloat16)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules. Each param group has `kind` = "adamw" or "muon".

    adamw groups: lr, betas, eps, weight_decay (decoupled: p <- p (1 - lr wd)).
    muon groups:  lr, momentum, nesterov, ns_steps, weight_decay; parameters must be 2-D.
    The Muon update is scaled by sqrt(max(1, rows / cols)) so that tall and wide matrices move by a
    comparable RMS amount (Jordan et al.'s convention; nanochat uses the same).
    """

    def __init__(self, param_groups: list[dict]):
        defaults = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, momentum=0.95,
                        nesterov=True, ns_steps=5, kind="adamw")
        super().__init__(param_groups, defaults)
        for g in self.param_groups:
            if g["kind"] not in ("adamw", "muon"):
                raise ValueError(f"param group kind must be 'adamw' or 'muon', got {g['kind']!r}")
            if g["kind"] == "muon" and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon only updates 2-D matrices; put vectors and embeddings in an adamw group")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._adamw(group)
            else:
                self._muon(group)
        return loss

    def _adamw(self, group: dict) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, device="cpu")  # on the host, as in torch's AdamW: reading it never waits for a GPU
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] = state["step"] + 1  # out of place: a loaded state may share this tensor
            t = state["step"].item()
            m, v = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * wd)  # decoupled weight decay
            m.lerp_(g, 1 - b1)  # m = b1 m + (1 - b1) g
            v.mul_(b2).addcmul_(g, g, value=1 - b2)  # v = b2 v + (1 - b2) g^2
            bias1, bias2 = 1 - b1 ** t, 1 - b2 ** t  # corrects the zero initialisation of m and v
            denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / bias1)

    def _muon(self, group: dict) -> None:
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        # Batch the Newton-Schulz iterations over matrices of the same shape: one stacked product
        # instead of many small ones (the per-call overhead dominates at CPU model sizes).
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        for shape, ps in by_shape.items():
            updates = []
            for p in ps:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)  # buf = mom buf + (1 - mom) g
                updates.append(p.grad.lerp(buf, mom) if group["nesterov"] else buf)  # Nesterov look-ahead
            O = _orthogonalize(torch.stack(updates), steps=group["ns_steps"])  # (N, rows, cols)
            scale = math.sqrt(max(1.0, shape[0] / shape[1]))
            for p, o in zip(ps, O):
                p.mul_(1 - lr * wd)
                p.add_(o.to(p.dtype), alpha=-lr * scale)


def build_param_groups(model, *, matrix_lr: float, embedding_lr: float, unembedding_lr: float,
                       scalar_lr: float, weight_decay: float = 0.0, optimizer: str = "muon",
                       adam_betas: tuple[float, float] = (0.8, 0.95)) -> list[dict]:
    """nanochat's assignment of parameters to update rules:

      embedding   wte (and value embeddings, learned positions)  AdamW, embedding_lr
      unembedding lm_head (or the tied wte when there is none)     AdamW, unembedding_lr
      scalars     norm gains/biases, linear biases (1-D)           AdamW, scalar_lr
      matrices    2-D weights inside the blocks                    Muon, matrix_lr (or AdamW if optimizer="adamw")

    AdamW learning rates are scaled by (width / 768)^-0.5: nanochat tuned them at width 768 and wider
    models need smaller steps per coordinate. The Muon LR is not scaled: its update has a fixed spectral norm
    (~1, times the aspect-ratio factor), whatever the width.
    """
    dmodel_scale = (model.config.n_embd / 768) ** -0.5
    matrices, scalars, embeddings, unembedding = [], [], [], []
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.dim() == 2:
            matrices.append(p)
        elif p.dim() < 2:
            scalars.append(p)
        elif name.startswith("lm_head."):
            unembedding.append(p)
        else:
            embeddings.append(p)
    if model.lm_head is None:  # tied: the one matrix is both; give it the unembedding's (smaller) LR
        unembedding, embeddings = [model.wte.weight], [p for p in embeddings if p is not model.wte.weight]
    adam = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=0.0)
    groups = [dict(params=unembedding, lr=unembedding_lr * dmodel_scale, name="unembedding", **adam),
              dict(params=embeddings, lr=embedding_lr * dmodel_scale, name="embedding", **adam),
              dict(params=scalars, lr=scalar_lr, name="scalars", **adam)]
    if optimizer == "muon":
        groups.append(dict(params=matrices, lr=matrix_lr, name="matrices", kind="muon", momentum=0.95,
                           nesterov=True, ns_steps=5, weight_decay=weight_decay))
    elif optimizer == "adamw":
        groups.append(dict(params=matrices, lr=matrix_lr, name="matrices", kind="adamw", betas=(0.9, 0.95),
                           eps=1e-8, weight_decay=weight_decay))
    else:
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
    groups = [g for g in groups if g["params"]]
    n_grouped = sum(len(g["params"]) for g in groups)
    assert n_grouped == len(list(model.parameters())), "every parameter must be in exactly one group"
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups
