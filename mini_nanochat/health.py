"""
Training health: a few numbers, cheap enough to leave on, that tell a healthy run from a sick one, and
detectors that say in the log *when* and *where* a run went wrong.

    monitor = HealthMonitor(model, optimizer, probe=val_inputs[:2], every=50)
    loss = train_step(..., before_update=monitor.hook(step))     # grad norm (every step), weights copy (due steps)
    health, alerts = monitor.after_update(step + 1, loss)        # -> metrics.jsonl "health"; alerts -> the log

Every step (one fused norm over the gradients, no extra host sync until the step's end):
    grad_norm        global L2 norm of all gradients, after gradient accumulation and sync
Every `every` steps, and nothing on the others:
    update_ratio     per optimizer group, ||W_after - W_before|| / ||W_before||: how far one step moves
                     the weights (Karpathy's rule of thumb: ~1e-3 for AdamW; Muon's matrices move more)
    act_rms          RMS of the residual stream after each block, on a fixed probe batch (one no-grad forward)
    layer_gain       RMS of what each block adds / RMS of what enters it (0: a dead layer)
    attn_entropy     mean entropy (nats) of each layer's attention rows; ln(keys) when uniform, 0 when
                     each query looks at a single key (collapse, often from growing q.k logits without
                     QK-norm: Dehghani et al. 2023, arXiv:2302.05442; Zhai et al. 2023, arXiv:2303.06296)
    max_logit        largest output logit on the probe batch (after the soft-cap, if any)

Detectors (pure functions, each returns None or lines for the log):
    loss_spike         the loss exceeds 1.3 x the median of the last 50 losses (or is not finite)
    loss_above_uniform the loss is above ln V (worse than guessing uniformly), after 10 steps
    grad_explosion     the gradient norm exceeds 5 x its running median, or is not finite
    attention_collapse a layer's mean attention entropy is below 0.1 nats       } per layer,
    dead_layers        a block adds < 1e-4 of its input's RMS                   } on the due
    exploding_layers   a block's output RMS is > 10 x its input's               } steps
A detector that fired stays quiet about the same thing for `quiet` steps, so a run that is broken for
good says so a few times, not on every line.
"""
from __future__ import annotations

import math
import statistics
from collections import deque

import torch

PREFIX = "health: "


# ---- the metrics ---------------------------------------------------------------------------------------

def grad_norm(params) -> torch.Tensor:
    """Global L2 norm of the gradients of `params` (those without a gradient are skipped), as a tensor
    on their device: reading it (.item()) is left to the caller, when the device has synced anyway.

    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> grad_norm([p]).item()
    5.0
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def snapshot(optimizer) -> list[list[torch.Tensor]]:
    """A copy of every parameter, group by group (taken just before optimizer.step), in host memory: on
    a GPU a second copy of the weights (2.2 GB for a d20) could be what tips a full device over; the
    copy there and back costs a fraction of a second once every --health-every steps."""
    return [[p.detach().to("cpu", copy=True) for p in g["params"]] for g in optimizer.param_groups]


def update_ratios(optimizer, before: list[list[torch.Tensor]]) -> dict[str, float]:
    """{group name: ||W_after - W_before|| / ||W_before||}, the norms over the whole group.

    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0])); opt = torch.optim.SGD([w], lr=1.0)
    >>> old = snapshot(opt); w.grad = torch.tensor([0.5, 0.0]); opt.step()
    >>> {k: round(v, 6) for k, v in update_ratios(opt, old).items()}
    {'group0': 0.1}
    """
    out = {}
    for i, (g, old) in enumerate(zip(optimizer.param_groups, before)):
        if not old:
            continue
        delta = torch.stack([(p.detach().float().cpu() - o.float()).norm() for p, o in zip(g["params"], old)]).norm()
        base = torch.stack([o.float().norm() for o in old]).norm()
        out[g.get("name", f"group{i}")] = (delta / base).item() if base > 0 else float("nan")
    return out


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each distribution along the last dimension (0 log 0 = 0).

    >>> [round(e, 4) for e in entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]])).tolist()]
    [0.6931, 0.0]
    """
    return 0.0 - (probs * probs.clamp_min(1e-30).log()).sum(-1)  # 0 - x: never -0.0


