"""
Seeing inside a trained GPT: what each attention head looks at, what each layer would predict, which
tokens surprise the model, how its embeddings and rotary frequencies are laid out. Pictures for a
learner, written as one self-contained HTML page (PNGs inlined as base64) by the `inspect` stage.

    with watch_attention(lambda layer, probs: ...):    # see every attention map the model computes
        model(idx)
    tr = trace(model, idx)         # residual stream after every layer, attention maps, logits
    lens = logit_lens(model, tr)   # (L+1, T, V) probabilities: "what would the model say if it stopped here?"
    write_page(model, tok, prompt, text, out_dir)

How the maps are read. gpt.py stays the plain model: nothing here is inside it. Attention probabilities
are never materialised by the model (it calls PyTorch's fused SDPA through `gpt.attend`), so
`watch_attention` swaps `gpt.attend` for a wrapper, for the duration of a `with` block, that receives the
*real* q, k, v of every layer (after RoPE, QK-norm, value embeddings, with GQA's shared key heads), computes
softmax(q k^T / sqrt(d)) under the layer's own causal / sliding-window mask, hands it to a callback and
returns the fused kernel's output unchanged. tests/test_inspect.py checks that probs @ v equals that
output for every preset, so the maps are the ones the model used. The residual stream is read with
forward hooks on the blocks, and the logit lens applies the model's own final norm, unembedding and
soft-cap (nostalgebraist 2020, "interpreting GPT: the logit lens").

The swap is process-wide while it lasts: do not run `watch_attention` while another thread runs the
same model (the server does not use it).
"""
from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import gpt as gpt_module

SECTIONS = ("attention", "logit-lens", "token-loss", "embeddings", "positions")


# ----------------------------------------------------------------------------------------------------
# Reading the model


def attention_probs(q: torch.Tensor, k: torch.Tensor, window: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) with the causal, sliding-window mask gpt.attend uses, in fp32.
    q: (B, H, Tq, D); k: (B, Hkv, Tk, D), H a multiple of Hkv: query head h reads key head h // (H / Hkv),
    as SDPA's enable_gqa does. Returns (B, H, Tq, Tk); every row sums to 1.

    >>> q = torch.zeros(1, 1, 3, 2); k = torch.zeros(1, 1, 3, 2)
    >>> attention_probs(q, k, window=2)[0, 0].tolist()
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    """
    if k.size(1) != q.size(1):
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    mask = gpt_module.attention_mask(q.size(2), k.size(2), window, device=q.device)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


@contextmanager
def watch_attention(callback, check: list | None = None):
    """Within the block, every attention call of every GPT also calls `callback(layer, probs)` with the
    (B, H, Tq, Tk) probabilities (layer = the call's index since the block began: one forward without
    a KV cache calls the layers in order). With `check` a list, the largest |probs @ v - model's output|
    of each call is appended to it (the test that the maps are the real ones)."""
    real = gpt_module.attend
    calls = [0]

    def attend(q, k, v, window):
        out = real(q, k, v, window)
        probs = attention_probs(q, k, window)
        if check is not None:
            vv = v.repeat_interleave(q.size(1) // v.size(1), dim=1) if v.size(1) != q.size(1) else v
            check.append((probs @ vv.float() - out.float()).abs().max().item())
        callback(calls[0], probs)
        calls[0] += 1
        return out

    gpt_module.attend = attend
    try:
        yield
    finally:
        gpt_module.attend = real


@dataclass
class Trace:
    idx: torch.Tensor  # (B, T) the token ids
    residuals: list  # L + 1 tensors (B, T, C): the stream entering block 0, then after each block
    attention: list  # L tensors (B, H, T, T): attention probabilities per layer
    logits: torch.Tensor  # (B, T, V) the model's own output


@torch.no_grad()
def trace(model, idx: torch.Tensor) -> Trace:
    """One forward of `model` on idx (B, T) that keeps the residual stream after every block and every
    attention map (fp32, on the model's device). Memory: L x B x H x T^2 floats; keep B and T small."""
    residuals, attention = [], []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: residuals.append(args[0].float()))]
    hooks += [b.register_forward_hook(lambda m, args, out: residuals.append(out.float())) for b in model.blocks]
    try:
        with watch_attention(lambda layer, p: attention.append(p)):
            logits = model(idx)
    finally:
        for h in hooks:
            h.remove()
    return Trace(idx, residuals, attention, logits)


