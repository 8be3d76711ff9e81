"""The GPT model: causality, attention against the textbook formula, GQA, sliding windows, RoPE,
initial loss, parameter-count formulas, FLOP estimate against torch's counter, overfitting, precision,
the padded vocabulary, and the KV-cache path of forward."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mini_nanochat.gpt import (GPT, GPTConfig, KVCache, apply_rope, attend, attention_mask, attention_reference,
                               rope_tables, window_sizes)

PRESETS = ["modern", "gpt2", "llama"]


def tiny(preset="modern", **kw) -> GPTConfig:
    """A small config for fast tests: depth 2, width 64, 2 heads of 32, T 32, vocab 97 (odd on purpose)."""
    base = dict(vocab_size=97, sequence_len=32, head_dim=32, aspect_ratio=32)
    base.update(kw)
    return GPTConfig.from_depth(2, preset=preset, **base)


@pytest.mark.parametrize("preset", PRESETS)
def test_from_depth_presets(preset):
    c = GPTConfig.from_depth(4, vocab_size=4096, sequence_len=256, preset=preset)
    assert (c.n_layer, c.n_embd, c.n_head, c.head_dim) == (4, 256, 2, 128)
    assert c.n_kv_head == (1 if preset == "llama" else 2)
    assert GPTConfig.from_depth(4, preset=preset, n_embd=512, n_head=4, n_kv_head=4).n_embd == 512  # overrides
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        GPTConfig.from_depth(4, preset="gpt5")
    with pytest.raises(ValueError):
        GPTConfig(n_embd=256, n_head=2, n_kv_head=3)


@pytest.mark.parametrize("preset", PRESETS + ["ve"])
def test_causality(preset):
    torch.manual_seed(0)
    cfg = tiny("modern", value_embeds=True) if preset == "ve" else tiny(preset)
    model = GPT(cfg).eval()
    with torch.no_grad():  # make the zero-initialised projections non-zero so every path is live
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, cfg.vocab_size, (2, 32))
    logits = model(idx)
    for t in (0, 7, 31):
        changed = idx.clone()
        changed[:, t:] = (changed[:, t:] + 1) % cfg.vocab_size
        new = model(changed)
        assert torch.equal(new[:, :t], logits[:, :t])
        assert not torch.allclose(new[:, t], logits[:, t])


@pytest.mark.parametrize("window, t_q, t_k, h, hkv", [(32, 32, 32, 4, 4), (8, 32, 32, 4, 4), (8, 32, 32, 4, 2),
                                                      (32, 1, 20, 4, 1), (5, 6, 20, 4, 2)])
def test_sdpa_equals_explicit_attention(window, t_q, t_k, h, hkv):
    torch.manual_seed(0)
    q = torch.randn(2, h, t_q, 16)
    k, v = torch.randn(2, hkv, t_k, 16), torch.randn(2, hkv, t_k, 16)
    rep = h // hkv
    expected = attention_reference(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                   attention_mask(t_q, t_k, window))
    torch.testing.assert_close(attend(q, k, v, window), expected, atol=1e-5, rtol=1e-5)


def test_gqa_equals_multihead_with_shared_kv_weights():
    """A GQA model (2 query heads share 1 kv head) equals a plain multi-head model whose k/v weights are
    the GQA weights repeated per group; and with n_kv_head == n_head the GQA path is plain multi-head."""
    torch.manual_seed(0)
    gqa = GPT(tiny(n_kv_head=1)).eval()
    mha = GPT(tiny(n_kv_head=2)).eval()
    with torch.no_grad():
        for p in gqa.parameters():
            p.add_(0.02 * torch.randn_like(p))
        sd = gqa.state_dict()
        for key in list(sd):
            if key.endswith("attn.c_k.weight") or key.endswith("attn.c_v.weight"):
                sd[key] = sd[key].view(1, 32, 64).repeat_interleave(2, 0).reshape(64, 64)
        mha.load_state_dict(sd)
    idx = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(gqa(idx), mha(idx), atol=1e-5, rtol=1e-5)


def test_sliding_window_masks_exactly_the_intended_keys():
    """The gradient of output i with respect to value j is non-zero iff i - window < j <= i."""
    torch.manual_seed(0)
    T, W = 12, 4
    q, k = torch.randn(1, 1, T, 8), torch.randn(1, 1, T, 8)
    v = torch.randn(1, 1, T, 8, requires_grad=True)
    for i in range(T):
        (g,) = torch.autograd.grad(attend(q, k, v, W)[0, 0, i].sum(), v)
        seen = (g[0, 0].abs().sum(-1) > 0).nonzero().flatten().tolist()
        assert seen == list(range(max(0, i - W + 1), i + 1))
    assert window_sizes(GPTConfig(sequence_len=256, n_layer=6)) == [64, 64, 64, 256, 64, 256]
    assert window_sizes(GPTConfig(sequence_len=256, n_layer=3, window_pattern="L")) == [256] * 3


def test_rope_depends_only_on_relative_offset():
    torch.manual_seed(0)
    cos, sin = rope_tables(64, 16, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def dot(m, n):
        qm = apply_rope(q.view(1, 1, 1, 16), cos[m:m + 1], sin[m:m + 1])
        kn = apply_rope(k.view(1, 1, 1, 16), cos[n:n + 1], sin[n:n + 1])
        return (qm * kn).sum().item()

    for m, n in [(5, 2), (10, 10), (3, 9)]:
        for shift in (1, 17, 40):
            assert dot(m, n) == pytest.approx(dot(m + shift, n + shift), abs=1e-4)
    assert dot(5, 2) != pytest.approx(dot(5, 3), abs=1e-3)
    # rotation preserves the norm
    assert apply_rope(q.view(1, 1, 1, 16), cos[7:8], sin[7:8]).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


@pytest.mark.parametrize("preset", PRESETS + ["modern-tied"])
def test_loss_at_init_is_ln_vocab(preset):
    torch.manual_seed(0)
    cfg = (GPTConfig.from_depth(4, vocab_size=4096, sequence_len=64, tie_embeddings=True) if preset == "modern-tied"
           else GPTConfig.from_depth(4, vocab_size=4096, sequence_len=64, preset=preset))
    model = GPT(cfg)
    idx, targets = torch.randint(0, 4096, (4, 64)), torch.randint(0, 4096, (4, 64))
    assert model(idx, targets).item() == pytest.approx(math.log(4096), abs=0.1)
    targets[:, :10] = -1  # ignored positions
    assert model(idx, targets).item() == pytest.approx(math.log(4096), abs=0.1)


def formula_params(c: GPTConfig) -> int:
    """The documented parameter count (docs/adrs/0010-model-presets-and-depth-dial.md)."""
    V, C, L, T, kv = c.padded_vocab_size, c.n_embd, c.n_layer, c.sequence_len, c.n_kv_head * c.head_dim
    attn = C * C + 2 * C * kv + C * C  # c_q, c_k, c_v, c_proj
    mlp = (3 if c.mlp == "swiglu" else 2) * C * c.mlp_hidden
    if c.bias:
        attn += C + 2 * kv + C
        mlp += c.mlp_hidden * (2 if c.mlp == "swiglu" else 1) + C
    norm = {"rmsnorm": 0, "rmsnorm_affine": C, "layernorm": 2 * C}[c.norm]
    block = attn + mlp + 2 * norm
    n = V * C * (1 if c.tie_embeddings else 2) + L * block + norm * (2 if c.embed_norm else 1)
    n += T * C if c.pos_emb == "learned" else 0
    if c.value_embeds:
        n_ve = sum(1 for i in range(L) if i % 2 == (L - 1) % 2)
        n += n_ve * (V * kv + min(32, C) * c.n_kv_head)
    return n


@pytest.mark.parametrize("preset", PRESETS + ["ve"])
@pytest.mark.parametrize("depth", [2, 4, 6])
def test_param_count_formula(preset, depth):
    cfg = (GPTConfig.from_depth(depth, value_embeds=True) if preset == "ve"
           else GPTConfig.from_depth(depth, preset=preset))
    model = GPT(cfg)
    assert model.param_counts()["total"] == formula_params(cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_estimate_flops_matches_torch_flop_counter(preset):
    """Full-context layers: our 6N + 12*H*D*T per token equals what torch counts for forward + backward.
    The counter does not see inside the fused CPU SDPA kernel (it then counts only 6N, which is why
    torch's counter reports ~11% fewer FLOPs than nanochat's estimate in docs/anchors.md), so
    attention runs on the MATH backend here: plain batched matrix products that it does count."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = GPTConfig.from_depth(2, vocab_size=512, sequence_len=64, preset=preset, window_pattern="L")
    model = GPT(cfg)
    B, T = 2, 64
    idx = torch.randint(0, 512, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx).backward()
    measured = counter.get_total_flops() / (B * T)
    assert measured == pytest.approx(model.estimate_flops(), rel=0.01)
    with FlopCounterMode(display=False) as fused:  # the fused kernel: only the 6N matmul part is visible
        model(idx, idx).backward()
    assert fused.get_total_flops() / (B * T) == pytest.approx(6 * model.num_matmul_params(), rel=0.01)


