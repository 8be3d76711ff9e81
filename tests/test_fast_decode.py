"""The inference side's fast decode (mini_nanochat/fast_decode.py) against the model's own forward: the
row-split product against F.linear, the one-token step in both layouts (growing cache, and static cache
with a mask for CUDA graphs) against `model(idx, kv_cache=...)` for every preset, the static step traced
without a graph break (the property CUDA-graph capture needs, checked on CPU), the Engine's fast and plain
paths giving the same tokens, and, on a GPU only, the CUDA-graph decoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mini_nanochat import fast_decode
from mini_nanochat.engine import Engine
from mini_nanochat.fast_decode import SPLIT_ROWS_MAX, decode_step, row_split_linear, row_split_plan
from mini_nanochat.gpt import GPT, GPTConfig, KVCache

from test_engine import CONFIGS  # the presets and switches every decode test covers (same directory)


def noisy_model(name: str, vocab: int = 97, T: int = 32, device: str = "cpu") -> GPT:
    kw = dict(CONFIGS[name])
    preset = kw.pop("preset", "modern")
    cfg = GPTConfig.from_depth(2, vocab_size=vocab, sequence_len=T, preset=preset, head_dim=32, aspect_ratio=32, **kw)
    torch.manual_seed(0)
    model = GPT(cfg, device=device).eval()
    with torch.no_grad():  # every path live (the zero-initialised projections too)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("out_f, in_f, rows, n", [(6, 4, 1, 2), (256, 256, 1, 2), (1536, 384, 8, 2),
                                                  (4096, 256, 3, 4), (512, 128, 128, 2)])
def test_row_split_linear_equals_f_linear(out_f, in_f, rows, n):
    torch.manual_seed(0)
    w, x = torch.randn(out_f, in_f) / in_f ** 0.5, torch.randn(rows, 1, in_f)  # outputs ~ N(0, 1)
    got = row_split_linear(x, w, n)
    assert got.shape == (rows, 1, out_f) and got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)


def fake_timer(split_time: float, calls: list):
    """A stand-in for fast_decode._time_linear: F.linear (the first of each pair) takes 2.0, row-split
    `split_time`."""
    def timer(fn, reps=5):
        calls.append(fn)
        return 2.0 if len(calls) % 2 == 1 else split_time
    return timer


@pytest.mark.parametrize("split_time, expected", [(1.0, 2), (3.0, 0)])
def test_row_split_is_used_only_where_measured_faster(monkeypatch, split_time, expected):
    """The plan follows the measurement (the timer is replaced by fixed figures here), made once per
    (shapes, rows, threads) and then remembered; row-split output equals F.linear's."""
    calls = []
    monkeypatch.setattr(fast_decode, "_time_linear", fake_timer(split_time, calls))
    monkeypatch.setattr(fast_decode, "_PLANS", {})
    model = noisy_model("modern", vocab=512)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        plan = row_split_plan(model, 3)
        shapes = {tuple(p.shape) for n, p in model.named_parameters() if p.dim() == 2 and "value_embeds" not in n}
        assert set(plan) == shapes and set(plan.values()) == {expected}
        assert len(calls) == 2 * len(shapes)
        assert row_split_plan(model, 3) is plan and len(calls) == 2 * len(shapes)  # remembered
        w, x = model.lm_head.weight, torch.randn(3, 64)
        with torch.no_grad():
            torch.testing.assert_close(fast_decode.linear(x, w, plan=plan), F.linear(x, w), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_row_split_plan_is_empty_where_it_cannot_apply(monkeypatch):
    monkeypatch.setattr(fast_decode, "_time_linear", fake_timer(1.0, []))  # row-split would always win
    monkeypatch.setattr(fast_decode, "_PLANS", {})
    model = noisy_model("modern", vocab=512)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert row_split_plan(model, SPLIT_ROWS_MAX + 1) == {}  # many rows: MKL threads F.linear itself
        model.compute_dtype = torch.bfloat16
        assert row_split_plan(model, 1) == {}  # fp32 only
        model.compute_dtype = torch.float32
        monkeypatch.setattr(fast_decode, "ROW_SPLIT", False)
        assert row_split_plan(model, 1) == {}  # the switch
        monkeypatch.setattr(fast_decode, "ROW_SPLIT", True)
        torch.set_num_threads(1)
        assert row_split_plan(model, 1) == {}  # one core: nothing to split across
        torch.set_num_threads(2)
        odd = noisy_model("modern", vocab=97)  # lm_head has 128 rows; all shapes split in two
        assert all(v == 2 for v in row_split_plan(odd, 1).values())
    finally:
        torch.set_num_threads(threads)


def reference_logits(model: GPT, idx: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits of positions prompt_len-1 .. T-1 from the model's own cached forward (prefill + steps)."""
    cfg = model.config
    cache = KVCache(cfg.n_layer, idx.size(0), cfg.n_kv_head, idx.size(1), cfg.head_dim)
    out = [model(idx[:, :prompt_len], kv_cache=cache)[:, -1]]
    for t in range(prompt_len, idx.size(1)):
        out.append(model(idx[:, t:t + 1], kv_cache=cache)[:, -1])
    return torch.stack(out, 1)


@pytest.mark.parametrize("static", [False, True], ids=["growing-cache", "static-cache"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_step_equals_model_forward(name, static):
    """Both layouts of decode_step give the model's logits, for every preset, past the short windows
    (8 positions at T=32) and with a static cache longer than the sequence (unused positions masked)."""
    model = noisy_model(name)
    cfg = model.config
    torch.manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (3, 28))
    P = 5
    with torch.inference_mode():
        ref = reference_logits(model, idx, P)
        prefill = KVCache(cfg.n_layer, 3, cfg.n_kv_head, P, cfg.head_dim)
        first = model(idx[:, :P], kv_cache=prefill)[:, -1]
        cache = KVCache(cfg.n_layer, 3, cfg.n_kv_head, 32 if static else 28, cfg.head_dim)
        cache.k.fill_(7.0)  # garbage beyond the prompt must never be attended (static: masked)
        cache.v.fill_(-7.0)
        cache.k[:, :, :, :P], cache.v[:, :, :, :P] = prefill.k, prefill.v
        cache.pos = P
        got = [first]
        for t in range(P, idx.size(1)):
            pos = torch.tensor(t) if static else t
            got.append(decode_step(model, idx[:, t], cache, pos))
            cache.advance(1)
    torch.testing.assert_close(torch.stack(got, 1), ref, atol=1e-4, rtol=1e-4)


def test_static_step_traces_without_graph_breaks():
    """CUDA-graph capture needs a step with no host synchronisation and no data-dependent Python control
    flow. torch.compile(fullgraph=True) refuses any graph break, so tracing the static step with it on
    CPU (backend "eager": trace only, nothing is compiled) checks that property without a GPU."""
    torch._dynamo.reset()
    model = noisy_model("modern-ve")
    cfg = model.config
    cache = KVCache(cfg.n_layer, 2, cfg.n_kv_head, 32, cfg.head_dim)
    traced = torch.compile(decode_step, fullgraph=True, dynamic=False, backend="eager")
    idx = torch.tensor([3, 4])
    with torch.inference_mode():
        want = decode_step(model, idx, KVCache(cfg.n_layer, 2, cfg.n_kv_head, 32, cfg.head_dim), torch.tensor(0))
        got = traced(model, idx, cache, torch.tensor(0))
        traced(model, idx, cache, torch.tensor(1))  # another position: the same graph, no retrace needed
    torch.testing.assert_close(got, want)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["modern-windows-gqa", "gpt2"])
def test_engine_fast_and_plain_paths_give_the_same_tokens(name):
    class Tok:
        special_tokens = {"<|bos|>": 0}
        bos_id = 0

    model = noisy_model(name, T=64)
    prompt = [0, 5, 9, 11]
    fast = Engine(model, Tok(), fast=True)
    plain = Engine(model, Tok(), fast=False)
    fast.stop_ids = plain.stop_ids = set()
    a, _ = fast.generate_batch(prompt, num_samples=3, max_tokens=40, temperature=0.0)
    b, _ = plain.generate_batch(prompt, num_samples=3, max_tokens=40, temperature=0.0)
    assert a == b and len(a[0]) == 44
    s1, _ = fast.generate_batch(prompt, num_samples=2, max_tokens=20, temperature=1.0, seed=3)
    s2, _ = plain.generate_batch(prompt, num_samples=2, max_tokens=20, temperature=1.0, seed=3)
    assert s1 == s2  # sampling too: same logits, same generator draws


def test_row_split_switch_does_not_change_the_tokens(monkeypatch):
    """Row-split products (forced on for every shape, 2 threads) and plain F.linear (ROW_SPLIT off) give
    the same greedy tokens."""
    monkeypatch.setattr(fast_decode, "_PLANS", {})
    monkeypatch.setattr(fast_decode, "_time_linear", fake_timer(1.0, []))

    class Tok:
        special_tokens = {"<|bos|>": 0}
        bos_id = 0

    model = noisy_model("modern", vocab=512, T=64)
    engine = Engine(model, Tok())
    engine.stop_ids = set()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        on, _ = engine.generate_batch([0, 1, 2], num_samples=2, max_tokens=30, temperature=0.0)
        assert any(v for plan in fast_decode._PLANS.values() for v in plan.values())  # row-split really ran
        fast_decode.ROW_SPLIT = False
        off, _ = engine.generate_batch([0, 1, 2], num_samples=2, max_tokens=30, temperature=0.0)
    finally:
        fast_decode.ROW_SPLIT = True
        torch.set_num_threads(threads)
    assert on == off


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_decoder_equals_eager(compile):
    from mini_nanochat.fast_decode import GraphedDecoder

    model = noisy_model("modern-windows-gqa", vocab=512, T=64, device="cuda")
    cfg = model.config
    torch.manual_seed(2)
    idx = torch.randint(0, 512, (4, 40), device="cuda")
    with torch.inference_mode():
        dec = GraphedDecoder(model, batch=4, max_len=64, compile=compile)
        eager = KVCache(cfg.n_layer, 4, cfg.n_kv_head, 64, cfg.head_dim, device="cuda")
        for t in range(40):
            want = decode_step(model, idx[:, t], eager, torch.tensor(t, device="cuda"))
            got = dec.step(idx[:, t], t)
            torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
        # the engine uses the graph by default on CUDA and agrees with the plain path
        class Tok:
            special_tokens = {"<|bos|>": 0}
            bos_id = 0
        fast, plain = Engine(model, Tok()), Engine(model, Tok(), fast=False)
        fast.stop_ids = plain.stop_ids = set()
        a, _ = fast.generate_batch([0, 5, 7], num_samples=2, max_tokens=30, temperature=0.0)
        b, _ = plain.generate_batch([0, 5, 7], num_samples=2, max_tokens=30, temperature=0.0)
        assert fast.graph_error is None and fast._graphs
        assert a == b