def unembed(model, x: torch.Tensor) -> torch.Tensor:
    """The model's head applied to a residual stream x (..., C): final norm, lm_head (or the tied
    embedding), padding rows cut, soft-cap. unembed(model, last residual) == model(idx) (tested)."""
    x = model.norm_f(x.to(model.compute_dtype))
    w = model.wte.weight if model.lm_head is None else model.lm_head.weight
    logits = F.linear(x, w.to(x.dtype))[..., :model.config.vocab_size].float()
    cap = model.config.logit_softcap
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


@torch.no_grad()
def logit_lens(model, tr: Trace, row: int = 0) -> torch.Tensor:
    """Next-token probabilities read out of the residual stream after every layer: (L + 1, T, V).
    Layer 0 is the embedding alone (a bigram guess); the last is the model's real prediction."""
    return torch.stack([torch.softmax(unembed(model, r[row]), dim=-1) for r in tr.residuals])


@torch.no_grad()
def token_losses(model, ids: list[int]) -> torch.Tensor:
    """Cross-entropy (nats) of each token given the ones before it: a (len(ids) - 1,) tensor; entry i is
    the loss of ids[i + 1]. Long texts are cut to the model's context."""
    ids = ids[: model.config.sequence_len + 1]
    x = torch.tensor([ids], device=model.wte.weight.device)
    logits = model(x[:, :-1])  # (1, T, V)
    return F.cross_entropy(logits[0], x[0, 1:], reduction="none")


