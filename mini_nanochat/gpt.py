"""
The GPT: one readable decoder-only transformer, whose default is the modern recipe nanochat uses and whose
few switches reproduce the historical recipes (presets "gpt2", "llama", "modern").

    idx (B, T) -> token embedding [+ learned positions] -> [norm] -> L x Block -> norm -> lm_head -> logits
    Block:  x = x + attn(norm(x));  x = x + mlp(norm(x))            (pre-norm residual stream)

Switch                          gpt2 (2019)        llama (2023)           modern (default, nanochat 2025-26)
positions                       learned absolute   RoPE, base 10k         RoPE, base 100k
norm                            LayerNorm(w, b)    RMSNorm(w)             RMSNorm, no parameters, + after embedding
MLP                             GELU, 4x           SwiGLU, ~8/3x          ReLU^2, 4x
attention                       MHA                GQA                    MHA (GQA optional), QK-norm, sliding windows
embedding / unembedding         tied               untied                 untied
biases                          yes                no                     no
logits                          plain              plain                  soft-capped 15 tanh(x/15)
value embeddings (ResFormer)    no                 no                     optional switch

Each switch cites its paper where it is implemented. gpt.py knows nothing of tokenizers, data, files or
optimizers: tensors in, tensors out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2)
    "gpt2": dict(pos_emb="learned", norm="layernorm", mlp="gelu", tie_embeddings=True, bias=True,
                 qk_norm=False, logit_softcap=0.0, window_pattern="L", value_embeds=False, embed_norm=False),
    # Touvron et al. 2023, "LLaMA" (arXiv:2302.13971); GQA as in Llama 2 (arXiv:2307.09288)
    "llama": dict(pos_emb="rope", rope_base=10000.0, norm="rmsnorm_affine", mlp="swiglu", tie_embeddings=False,
                  bias=False, qk_norm=False, logit_softcap=0.0, window_pattern="L", value_embeds=False,
                  embed_norm=False, gqa_ratio=2),
    # nanochat (2025-26): see the table in the module docstring
    "modern": dict(),
}


@dataclass
class GPTConfig:
    sequence_len: int = 256
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 2
    n_kv_head: int = 2  # < n_head: grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245)
    n_embd: int = 256
    # ---- switches (defaults = modern) ----
    pos_emb: str = "rope"  # "rope" (Su et al. 2021, arXiv:2104.09864) | "learned" (GPT-2)
    rope_base: float = 100000.0
    norm: str = "rmsnorm"  # "rmsnorm" (no parameters) | "rmsnorm_affine" (LLaMA) | "layernorm" (GPT-2)
    embed_norm: bool = True  # normalise right after the embedding (nanochat)
    mlp: str = "relu2"  # "relu2" (So et al. 2021, arXiv:2109.08668) | "gelu" | "swiglu" (Shazeer 2020, arXiv:2002.05202)
    tie_embeddings: bool = False  # share wte and lm_head (Press & Wolf 2017, arXiv:1608.05859)
    bias: bool = False
    qk_norm: bool = True  # RMS-normalise q and k per head (Henry et al. 2020, arXiv:2010.04245)
    qk_scale: float = 1.2  # after QK-norm, scale q and k: sharper attention than unit vectors give
    logit_softcap: float = 15.0  # cap * tanh(logits / cap); 0 = off (Gemma 2, arXiv:2408.00118)
    window_pattern: str = "SSSL"  # per layer, tiled: S = window T/4, L = full; the last layer is always L
    value_embeds: bool = False  # ResFormer value residual (Zhou et al. 2024, arXiv:2410.17897)
    preset: str = "modern"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError("RoPE needs an even head dimension")
        for name, allowed in (("pos_emb", ("rope", "learned")), ("norm", ("rmsnorm", "rmsnorm_affine", "layernorm")),
                              ("mlp", ("relu2", "gelu", "swiglu"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise ValueError(f"window_pattern must be made of S and L, got {self.window_pattern!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """The rows of the embedding and unembedding: vocab_size rounded up to a multiple of 64, so that
        the (B*T, C) x (C, V) product, the largest in a small model, has a tensor-core-friendly width
        on GPUs (nanochat pads the same way). The extra rows are never looked up (no token has their id)
        and their logits are cut off before the softmax, so they can never be predicted.

        >>> GPTConfig(vocab_size=97).padded_vocab_size, GPTConfig(vocab_size=4096).padded_vocab_size
        (128, 4096)
        """
        return 64 * math.ceil(self.vocab_size / 64)

    @property
    def max_positions(self) -> int:
        """How many positions a sequence (prompt + generated tokens) may have: the learned position table's
        length, or the RoPE table's (8 x sequence_len: rotary angles extend past the training length,
        though quality beyond it is not trained)."""
        return self.sequence_len if self.pos_emb == "learned" else 8 * self.sequence_len

    @property
    def mlp_hidden(self) -> int:
        """4x for GELU / ReLU^2. SwiGLU has three matrices, so LLaMA shrinks its hidden size to 2/3 of 4x to
        keep the parameter count; we round that up to a multiple of 64."""
        if self.mlp == "swiglu":
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int = 4096, sequence_len: int = 256, preset: str = "modern",
                   aspect_ratio: int = 64, head_dim: int = 128, **overrides) -> "GPTConfig":
        """The one dial. nanochat's rule: width = depth x 64, rounded up to a multiple of the head
        dimension (128); heads = width / 128; as many key/value heads as query heads (the llama preset
        halves them: GQA). Every derived value can still be overridden by keyword.

        >>> c = GPTConfig.from_depth(4); (c.n_layer, c.n_embd, c.n_head, c.n_kv_head)
        (4, 256, 2, 2)
        >>> c = GPTConfig.from_depth(20); (c.n_embd, c.n_head)
        (1280, 10)
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        n_embd = head_dim * math.ceil(depth * aspect_ratio / head_dim)
        n_head = n_embd // head_dim
        switches = dict(PRESETS[preset])
        gqa_ratio = switches.pop("gqa_ratio", 1)
        n_kv_head = max(1, n_head // gqa_ratio) if n_head % gqa_ratio == 0 else n_head
        values = dict(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                      n_kv_head=n_kv_head, n_embd=n_embd, preset=preset, **switches)
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------
# Building blocks


class Linear(nn.Linear):
    """nn.Linear whose fp32 master weight is cast to the activation's dtype in forward, so the matrix
    product runs in the compute dtype (bf16 on GPUs) while the optimizer updates fp32 weights. This is
    what autocast does, made explicit (nanochat does the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), b)


class Norm(nn.Module):
    """RMSNorm without parameters (modern), RMSNorm with a gain (LLaMA; Zhang & Sennrich 2019,
    arXiv:1910.07467) or LayerNorm with gain and bias (GPT-2; Ba et al. 2016, arXiv:1607.06450)."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(dim)) if kind in ("rmsnorm_affine", "layernorm") else None
        self.bias = nn.Parameter(torch.empty(dim)) if kind == "layernorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.bias.to(x.dtype), eps=1e-5)
        x = rms(x)
        return x if self.weight is None else x * self.weight.to(x.dtype)


def rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dimension, without parameters (also used for QK-norm).

    Written out rather than F.rms_norm: on this CPU build torch 2.13's F.rms_norm is a composite of ~6
    ATen calls, 805 us vs 203 us for this line on a (8, 256, 384) activation (ADR 0026).
    tests/test_gpt.py checks it against F.rms_norm."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


def rope_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim / 2): position t rotates channel pair i by t * base^(-2i/d)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (x1, x2) = (first half, second half) of every head by the angle of its position.
    x: (B, H, T, D); cos, sin: (T, D/2). After rotation q_m . k_n depends only on m - n."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention_mask(t_q: int, t_k: int, window: int, device=None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True = may attend. Queries are the last t_q of t_k positions (a KV cache
    holds the first t_k - t_q). Query i sees key j iff j <= i (causal) and i - j < window.

    >>> attention_mask(4, 4, window=2).int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    k_pos = torch.arange(t_k, device=device)[None, :]
    return (k_pos <= q_pos) & (q_pos - k_pos < window)