@torch.no_grad()
def activation_stats(model, idx: torch.Tensor) -> dict:
    """One no-grad forward of `model` on idx (B, T): per layer the residual RMS after the block, the
    block's gain (RMS of its output minus its input over RMS of its input), the mean attention entropy
    (over batch, heads and query positions; query 0 always has 0) and its lowest head; the max logit.
    Attention maps are reduced to numbers as they come, never kept (inspect_model.watch_attention)."""
    from .inspect_model import watch_attention

    was_training = model.training
    model.eval()
    act, gain, ent, ent_min = [], [], [], []

    def on_block(m, args, out):
        x = args[0].float()
        act.append(out.float().square().mean().sqrt().item())
        gain.append(((out.float() - x).square().mean().sqrt() / x.square().mean().sqrt().clamp_min(1e-30)).item())

    def on_attention(layer, probs):
        e = entropy(probs).mean(dim=(0, 2))  # (H,) mean over batch and queries
        ent.append(e.mean().item())
        ent_min.append(e.min().item())

    hooks = [b.register_forward_hook(on_block) for b in model.blocks]
    try:
        with watch_attention(on_attention):
            logits = model(idx)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {"act_rms": act, "layer_gain": gain, "attn_entropy": ent, "attn_entropy_min_head": ent_min,
            "max_logit": logits.max().item()}


# ---- the detectors -------------------------------------------------------------------------------------
# Thresholds are rules of thumb, checked on the runs of docs/debugging.md (a healthy d4 run never
# trips them; LR x30, no QK-norm and a zeroed layer each do), not tuned over many runs.

def loss_spike(history, loss: float, ratio: float = 1.3, min_history: int = 5) -> str | None:
    """A loss above `ratio` x the median of the recent losses (`history`, oldest first).

    >>> loss_spike([3.2] * 20, 6.1)
    'loss spike 6.10 vs running median 3.20'
    >>> loss_spike([3.2] * 20, 3.5) is None, loss_spike([3.2] * 4, 9.0) is None
    (True, True)
    """
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if len(history) < min_history:
        return None
    med = statistics.median(history)
    return f"loss spike {loss:.2f} vs running median {med:.2f}" if loss > ratio * med else None


def loss_above_uniform(loss: float, vocab_size: int, margin: float = 0.1) -> str | None:
    """A loss above ln V, what guessing every token with probability 1/V scores: the model has learned
    nothing, or unlearned it (a freshly initialised model starts at ln V).

    >>> loss_above_uniform(9.7, 4096)
    'loss 9.70 is above ln V = 8.32: worse than a uniform guess'
    >>> loss_above_uniform(8.3, 4096) is None
    True
    """
    ln_v = math.log(vocab_size)
    if math.isfinite(loss) and loss > ln_v + margin:
        return f"loss {loss:.2f} is above ln V = {ln_v:.2f}: worse than a uniform guess"
    return None


def grad_explosion(history, norm: float, ratio: float = 5.0, min_history: int = 5) -> str | None:
    """A gradient norm that is not finite, or above `ratio` x the median of the recent norms.

    >>> grad_explosion([0.5] * 20, 80.0)
    'grad norm exploded: 80 vs running median 0.5'
    >>> grad_explosion([0.5] * 20, 2.0) is None
    True
    """
    if not math.isfinite(norm):
        return f"grad norm is {norm}"
    if len(history) < min_history:
        return None
    med = statistics.median(history)
    return f"grad norm exploded: {norm:.3g} vs running median {med:.3g}" if norm > ratio * med else None


def attention_collapse(entropies: list[float], threshold: float = 0.1) -> list[str]:
    """One line per layer whose mean attention entropy fell below `threshold` nats: its queries each
    look at (almost) one key.

    >>> attention_collapse([2.3, 0.02, 1.9])
    ['layer 1 attention collapsed (entropy 0.02)']
    """
    return [f"layer {i} attention collapsed (entropy {e:.2f})" for i, e in enumerate(entropies) if e < threshold]


def dead_layers(gains: list[float], threshold: float = 1e-4) -> list[str]:
    """One line per block that adds (almost) nothing to the residual stream.

    >>> dead_layers([0.3, 0.0, 0.5])
    ['layer 1 is dead (adds 0 to the residual stream)']
    """
    return [f"layer {i} is dead (adds {g:.2g} to the residual stream)" for i, g in enumerate(gains) if g < threshold]


def exploding_layers(gains: list[float], threshold: float = 10.0) -> list[str]:
    """One line per block whose output is more than `threshold` x larger (RMS) than what entered it: the
    residual stream is blowing up there (a healthy block adds a fraction of its input).

    >>> exploding_layers([0.4, 29.9, 0.5])
    ['layer 1 activations exploding (output RMS 29.9x its input)']
    """
    return [f"layer {i} activations exploding (output RMS {g:.3g}x its input)" for i, g in enumerate(gains)
            if g > threshold]


# ---- the monitor ---------------------------------------------------------------------------------------