def test_estimate_flops_counts_windows():
    full = GPT(GPTConfig(sequence_len=256, n_layer=4, window_pattern="L"))
    windowed = GPT(GPTConfig(sequence_len=256, n_layer=4, window_pattern="SSSL"))
    h, d = 2, 128
    assert full.estimate_flops() - windowed.estimate_flops() == 3 * 12 * h * d * (256 - 64)


@pytest.mark.parametrize("preset", PRESETS + ["ve"])
def test_every_preset_overfits_one_batch(preset):
    torch.manual_seed(0)
    cfg = tiny("modern", value_embeds=True) if preset == "ve" else tiny(preset)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (4, 33))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.1, (first, loss.item())


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_forward_agrees_with_fp32(preset):
    torch.manual_seed(0)
    cfg = GPTConfig.from_depth(2, vocab_size=512, sequence_len=64, preset=preset)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, 512, (2, 64))
    ref = model(idx)
    model.compute_dtype = torch.bfloat16
    low = model(idx)
    assert low.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32  # fp32 master weights
    # bf16 keeps 8 bits of mantissa: logits agree to ~1e-2 relative; the predicted distribution barely moves.
    assert (low - ref).abs().max().item() < 0.05 * ref.abs().max().item()
    kl = F.kl_div(F.log_softmax(low, -1), F.log_softmax(ref, -1), log_target=True, reduction="batchmean")
    assert kl.item() < 1e-2