def attention_reference(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """The textbook formula, softmax(q k^T / sqrt(d) + mask) v, for tests (Vaswani et al. 2017,
    arXiv:1706.03762). q: (B, H, Tq, D); k, v: (B, H, Tk, D); mask: (Tq, Tk) bool."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def attend(q, k, v, window: int) -> torch.Tensor:
    """Causal (optionally sliding-window) attention through PyTorch's fused SDPA.
    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (GQA)."""
    t_q, t_k = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if t_q == t_k and window >= t_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if t_q == 1:  # one new token (decoding): it sees the last `window` keys, no mask to build
        if window < t_k:
            k, v = k[:, :, t_k - window:], v[:, :, t_k - window:]
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    mask = attention_mask(t_q, t_k, window, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, preallocated: (L, B, Hkv, T_max, D).
    The inference engine (Phase 6) builds on this; the model only calls `update` and `pos`."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions already filled (same for every layer between forwards)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's k, v (B, Hkv, T, D) after the cached ones; return all keys/values so far."""
        t = k.size(2)
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} + {t} > {self.max_len}")
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

    def advance(self, t: int) -> None:
        self.pos += t


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int, window: int):
        super().__init__()
        self.layer_idx, self.window = layer_idx, window
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qk_norm, self.qk_scale = config.qk_norm, config.qk_scale
        C, kv = config.n_embd, config.n_kv_head * config.head_dim
        self.c_q = Linear(C, C, bias=config.bias)
        self.c_k = Linear(C, kv, bias=config.bias)
        self.c_v = Linear(C, kv, bias=config.bias)
        self.c_proj = Linear(C, C, bias=config.bias)
        # ResFormer: a per-head gate, computed from the first channels of x, mixes a value embedding
        # of the current token into v. 2*sigmoid(0) = 1 at init: the embedding enters at full weight.
        self.ve_gate = Linear(min(32, C), config.n_kv_head, bias=False) if _has_ve(config, layer_idx) else None

    def forward(self, x, rope, ve=None, kv_cache: KVCache | None = None):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate.in_features]))  # (B, T, Hkv)
            v = v + gate.transpose(1, 2).unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_norm:
            q, k = rms(q) * self.qk_scale, rms(k) * self.qk_scale
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        y = attend(q, k, v, self.window)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        C, H = config.n_embd, config.mlp_hidden
        self.c_fc = Linear(C, H, bias=config.bias)
        self.c_gate = Linear(C, H, bias=config.bias) if self.kind == "swiglu" else None
        self.c_proj = Linear(H, C, bias=config.bias)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "relu2":
            h = F.relu(h).square()
        elif self.kind == "gelu":  # GPT-2 used the tanh approximation (Hendrycks & Gimpel 2016, arXiv:1606.08415)
            h = F.gelu(h, approximate="tanh")
        else:  # SwiGLU: silu(gate) * up
            h = F.silu(self.c_gate(x)) * h
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int, window: int):
        super().__init__()
        self.norm1 = Norm(config.n_embd, config.norm)
        self.attn = CausalSelfAttention(config, layer_idx, window)
        self.norm2 = Norm(config.n_embd, config.norm)
        self.mlp = MLP(config)

    def forward(self, x, rope, ve=None, kv_cache=None):
        x = x + self.attn(self.norm1(x), rope, ve, kv_cache)
        x = x + self.mlp(self.norm2(x))
        return x