def frequent_tokens(ids: list[int], n: int, skip: set[int] = frozenset()) -> list[int]:
    """The n most frequent ids (ties: the smaller id first).

    >>> frequent_tokens([5, 3, 5, 7, 3, 5], 2)
    [5, 3]
    """
    counts = Counter(i for i in ids if i not in skip)
    return [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Project rows of x (N, C) on their two main principal axes: ((N, 2), [share of variance of each]).

    >>> pts, share = pca_2d(torch.tensor([[0., 0., 0.], [2., 0., 0.], [0., 1., 0.], [2., 1., 0.]]))
    >>> [round(s, 2) for s in share]
    [0.8, 0.2]
    """
    x = x.float() - x.float().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s.square()
    return x @ vh[:2].T, (var[:2] / var.sum()).tolist()


def rope_wavelengths(config) -> torch.Tensor:
    """Tokens per full turn of each rotary channel pair: 2 pi / base^(-2i/d), i = 0 .. d/2 - 1. The fast
    pairs resolve neighbours; pairs whose wavelength exceeds the context see it as nearly one angle.

    >>> from mini_nanochat.gpt import GPTConfig
    >>> [round(w, 1) for w in rope_wavelengths(GPTConfig(n_embd=8, n_head=2, rope_base=10000.0)).tolist()]
    [6.3, 628.3]
    """
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    return (2 * math.pi / inv_freq).float()


# ----------------------------------------------------------------------------------------------------
# Pictures (matplotlib's object API: no pyplot state, no backend switch)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _label(tok, i: int) -> str:
    """A token as a short printable label: control characters and spaces made visible."""
    s = tok.decode([i])
    s = s.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)[:12] or "''"


def plot_attention(probs: torch.Tensor, labels: list[str], window: int, layer: int) -> bytes:
    """One layer's heads side by side: row = query, column = key. A dashed line marks the oldest key the
    sliding window still lets a query see (nothing left of it can be attended)."""
    from matplotlib.figure import Figure

    H, T = probs.size(0), probs.size(-1)
    fig = Figure(figsize=(3.2 * H + 0.6, 3.6))
    for h in range(H):
        ax = fig.add_subplot(1, H, h + 1)
        ax.imshow(probs[h].cpu().numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        if window < T:  # query i's oldest visible key is i - window + 1: the line x = y - window + 0.5
            ax.plot([-0.5, T - window - 0.5], [window - 1, T - 1], "w--", linewidth=0.8)
        ax.set_title(f"layer {layer} head {h}" + (f" (window {window})" if window < T else ""), fontsize=9)
        if T <= 24:
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
        else:
            ax.set_xlabel("key position", fontsize=8)
            ax.set_ylabel("query position", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_logit_lens(top_p: torch.Tensor, top_labels: list[list[str]], col_labels: list[str]) -> bytes:
    """Heat map (layers x positions) of the lens's top-1 probability, annotated with the guessed token."""
    from matplotlib.figure import Figure

    L1, T = top_p.shape
    fig = Figure(figsize=(1.0 + 0.75 * T, 0.9 + 0.4 * L1))
    ax = fig.add_subplot()
    ax.imshow(top_p.cpu().numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for layer in range(L1):
        for t in range(T):
            ax.text(t, layer, top_labels[layer][t], ha="center", va="center", fontsize=6,
                    color="white" if top_p[layer, t] > 0.6 else "black")
    ax.set_xticks(range(T), col_labels, rotation=60, fontsize=7)
    ax.set_yticks(range(L1), ["embedding"] + [f"after block {i}" for i in range(L1 - 1)], fontsize=7)
    ax.set_xlabel("input token (the guess is for the token after it)")
    fig.tight_layout()
    return _png(fig)


def plot_token_loss(losses: torch.Tensor, ln_v: float) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.8))
    ax = fig.add_subplot()
    ax.plot(losses.cpu().numpy(), linewidth=0.8)
    ax.axhline(ln_v, color="gray", linestyle="--", linewidth=0.8, label=f"ln V = {ln_v:.2f} (a uniform guess)")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_pca(points: torch.Tensor, labels: list[str], share: list[float]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    p = points.cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=6, alpha=0.5)
    for (x, y), s in zip(p[:60], labels[:60]):  # label the most frequent only: a readable plot
        ax.annotate(s, (x, y), fontsize=7)
    ax.set_xlabel(f"PC 1 ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({share[1]:.0%} of variance)")
    fig.tight_layout()
    return _png(fig)


