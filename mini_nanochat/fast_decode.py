"""
Fast one-token decoding: the inference side's copy of the model's forward for T = 1, laid out for speed.

`gpt.py` is the model as a learner reads it: `model(idx, kv_cache=cache)` decodes correctly, one token
at a time, on any device. Decoding is where speed tricks pay (one token per step means every weight is
read for a handful of rows, and every op's fixed cost counts), and those tricks would clutter the model
file, so they live here, behind one switch: `Engine(model, tok, fast=True)` (the default) decodes with
this module, `fast=False` with `model.forward`. Tests check both against each other for every preset
(tests/test_fast_decode.py).

One function, `decode_step(model, idx, cache, pos)`, two layouts of the same arithmetic:

  pos an int     the cache holds `pos` positions; attention reads the live window as a slice of it.
                 On a multi-core CPU the matrix products with few rows go through `row_split_linear`
                 where it measured faster on this machine (row_split_plan, ADR 0026). This is the CPU path.
  pos a tensor   static shapes: `pos` is a 0-dim tensor on the device, the new keys/values are written
                 at `pos` with one index_put_, and attention covers the cache's whole length with a mask
                 built from `pos`. No shape and no Python value changes from step to step, so the step
                 can be recorded once as a CUDA graph and replayed for every token (`GraphedDecoder`):
                 one launch per token instead of hundreds (ADR 0028). This is the GPU path.

Both layouts also drop the model's time axis (q, k, v are (B, heads, D)) and rotate and normalise q and
k together, which saves element-wise ops per layer.
"""
from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F

from .gpt import GPT, KVCache, Linear, apply_rope, attend, rms

# ----------------------------------------------------------------------------------------------------
# Row-split matrix products (CPU, ADR 0026)

SPLIT_ROWS_MAX = 128  # row_split_linear pays off up to here on the 2-core CPU (ADR 0026); MKL threads well beyond
ROW_SPLIT = True  # set False to compare with plain F.linear (benchmarks/bench_engine.py does)