def _has_ve(config: GPTConfig, layer_idx: int) -> bool:
    """Value embeddings on alternating layers, always including the last (nanochat's placement)."""
    return config.value_embeds and layer_idx % 2 == (config.n_layer - 1) % 2


def window_sizes(config: GPTConfig) -> list[int]:
    """Per-layer attention window: the pattern tiled over layers, S = ceil(T/4), L = T; last layer L.
    Short windows cost less attention compute and, mixed with full layers, lose little quality
    (Beltagy et al. 2020, Longformer, arXiv:2004.05150; nanochat's "SSSL")."""
    T = config.sequence_len
    short = -(-T // 4)
    pattern = config.window_pattern.upper()
    sizes = [short if pattern[i % len(pattern)] == "S" else T for i in range(config.n_layer)]
    sizes[-1] = T
    return sizes


# ----------------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    """GPT(config) builds the modules on the meta device (no memory, no random init wasted), then
    materialises them on `device` and runs `init_weights()`: the model is ready to use.

    model(idx) -> logits (B, T, vocab) in fp32;  model(idx, targets) -> mean cross-entropy (ignore -1).
    """

    def __init__(self, config: GPTConfig, device: str | torch.device | None = None,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.windows = window_sizes(config)
        C, V = config.n_embd, config.padded_vocab_size  # V: padded rows (see GPTConfig.padded_vocab_size)
        kv_dim = config.n_kv_head * config.head_dim
        with torch.device("meta"):
            self.wte = nn.Embedding(V, C)
            self.wpe = nn.Embedding(config.sequence_len, C) if config.pos_emb == "learned" else None
            self.embed_norm = Norm(C, config.norm) if config.embed_norm else None
            self.blocks = nn.ModuleList([Block(config, i, w) for i, w in enumerate(self.windows)])
            self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim)
                                               for i in range(config.n_layer) if _has_ve(config, i)})
            self.norm_f = Norm(C, config.norm)
            self.lm_head = None if config.tie_embeddings else Linear(C, V, bias=False)
        self.to_empty(device=device or "cpu")
        with torch.no_grad():  # poison the fresh memory: a parameter init_weights forgets stays NaN (tested)
            for p in self.parameters():
                p.fill_(float("nan"))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter's initialisation, in one place.

        modern / llama (nanochat's scheme):
          wte ~ N(0, 1); value embeddings and c_q, c_k, c_v, c_gate ~ U(-s, s) with s = sqrt(3 / C)
          (std 1/sqrt(C), uniform to avoid outliers); c_fc ~ U(-0.4 s, 0.4 s); c_proj (attention and
          MLP) = 0, so every block starts as the identity and the residual stream carries the embedding;
          lm_head ~ N(0, 0.001), so the initial logits are ~0 and the loss ~ ln(vocab); ve gates ~ U(0, 0.02).
          If wte is tied to the unembedding, it starts like lm_head: N(0, 0.001) (N(0, 0.02) without the
          embedding norm).
        gpt2 (Radford et al. 2019): every matrix and embedding ~ N(0, 0.02); positions ~ N(0, 0.01);
          c_proj ~ N(0, 0.02 / sqrt(2 L)) (residual scaling); biases 0.
        Norm gains 1, norm biases 0.
        """
        cfg = self.config
        for m in self.modules():
            if isinstance(m, Norm):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if cfg.preset == "gpt2" or cfg.pos_emb == "learned":
            std = 0.02
            nn.init.normal_(self.wte.weight, std=std)
            if self.wpe is not None:
                nn.init.normal_(self.wpe.weight, std=0.01)
            for block in self.blocks:
                for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc, block.mlp.c_gate):
                    if lin is not None:
                        nn.init.normal_(lin.weight, std=std)
                for lin in (block.attn.c_proj, block.mlp.c_proj):
                    nn.init.normal_(lin.weight, std=std / math.sqrt(2 * cfg.n_layer))
            if self.lm_head is not None:
                nn.init.normal_(self.lm_head.weight, std=std)
        else:
            s = math.sqrt(3.0 / cfg.n_embd)
            nn.init.normal_(self.wte.weight, std=1.0)
            for block in self.blocks:
                for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_gate):
                    if lin is not None:
                        nn.init.uniform_(lin.weight, -s, s)
                nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * s, 0.4 * s)
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)
                if block.attn.ve_gate is not None:
                    nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)
            for ve in self.value_embeds.values():
                nn.init.uniform_(ve.weight, -s, s)
            if self.lm_head is not None:
                nn.init.normal_(self.lm_head.weight, std=0.001)
            else:  # tied: wte is also the unembedding, so it must start small like lm_head (the embedding
                # norm, when on, rescales the input side anyway)
                nn.init.normal_(self.wte.weight, std=0.001 if cfg.embed_norm else 0.02)
        # RoPE tables: buffers, not parameters (not saved; recomputed from the config).
        if cfg.pos_emb == "rope":
            cos, sin = rope_tables(cfg.max_positions, cfg.head_dim, cfg.rope_base, device=self.wte.weight.device)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, loss_reduction: str = "mean"):
        B, T = idx.size()
        pos = kv_cache.pos if kv_cache is not None else 0
        if self.wpe is not None and pos + T > self.config.sequence_len:
            raise ValueError(f"learned positions stop at {self.config.sequence_len}; got position {pos + T}")
        x = self.wte(idx).to(self.compute_dtype)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos, pos + T, device=idx.device)).to(self.compute_dtype)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        rope = None
        if self.config.pos_emb == "rope":
            if pos + T > self.rope_cos.size(0):
                raise ValueError(f"position {pos + T} beyond the RoPE table ({self.rope_cos.size(0)})")
            rope = (self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T])  # (T, D/2) each
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx).to(self.compute_dtype) if str(i) in self.value_embeds else None
            x = block(x, rope, ve, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.norm_f(x)
        w = self.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, w.to(x.dtype))[..., :self.config.vocab_size]  # (B, T, V): padding rows cut off
        logits = logits.float()  # fp32 for a stable softmax
        if self.config.logit_softcap > 0:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    # ---- accounting ----------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Parameters by group: embedding, positions, value_embeds, blocks (matrices), norms_and_biases,
        lm_head (0 when tied), total."""
        groups = dict(embedding=self.wte.weight.numel(),
                      positions=self.wpe.weight.numel() if self.wpe is not None else 0,
                      value_embeds=sum(p.numel() for p in self.value_embeds.parameters()),
                      blocks=0, norms_and_biases=0,
                      lm_head=self.lm_head.weight.numel() if self.lm_head is not None else 0)
        for name, p in self.blocks.named_parameters():
            groups["blocks" if p.dim() == 2 else "norms_and_biases"] += p.numel()
        for m in (self.embed_norm, self.norm_f):
            if m is not None:
                groups["norms_and_biases"] += sum(p.numel() for p in m.parameters())
        groups["total"] = sum(p.numel() for p in self.parameters())
        assert groups["total"] == sum(v for k, v in groups.items() if k != "total")
        return groups

    def num_matmul_params(self) -> int:
        """Parameters that multiply the token stream (2 FLOPs each per token forward): every Linear
        weight, plus the embedding matrix when it doubles as the unembedding (tied)."""
        n = sum(m.weight.numel() for m in self.modules() if isinstance(m, Linear))
        return n + (self.wte.weight.numel() if self.lm_head is None else 0)

    def estimate_flops(self) -> int:
        """Training FLOPs per token (forward + backward): 6 per matmul parameter (2 forward, 4 backward;
        Kaplan et al. 2020, arXiv:2001.08361) plus attention: q.k and attn.v are 2 x 2 x T x D per head
        per token forward, x3 with backward = 12 * H * D * T_eff per layer, T_eff = min(window, T) (PaLM,
        arXiv:2204.02311, Appendix B, as nanochat counts). Embedding lookups are not FLOPs."""
        h, d = self.config.n_head, self.config.head_dim
        attn = sum(12 * h * d * min(w, self.config.sequence_len) for w in self.windows)
        return 6 * self.num_matmul_params() + attn