def plot_positions(model) -> bytes:
    """RoPE: each channel pair's wavelength against the context and the sliding window. Learned
    positions (GPT-2): cosine similarity between the position vectors."""
    from matplotlib.figure import Figure

    cfg = model.config
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if cfg.pos_emb == "rope":
        w = rope_wavelengths(cfg).numpy()
        ax.semilogy(range(len(w)), w, marker="o", markersize=3, label="wavelength (tokens per turn)")
        ax.axhline(cfg.sequence_len, color="tab:red", linestyle="--", label=f"context {cfg.sequence_len}")
        short = min(model.windows)
        if short < cfg.sequence_len:
            ax.axhline(short, color="tab:orange", linestyle=":", label=f"short window {short}")
        ax.set_xlabel("channel pair i (frequency base^(-2i/d))")
        ax.set_ylabel("tokens")
        ax.set_title(f"rotary frequencies, base {cfg.rope_base:g}, head dim {cfg.head_dim}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    else:
        p = F.normalize(model.wpe.weight.float().detach(), dim=-1)
        im = ax.imshow((p @ p.T).cpu().numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        fig.colorbar(im, ax=ax)
        ax.set_title("learned positions: cosine similarity of position vectors")
        ax.set_xlabel("position")
        ax.set_ylabel("position")
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------------------------------
# The page


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _loss_html(tok, ids: list[int], losses: torch.Tensor, ln_v: float) -> str:
    """The text with each token's background as red as its loss (full red at ln V); hover for the value."""
    spans = [f'<span class="tok">{html.escape(tok.decode([ids[0]]))}</span>']
    for i, loss in zip(ids[1:], losses.tolist()):
        a = min(1.0, loss / ln_v)
        spans.append(f'<span class="tok" style="background: rgba(220,40,40,{a:.2f})" '
                     f'title="{loss:.2f} nats">{html.escape(tok.decode([i]))}</span>')
    return '<div class="text">' + "".join(spans) + "</div>"


def build_page(model, tok, prompt: str, text: str, n_pca: int = 300, top_k: int = 5) -> tuple[str, dict[str, bytes]]:
    """The HTML page and its PNGs ({file name: bytes}) for `prompt` (attention, logit lens) and `text`
    (per-token loss, and the frequent tokens of the embedding plot)."""
    cfg = model.config
    dev = model.wte.weight.device
    ids = tok.encode(prompt, prepend=tok.bos_id)[: cfg.sequence_len]
    tr = trace(model, torch.tensor([ids], device=dev))
    labels = [_label(tok, i) for i in ids]
    pngs: dict[str, bytes] = {}
    parts = []

    # ---- attention
    parts.append('<h2 id="attention">Attention maps</h2><p>Row = the token asking (query), column = the '
                 'token looked at (key); brighter = more attention. Each row sums to 1; the upper triangle is '
                 'empty because a token cannot see the future, and on sliding-window layers a dashed line '
                 'marks the oldest token the window still reaches. Prompt: <code>' + html.escape(prompt) + '</code> '
                 f'({len(ids)} tokens; windows per layer: {model.windows}).'
                 + (f' The prompt is no longer than the shortest window ({min(model.windows)}): every layer sees all '
                    f'of it. A prompt of more than {min(model.windows)} tokens shows the windows.'
                    if len(ids) <= min(model.windows) else '') + '</p>')
    for layer, p in enumerate(tr.attention):
        name = f"attention_layer{layer}.png"
        pngs[name] = plot_attention(p[0], labels, model.windows[layer], layer)
        ent = -(p[0] * p[0].clamp_min(1e-12).log()).sum(-1).mean(-1)  # (H,) mean entropy per head
        parts.append(f"<h3>layer {layer} (window {model.windows[layer]}; mean entropy per head: "
                     + ", ".join(f"{e:.2f}" for e in ent.tolist()) + " nats)</h3>" + _img(pngs[name], name))

    # ---- logit lens
    lens = logit_lens(model, tr)  # (L + 1, T, V)
    cols = slice(max(0, len(ids) - 16), len(ids))  # the last 16 positions fit a page
    top_p, top_i = lens[:, cols].max(-1)
    top_labels = [[_label(tok, i) for i in row.tolist()] for row in top_i]
    pngs["logit_lens.png"] = plot_logit_lens(top_p, top_labels, labels[cols])
    last = lens[:, -1]  # (L + 1, V) the guesses for the token after the prompt
    rows = []
    for layer in range(last.size(0)):
        p, i = last[layer].topk(top_k)
        name = "embedding" if layer == 0 else f"after block {layer - 1}"
        rows.append(f"<tr><td>{name}</td>" + "".join(f"<td><code>{html.escape(_label(tok, j))}</code> {q:.2f}</td>"
                                                     for q, j in zip(p.tolist(), i.tolist())) + "</tr>")
    parts.append('<h2 id="logit-lens">Logit lens</h2><p>The final norm and unembedding applied to the residual '
                 'stream after every layer: what the model would predict if it stopped there. The map shows the '
                 'top guess and its probability; the table, the top guesses for the token after the prompt.</p>'
                 + _img(pngs["logit_lens.png"], "logit lens")
                 + "<table><tr><th>read after</th>" + "".join(f"<th>#{k + 1}</th>" for k in range(top_k)) + "</tr>"
                 + "".join(rows) + "</table>")

    # ---- per-token loss
    tids = tok.encode(text, prepend=tok.bos_id)[: cfg.sequence_len + 1]
    losses = token_losses(model, tids).cpu()
    ln_v = math.log(cfg.vocab_size)
    pngs["token_loss.png"] = plot_token_loss(losses, ln_v)
    worst = losses.topk(min(10, losses.numel())).indices.tolist()
    with torch.no_grad():
        logits = model(torch.tensor([tids[:-1]], device=dev))[0]
    rows = []
    for j in worst:
        ctx = tok.decode(tids[max(1, j - 6): j + 1])
        want = int(logits[j].argmax())
        rows.append(f"<tr><td><code>…{html.escape(ctx)}</code></td><td><code>{html.escape(_label(tok, tids[j + 1]))}"
                    f"</code></td><td>{losses[j]:.2f}</td><td><code>{html.escape(_label(tok, want))}</code></td></tr>")
    parts.append(f'<h2 id="token-loss">Per-token loss</h2><p>{len(tids) - 1} tokens, mean loss '
                 f'{losses.mean():.3f} nats ({losses.mean() / math.log(2):.3f} bits); red = surprising (full red '
                 f'at ln V = {ln_v:.2f}, a uniform guess). Hover a token for its loss.</p>'
                 + _loss_html(tok, tids, losses, ln_v) + _img(pngs["token_loss.png"], "per-token loss")
                 + "<h3>The most surprising tokens</h3><table><tr><th>context</th><th>next token</th><th>loss</th>"
                   "<th>the model expected</th></tr>" + "".join(rows) + "</table>")

    # ---- embeddings
    special = {tok.bos_id}
    freq = frequent_tokens(tids[1:], n_pca, skip=special)
    if len(freq) < 3:  # a very short text: fall back to the first ids
        freq = [i for i in range(min(cfg.vocab_size, n_pca)) if i not in special]
    pts, share = pca_2d(model.wte.weight.detach()[freq])
    pngs["embeddings_pca.png"] = plot_pca(pts, [_label(tok, i) for i in freq], share)
    parts.append(f'<h2 id="embeddings">Token embeddings (PCA)</h2><p>The input embeddings of the {len(freq)} most '
                 f'frequent tokens of the text, projected on their two main axes ({share[0]:.0%} and {share[1]:.0%} '
                 f'of the variance); labels on the 60 most frequent. Tokens used alike tend to sit together.</p>'
                 + _img(pngs["embeddings_pca.png"], "embedding PCA"))

    # ---- positions
    pngs["positions.png"] = plot_positions(model)
    what = ("RoPE rotates each pair of channels of q and k by an angle proportional to the position; fast pairs "
            "(short wavelength) tell neighbours apart, slow pairs barely turn over the whole context."
            if cfg.pos_emb == "rope" else "This model learns one vector per position (GPT-2); neighbouring "
            "positions end up similar.")
    parts.append(f'<h2 id="positions">Positions: rotary frequencies</h2><p>{what}</p>' + _img(pngs["positions.png"], "positions"))

    head = (f"<h1>Inside the model</h1><p>{cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads "
            f"({cfg.n_kv_head} kv), vocab {cfg.vocab_size}, context {cfg.sequence_len}, preset "
            f"<code>{cfg.preset}</code>. Sections: " + ", ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS) + ".</p>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>mini-nanochat inspect</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em} img{max-width:100%}"
            "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;font-size:small}"
            ".text{font-family:monospace;white-space:pre-wrap;line-height:1.6} .tok{border-right:1px dotted #ddd}"
            "</style></head><body>" + head + "\n".join(parts) + "</body></html>\n")
    return page, pngs


def write_page(model, tok, prompt: str, text: str, out_dir: str | Path, **kw) -> Path:
    """Write out_dir/index.html and its PNGs (atomically, each); return the page's path."""
    from .common import atomic_write, write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page, pngs = build_page(model, tok, prompt, text, **kw)
    for name, data in pngs.items():
        with atomic_write(out_dir / name, "wb") as f:
            f.write(data)
    write_text_atomic(out_dir / "index.html", page)
    return out_dir / "index.html"