@pytest.mark.parametrize("preset", PRESETS + ["ve"])
def test_forward_with_kv_cache_equals_full_forward(preset):
    """The model accepts a KV cache: prefill + one-token steps give the same logits as one full forward."""
    torch.manual_seed(0)
    cfg = tiny("modern", value_embeds=True, window_pattern="SL") if preset == "ve" else tiny(preset)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, cfg.vocab_size, (2, 32))
    full = model(idx)
    cache = KVCache(cfg.n_layer, 2, cfg.n_kv_head, 32, cfg.head_dim)
    parts = [model(idx[:, :20], kv_cache=cache)]
    for t in range(20, 32):
        parts.append(model(idx[:, t:t + 1], kv_cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    assert cache.pos == 32
    with pytest.raises(ValueError, match="overflow|learned positions stop"):
        model(idx[:, :1], kv_cache=cache)


@pytest.mark.parametrize("preset", PRESETS + ["ve"])
def test_meta_device_build_then_init(preset):
    """GPT() fills the fresh memory with NaN before init_weights(), so any parameter the init forgets
    stays NaN and fails here."""
    cfg = GPTConfig.from_depth(2, value_embeds=True) if preset == "ve" else GPTConfig.from_depth(2, preset=preset)
    model = GPT(cfg)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    if preset != "gpt2":
        assert model.blocks[0].attn.c_proj.weight.abs().sum() == 0  # zero-initialised output projections
        assert model.rope_cos.shape == (256 * 8, cfg.head_dim // 2)


@pytest.mark.parametrize("shape", [(1, 1, 384), (8, 1, 384), (2, 3, 5, 128), (4, 16, 64)])
def test_rms_matches_f_rms_norm(shape):
    """Our hand-written RMSNorm (and Norm with a gain) against torch's F.rms_norm."""
    from mini_nanochat.gpt import Norm, rms
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    torch.testing.assert_close(rms(x), F.rms_norm(x, (shape[-1],), eps=1e-6), rtol=1e-5, atol=1e-6)
    norm = Norm(shape[-1], "rmsnorm_affine")
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1]))
    torch.testing.assert_close(norm(x), F.rms_norm(x, (shape[-1],), norm.weight, eps=1e-6), rtol=1e-5, atol=1e-5)
    tiny_x = torch.full(shape, 1e-8)  # eps keeps an all-but-zero row finite, as in torch
    torch.testing.assert_close(rms(tiny_x), F.rms_norm(tiny_x, (shape[-1],), eps=1e-6), rtol=1e-5, atol=1e-6)


def test_padded_vocabulary_rows_never_win():
    """vocab 97 is stored as 128 rows (a multiple of 64); the logits have 97 columns, so a padding id can
    never be predicted, even when its unembedding row is made huge."""
    torch.manual_seed(0)
    cfg = tiny("modern")
    model = GPT(cfg)
    assert cfg.padded_vocab_size == 128 and model.wte.weight.shape[0] == 128 and model.lm_head.weight.shape[0] == 128
    with torch.no_grad():
        model.lm_head.weight[97:] = 100.0
    idx = torch.randint(0, 97, (2, 8))
    logits = model(idx)
    assert logits.shape == (2, 8, 97)
    assert model(idx, idx).isfinite()
    tied = GPT(tiny("gpt2"))  # tied: the padded wte doubles as the unembedding
    assert tied(idx).shape == (2, 8, 97) and tied(idx, idx).isfinite()