class HealthMonitor:
    """Collects the metrics above inside a training loop and runs the detectors.

    `probe` (B, T) is a fixed batch of inputs for the activation statistics (a slice of the validation
    set: the same tokens every time, so the curves compare like with like). `every` <= 0 turns the
    per-step gradient norm off too (the monitor then only watches the loss)."""

    def __init__(self, model, optimizer, probe: torch.Tensor | None, every: int, window: int = 50,
                 spike_ratio: float = 1.3, explode_ratio: float = 5.0, collapse_entropy: float = 0.1,
                 quiet: int = 20, warmup: int = 10):
        self.model, self.optimizer, self.probe, self.every = model, optimizer, probe, every
        self.losses, self.norms = deque(maxlen=window), deque(maxlen=window)
        self.spike_ratio, self.explode_ratio, self.collapse_entropy, self.quiet = (spike_ratio, explode_ratio,
                                                                                   collapse_entropy, quiet)
        self._norm, self._before, self._last_said, self.warmup = None, None, {}, warmup

    def due(self, step: int) -> bool:
        """Whether the full metrics are taken at the end of optimizer step `step` (1-based, as logged)."""
        return self.every > 0 and step % self.every == 0

    def hook(self, step: int):
        """The callback for training.train_step(before_update=...) of the step that starts at `step`
        (0-based): gradient norm always, a copy of the weights when the full metrics are due."""
        def before_update():
            if self.every > 0:
                self._norm = grad_norm(self.model.parameters())
            if self.due(step + 1):
                self._before = snapshot(self.optimizer)
        return before_update

    def after_update(self, step: int, loss: float) -> tuple[dict, list[str]]:
        """After optimizer step `step` (1-based) with mean loss `loss`: (the metrics for metrics.jsonl,
        the alert lines for the log, each 'health: step N: ...')."""
        record, alerts = {}, []

        def say(key: str, text: str | None) -> None:
            if text and step - self._last_said.get(key, -10**9) > self.quiet:
                self._last_said[key] = step
                alerts.append(f"{PREFIX}step {step}: {text}")

        say("loss", loss_spike(self.losses, loss, self.spike_ratio))
        if step >= self.warmup:  # a fresh model sits at ln V for its first steps
            say("uniform", loss_above_uniform(loss, self.model.config.vocab_size))
        if math.isfinite(loss):
            self.losses.append(loss)
        if self._norm is not None:
            norm = self._norm.item()
            self._norm = None
            record["grad_norm"] = norm
            say("grad", grad_explosion(self.norms, norm, self.explode_ratio))
            if math.isfinite(norm):
                self.norms.append(norm)
        if self._before is not None:
            record["update_ratio"] = update_ratios(self.optimizer, self._before)
            self._before = None
            if self.probe is not None:
                stats = activation_stats(self.model, self.probe)
                record.update(stats)
                for line in (attention_collapse(stats["attn_entropy"], self.collapse_entropy)
                             + dead_layers(stats["layer_gain"]) + exploding_layers(stats["layer_gain"])):
                    say(line.split(" (")[0], line)  # key: "layer 2 attention collapsed", "layer 1 is dead"...
        return record, alerts


# ---- the picture (for `report`) -----------------------------------------------------------------------

def read_health(metrics_path) -> list[tuple[int, dict]]:
    """(step, health record) of every training record of a metrics.jsonl that has one, in step order (a
    step logged twice keeps its last record; broken lines are skipped)."""
    import json
    from pathlib import Path

    found = {}
    path = Path(metrics_path)
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("health"), dict):
            found[r["step"]] = r["health"]
    return sorted(found.items())


def plot_health(metrics_path, out_path) -> bool:
    """Four panels from metrics.jsonl's health records: gradient norm, update/weight ratio per group,
    residual RMS per layer, attention entropy per layer (log scales where the values span decades).
    Writes out_path (PNG, atomically) and returns True, or False when the run has no health records."""
    from matplotlib.figure import Figure

    from .common import atomic_write

    recs = read_health(metrics_path)
    if not recs:
        return False
    fig = Figure(figsize=(10, 7))
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)]
    pts = [(s, h["grad_norm"]) for s, h in recs if isinstance(h.get("grad_norm"), (int, float))]
    if pts:
        axes[0].semilogy(*zip(*pts), linewidth=0.8)
    axes[0].set_title("global gradient norm")
    full = [(s, h) for s, h in recs if "attn_entropy" in h]
    groups = sorted({g for _, h in full for g in h.get("update_ratio", {})})
    for g in groups:
        axes[1].semilogy(*zip(*[(s, h["update_ratio"][g]) for s, h in full if g in h.get("update_ratio", {})]),
                         marker="o", markersize=2, label=g)
    axes[1].set_title("update / weight ratio per group")
    axes[2].set_yscale("log")  # a healthy stream stays near 1-10; an exploding one reaches 1e4 and more
    for ax, key, title in ((axes[2], "act_rms", "residual RMS after each layer"),
                           (axes[3], "attn_entropy", "mean attention entropy (nats)")):
        n = max((len(h.get(key, [])) for _, h in full), default=0)
        for layer in range(n):
            ax.plot(*zip(*[(s, h[key][layer]) for s, h in full if len(h.get(key, [])) > layer]),
                    marker="o", markersize=2, label=f"layer {layer}")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_write(out_path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    return True