def row_split_linear(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """x @ w.T computed as n independent blocks of w's output rows, one batched matmul.

    Decoding multiplies a handful of rows (one per sample) by every weight matrix: a matrix-vector
    product that only has to stream the weights from memory once. MKL's single F.linear call does that on
    ONE core here (~8 GB/s measured); cutting the output rows into n blocks (a free view of w) and handing
    them to torch.bmm lets the batched kernel run the blocks on n cores (~28 GB/s, ADR 0026). Same
    arithmetic, same result up to float rounding (tested against F.linear).

    >>> w, x = torch.randn(6, 4), torch.randn(1, 4)
    >>> torch.allclose(row_split_linear(x, w, 2), F.linear(x, w), atol=1e-6)
    True
    """
    O, I = w.shape
    x2 = x.reshape(-1, I)  # (M, I)
    M = x2.size(0)
    y = torch.bmm(w.view(n, O // n, I), x2.t().expand(n, I, M))  # (n, O/n, M)
    return y.view(O, M).t().contiguous().view(*x.shape[:-1], O)  # (..., O)


# Whether row-split beats F.linear depends on the CPU and its BLAS: on the AMD EPYC (AVX2) machine of
# ADR 0026 it was 1.3-3x faster at 1 row; on an Intel Xeon with AVX512-BF16 (2026-11-30) F.linear was
# 1.2-2.5x faster at every shape we tried (tools/row_split_check.py). So the choice is measured on the
# machine that decodes: once per (weight shapes, rows, threads), a few ms, kept for the process.
_PLANS: dict[tuple, dict[tuple[int, int], int]] = {}
_SHAPES: "weakref.WeakKeyDictionary[GPT, tuple]" = weakref.WeakKeyDictionary()  # model -> its weight shapes


def _time_linear(fn, reps: int = 5) -> float:
    """Median seconds of fn() over `reps` calls after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2]


def row_split_plan(model: GPT, rows: int) -> dict[tuple[int, int], int]:
    """{weight shape (out, in): blocks for row_split_linear, 0 = F.linear} for decoding `rows` rows.

    Empty (every product through F.linear) unless row-split can apply: ROW_SPLIT on, the model on a CPU
    in fp32, at least 2 threads, at most SPLIT_ROWS_MAX rows. Otherwise each weight shape of the model
    gets row-split only if it measured at least 10% faster than F.linear here (random weights of that
    shape; the arithmetic cost does not depend on the values). Decided once per step, so each product
    then costs one dict lookup."""
    threads = torch.get_num_threads()
    if (not ROW_SPLIT or model.compute_dtype != torch.float32 or model.wte.weight.device.type != "cpu"
            or threads < 2 or rows > SPLIT_ROWS_MAX):
        return {}
    if model not in _SHAPES:
        _SHAPES[model] = tuple(sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, Linear)}
                                      | {tuple(model.wte.weight.shape)}))  # wte: the tied unembedding
    key = (_SHAPES[model], rows, threads)
    if key not in _PLANS:
        plan = {}
        for out_f, in_f in key[0]:
            n = threads if out_f % threads == 0 else 0
            if n:
                w, x = torch.randn(out_f, in_f), torch.randn(rows, in_f)
                plain = _time_linear(lambda: F.linear(x, w))
                split = _time_linear(lambda: row_split_linear(x, w, n))
                n = n if split < 0.9 * plain else 0  # a clear win only: one noisy timing must not flip it
            plan[(out_f, in_f)] = n
        _PLANS[key] = plan
    return _PLANS[key]


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, plan: dict | None = None) -> torch.Tensor:
    """F.linear, or its row-split form where `plan` (row_split_plan) says so for w's shape. w and b are
    cast to x's dtype: the model keeps fp32 master weights and computes in model.compute_dtype, like
    gpt.Linear."""
    w = w.to(x.dtype)
    b = b.to(x.dtype) if b is not None else None
    n = plan.get(w.shape, 0) if plan else 0  # torch.Size hashes like the tuple it is
    if not n:
        return F.linear(x, w, b)
    y = row_split_linear(x, w, n)
    return y if b is None else y + b


def _lin(x: torch.Tensor, module, plan: dict) -> torch.Tensor:
    return linear(x, module.weight, module.bias, plan)


# ----------------------------------------------------------------------------------------------------
# One decode step


def _rows_at(table: torch.Tensor, pos) -> torch.Tensor:
    """Row `pos` of a (positions, ...) table as a (1, ...) slice; pos an int or a 0-dim tensor."""
    if torch.is_tensor(pos):
        return table.index_select(0, pos.view(1))
    return table[pos:pos + 1]


def _write_at(buf: torch.Tensor, layer: int, pos: torch.Tensor, x: torch.Tensor) -> None:
    """buf[layer, :, :, pos] = x for a (L, B, H, T_max, D) cache and x (B, H, D), as ONE index_put_ on
    the whole buffer. Written through a slice view instead (`buf[layer][:, :, pos] = x`), torch.compile
    copies the whole layer's cache into a temporary every step before writing one position (seen in
    inductor's generated code on 2026-11-30); an index_put_ on the buffer itself stays in place."""
    L, B, H, T, D = buf.shape
    dev = buf.device
    index = (torch.full((1, 1), layer, device=dev), torch.arange(B, device=dev).view(B, 1),
             torch.arange(H, device=dev).view(1, H), pos.view(1, 1))  # broadcast to (B, H)
    buf.index_put_(index, x.to(buf.dtype))


def _attention(attn, x: torch.Tensor, rope, ve, cache: KVCache, pos, plan: dict) -> torch.Tensor:
    """gpt.CausalSelfAttention.forward for one token per row. x: (B, C) -> (B, C)."""
    B, C = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q = _lin(x, attn.c_q, plan).view(B, H, D)
    k = _lin(x, attn.c_k, plan).view(B, Hkv, D)
    v = _lin(x, attn.c_v, plan).view(B, Hkv, D)
    if ve is not None:
        gate = 2 * torch.sigmoid(_lin(x[:, : attn.ve_gate.in_features], attn.ve_gate, plan))  # (B, Hkv)
        v = v + gate.unsqueeze(-1) * ve.view(B, Hkv, D)
    if rope is not None or attn.qk_norm:
        qk = torch.cat([q, k], 1)  # (B, H + Hkv, D): rotate and normalise q and k in one go
        if rope is not None:
            qk = apply_rope(qk, *rope)  # cos, sin: (1, D/2), broadcast over rows and heads
        if attn.qk_norm:
            qk = rms(qk) * attn.qk_scale
        q, k = qk[:, :H], qk[:, H:]
    q = q.unsqueeze(2)  # (B, H, 1, D)
    if torch.is_tensor(pos):  # static shapes: write at pos, attend over the whole cache with a mask
        _write_at(cache.k, attn.layer_idx, pos, k)
        _write_at(cache.v, attn.layer_idx, pos, v)
        ck, cv = cache.k[attn.layer_idx], cache.v[attn.layer_idx]  # (B, Hkv, T_max, D)
        k_pos = torch.arange(ck.size(2), device=ck.device)  # (T_max,)
        allowed = (k_pos <= pos) & (pos - k_pos < attn.window)  # causal and inside the window
        y = F.scaled_dot_product_attention(q, ck, cv, attn_mask=allowed.view(1, 1, 1, -1), enable_gqa=H != Hkv)
    else:
        ck, cv = cache.update(attn.layer_idx, k.unsqueeze(2), v.unsqueeze(2))  # (B, Hkv, pos + 1, D)
        y = attend(q, ck, cv, attn.window)  # (B, H, 1, D)
    return _lin(y.reshape(B, C), attn.c_proj, plan)


def _mlp(mlp, x: torch.Tensor, plan: dict) -> torch.Tensor:
    """gpt.MLP.forward on (B, C) rows."""
    h = _lin(x, mlp.c_fc, plan)
    if mlp.kind == "relu2":
        h = F.relu(h).square()
    elif mlp.kind == "gelu":
        h = F.gelu(h, approximate="tanh")
    else:
        h = F.silu(_lin(x, mlp.c_gate, plan)) * h
    return _lin(h, mlp.c_proj, plan)


def decode_step(model: GPT, idx: torch.Tensor, cache: KVCache, pos) -> torch.Tensor:
    """The logits after one new token per row: idx (B,) token ids at position `pos` -> (B, vocab) fp32.

    Writes position `pos` of every layer's keys and values into `cache`. With an int `pos` it must equal
    `cache.pos`, and the caller advances the cache afterwards (`cache.advance(1)`); with a 0-dim tensor
    `pos` (static shapes, for CUDA graphs) `cache.pos` is not used at all. The same arithmetic as
    `model(idx.view(B, 1), kv_cache=cache)[:, -1]` (tested for every preset)."""
    cfg, dt = model.config, model.compute_dtype
    plan = {} if torch.is_tensor(pos) else row_split_plan(model, idx.size(0))  # static (GPU) path: F.linear
    x = model.wte(idx).to(dt)  # (B, C)
    if model.wpe is not None:
        x = x + _rows_at(model.wpe.weight, pos).to(dt)
    if model.embed_norm is not None:
        x = model.embed_norm(x)
    rope = (_rows_at(model.rope_cos, pos), _rows_at(model.rope_sin, pos)) if cfg.pos_emb == "rope" else None
    for i, block in enumerate(model.blocks):
        ve = model.value_embeds[str(i)](idx).to(dt) if str(i) in model.value_embeds else None  # (B, kv_dim)
        x = x + _attention(block.attn, block.norm1(x), rope, ve, cache, pos, plan)
        x = x + _mlp(block.mlp, block.norm2(x), plan)
    x = model.norm_f(x)
    w = model.wte.weight if model.lm_head is None else model.lm_head.weight
    logits = linear(x, w, plan=plan)[:, : cfg.vocab_size].float()  # (B, V); padding rows cut off
    if cfg.logit_softcap > 0:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits


# ----------------------------------------------------------------------------------------------------
# CUDA graphs (ADR 0028)


class GraphedDecoder:
    """A static KV cache for `batch` rows and `max_len` positions, and one decode step recorded as a CUDA
    graph: every later token is one `graph.replay()` (Nguyen et al., "CUDA Graphs", NVIDIA 2019; gpt-fast
    does the same through torch.compile's "reduce-overhead" mode).

        dec = GraphedDecoder(model, batch=8, max_len=512)
        dec.cache.k[:, :, :, :P] = prefill_keys ...      # fill the prompt's positions
        logits = dec.step(next_ids, pos=P)               # (8, vocab), a view of a static output buffer

    The graph reads the model's weights in place, so an optimizer that updates them in place (as ours
    does) is seen by the next replay. The step is compiled first (`torch.compile`, default mode, shapes
    fixed) so that its element-wise ops are fused into fewer kernels; `compile=False` records the eager
    step instead. CUDA only: building it elsewhere raises."""

    def __init__(self, model: GPT, batch: int, max_len: int, compile: bool = True, warmup: int = 3):
        device = model.wte.weight.device
        if device.type != "cuda":
            raise RuntimeError("GraphedDecoder needs a CUDA device")
        cfg = model.config
        self.batch, self.max_len = batch, max_len
        self.cache = KVCache(cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.head_dim, device=device,
                             dtype=model.compute_dtype)
        self.idx = torch.zeros(batch, dtype=torch.long, device=device)  # static inputs: copied into, never replaced
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        fn = torch.compile(decode_step, dynamic=False, fullgraph=True) if compile else decode_step
        side = torch.cuda.Stream(device)  # warm-up (and compilation) off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(model, self.idx, self.cache, self.pos)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = fn(model, self.idx, self.cache, self.pos)  # (batch, vocab): rewritten by each replay

    def step(self, idx: torch.Tensor, pos: int) -> torch.Tensor:
        """Decode one token per row at position `pos` (< max_len); returns the static logits buffer."""
        self.idx.copy_(idx, non_blocking=True)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.logits
