"""Inference engine: KV-cache decoding == full recomputation (every preset, sliding windows, GQA),
batched sampling reproducible with a seed and different across samples, top-k / top-p stay inside the
allowed set, the calculator tool path, and the calculator's refusals."""
from __future__ import annotations

import pytest
import torch

from mini_nanochat.engine import MAX_TEMPERATURE, CalculatorError, Engine, calculator, draw, sample_next
from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(sample_2mb):
    return Tokenizer.train(sample_2mb, 512)


def noisy_model(cfg: GPTConfig) -> GPT:
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():  # random weights with every path live, so tokens depend on the whole context
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


CONFIGS = {
    "modern": dict(),
    "modern-windows-gqa": dict(window_pattern="SL", n_kv_head=1),
    "modern-ve": dict(value_embeds=True, window_pattern="SSL"),
    "gpt2": dict(preset="gpt2"),
    "llama": dict(preset="llama"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_decoding_equals_full_recompute(tok, name):
    kw = dict(CONFIGS[name])
    preset = kw.pop("preset", "modern")
    cfg = GPTConfig.from_depth(2, vocab_size=tok.vocab_size, sequence_len=64, preset=preset, head_dim=32,
                               aspect_ratio=32, **kw)
    model = noisy_model(cfg)
    prompt = tok.encode("The Congress shall", prepend=tok.bos_id)
    engine = Engine(model, tok)
    results, _ = engine.generate_batch(prompt, num_samples=1, max_tokens=40, temperature=0.0)
    got = results[0][len(prompt):]
    # reference: greedy decoding that re-runs the full sequence every step, no cache
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(got)):
            logits = model(torch.tensor([ids]))[0, -1]
            ids.append(int(logits.argmax()))
        full = model(torch.tensor([ids]))[0]
    assert got == ids[len(prompt):]
    assert len(got) >= 20  # long enough to cross the short windows (16 positions at T=64)
    # logits: cached single-token steps vs one full forward
    from mini_nanochat.gpt import KVCache
    cache = KVCache(cfg.n_layer, 1, cfg.n_kv_head, len(ids), cfg.head_dim)
    with torch.no_grad():
        steps = [model(torch.tensor([ids[:len(prompt)]]), kv_cache=cache)]
        for t in range(len(prompt), len(ids)):
            steps.append(model(torch.tensor([[ids[t]]]), kv_cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1)[0], full, atol=1e-4, rtol=1e-4)


def test_batched_samples_differ_and_are_reproducible(tok):
    cfg = GPTConfig.from_depth(2, vocab_size=tok.vocab_size, sequence_len=64, head_dim=32, aspect_ratio=32)
    engine = Engine(noisy_model(cfg), tok)
    prompt = tok.encode("Hello", prepend=tok.bos_id)
    a, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=20, temperature=1.0, seed=7)
    b, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=20, temperature=1.0, seed=7)
    c, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=20, temperature=1.0, seed=8)
    assert a == b and a != c
    assert len({tuple(r) for r in a}) > 1  # the samples differ from each other
    g, _ = engine.generate_batch(prompt, num_samples=3, max_tokens=10, temperature=0.0)
    assert g[0] == g[1] == g[2]  # greedy: all samples identical
    steps = list(engine.generate(prompt, num_samples=2, max_tokens=5, temperature=1.0, seed=1))
    assert len(steps) <= 5 and all(len(col) == 2 for col in steps)


@pytest.mark.parametrize("top_k, top_p", [(1, None), (5, None), (None, 0.3), (None, 0.9), (3, 0.5)])
def test_top_k_top_p_never_leave_the_allowed_set(top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(8, 50) * 3
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(logits, -1)
    order = probs.argsort(-1, descending=True)
    for _ in range(200):
        picks = sample_next(logits, gen, temperature=1.0, top_k=top_k, top_p=top_p)
        for row in range(8):
            rank = (order[row] == picks[row]).nonzero().item()
            if top_k is not None:
                assert rank < top_k
            if top_p is not None:
                mass_before = probs[row, order[row, :rank]].sum().item()
                assert mass_before < top_p
    assert torch.equal(sample_next(logits, gen, temperature=0.0), logits.argmax(-1))


def test_draw_matches_the_distribution_and_torch_multinomial():
    """Inverse-CDF draw (ours) against the probabilities and against torch.multinomial: with 20k draws
    per row every frequency must sit within 5 standard errors of its probability; zero-probability
    tokens are never drawn."""
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 12) * 2, -1)
    probs[:, 3] = 0.0  # a masked token (as after top-k / top-p)
    probs = probs / probs.sum(-1, keepdim=True)
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    ours = torch.stack([draw(probs, gen) for _ in range(n)])  # (n, 4)
    ref = torch.multinomial(probs, n, replacement=True, generator=gen).t()  # (n, 4)
    assert ours.dtype == torch.long and ours.shape == (n, 4)
    for row in range(4):
        p = probs[row]
        sigma = (p * (1 - p) / n).sqrt()
        for picks in (ours[:, row], ref[:, row]):
            freq = torch.bincount(picks, minlength=12).float() / n
            assert (freq - p).abs().le(5 * sigma + 1e-9).all(), (freq, p)
        assert not (ours[:, row] == 3).any()
    # a one-hot row always gives its token, and seeds reproduce
    assert draw(torch.eye(5), gen).tolist() == [0, 1, 2, 3, 4]
    a = draw(probs, torch.Generator().manual_seed(7))
    assert torch.equal(a, draw(probs, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=-0.5), "temperature"), (dict(temperature=MAX_TEMPERATURE * 1.01), "temperature"),
    (dict(temperature="0.6"), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=float("nan")), "top_p"),
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=-3), "max_tokens"),
    (dict(num_samples=0), "num_samples"), (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"),
])
def test_bad_sampling_arguments_raise_valueerror_before_any_work(tok, kwargs, message):
    """Issue #12: temperature=nan used to reach the sampler and come back as an id outside the vocabulary.
    Every argument is checked up front, with the argument's name in the message."""
    class Untouchable(torch.nn.Module):  # fails the test if generate() runs the model before refusing
        def __init__(self, real):
            super().__init__()
            self.config, self.wte, self.compute_dtype = real.config, real.wte, real.compute_dtype

        def forward(self, *a, **k):
            raise AssertionError("the model ran before the arguments were checked")

    cfg = GPTConfig.from_depth(1, vocab_size=tok.vocab_size, sequence_len=32, head_dim=32, aspect_ratio=32)
    engine = Engine(Untouchable(GPT(cfg)), tok, fast=False)
    with pytest.raises(ValueError, match=message):
        list(engine.generate([tok.bos_id], **{"max_tokens": 4, **kwargs}))
    sampler_kwargs = {k: v for k, v in kwargs.items() if k in ("temperature", "top_k", "top_p")}
    if sampler_kwargs:  # sample_next checks its own arguments too (it is public)
        with pytest.raises(ValueError, match=message):
            sample_next(torch.zeros(1, 5), torch.Generator(), **sampler_kwargs)


def test_sampling_argument_boundaries_are_accepted():
    logits = torch.randn(2, 7)
    for kw in (dict(temperature=0), dict(temperature=MAX_TEMPERATURE), dict(top_k=0), dict(top_k=100),
               dict(top_p=1.0), dict(top_p=1e-9), dict(temperature=1e-40)):
        ids = sample_next(logits, torch.Generator().manual_seed(0), **kw)
        assert ids.shape == (2,) and (ids >= 0).all() and (ids < 7).all(), kw


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, None, None), (1.0, None, None), (0.7, 3, None),
                                                      (1.0, None, 0.9), (2.0, 5, 0.5), (1e-40, None, None)])
def test_broken_logits_never_give_an_out_of_vocabulary_id(temperature, top_k, top_p):
    """Rows with a NaN, a +inf, or nothing but -inf have no distribution: they get the fallback id
    (ADR 0024); healthy rows in the same batch are sampled as usual. Before issue #12, draw() returned V
    (one past the vocabulary) for such rows, and the next embedding lookup crashed."""
    nan, inf = float("nan"), float("inf")
    V, fallback = 6, 4
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],          # healthy
                           [nan] * V,                                # a broken forward pass: all NaN
                           [0.0, nan, 2.0, 3.0, 4.0, 5.0],           # one NaN
                           [0.0, inf, 2.0, 3.0, 4.0, 5.0],           # +inf
                           [-inf] * V,                               # nothing possible
                           [-inf, -inf, 1.0, -inf, -inf, -inf]])     # -inf entries are fine: only id 2 possible
    for seed in range(20):
        ids = sample_next(logits, torch.Generator().manual_seed(seed), temperature, top_k, top_p, fallback=fallback)
        assert ids.tolist()[1:5] == [fallback] * 4
        assert 0 <= ids[0] < V and ids[5] == 2
        if temperature < 1e-30:  # logits / T overflows: the limit T -> 0 is greedy
            assert ids[0] == 5


def test_huge_logits_and_tiny_temperatures_stay_finite():
    """Finite logits that overflow once divided by the temperature (3e38 / 0.5 = inf, which made the
    probabilities NaN) and temperatures below what float32 can divide by (1e-40, 1e-300) still give ids
    in the vocabulary: the best token, the limit of a vanishing temperature."""
    logits = torch.tensor([[3e38, 1e38, -3e38, 0.0], [1.0, 2.0, 3.0, -1.0]])
    for temperature in (0.5, 1e-30, 1e-40, 1e-300):
        for seed in range(10):
            ids = sample_next(logits, torch.Generator().manual_seed(seed), temperature=temperature)
            assert ids[0] == 0 and 0 <= ids[1] < 4
            if temperature < 1e-20:
                assert ids[1] == 2


class NanAfter(torch.nn.Module):
    """A stand-in model whose logits are NaN from forward call `start` on (0 = the prefill): a numerically
    broken model, e.g. an fp16 overflow that appears at some position."""

    def __init__(self, real: GPT, start: int):
        super().__init__()
        self.real, self.start, self.config = real, start, real.config
        self.wte, self.compute_dtype = real.wte, real.compute_dtype
        self.calls = 0

    def forward(self, idx, targets=None, kv_cache=None):
        out = self.real(idx, kv_cache=kv_cache)
        self.calls += 1
        return torch.full_like(out, float("nan")) if self.calls > self.start else out


@pytest.mark.parametrize("fast", [True, False])
def test_engine_stops_samples_whose_logits_are_nan(tok, fast):
    """A model whose weights are NaN: every sample ends at once with the engine's stop token, flagged in
    last_broken, and generate_batch returns the prompt alone (the stop token is dropped). Both decode
    paths (fast_decode's and the model's own forward)."""
    cfg = GPTConfig.from_depth(2, vocab_size=tok.vocab_size, sequence_len=64, head_dim=32, aspect_ratio=32)
    model = noisy_model(cfg)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    engine = Engine(model, tok, fast=fast)
    prompt = tok.encode("Hello", prepend=tok.bos_id)
    for temperature in (0.0, 0.8):
        results, masks = engine.generate_batch(prompt, num_samples=3, max_tokens=10, temperature=temperature,
                                               top_k=20)
        assert results == [prompt] * 3 and masks == [[0] * len(prompt)] * 3
        assert engine.last_tokens == [[engine.broken_stop]] * 3 and engine.last_broken == [True] * 3


def test_engine_keeps_the_text_before_logits_turn_nan(tok):
    """NaN logits from the 4th step on: the first 3 tokens stand, then the sample stops and is flagged;
    every id stays inside the vocabulary. A healthy run is not flagged."""
    cfg = GPTConfig.from_depth(2, vocab_size=tok.vocab_size, sequence_len=64, head_dim=32, aspect_ratio=32)
    real = noisy_model(cfg)
    prompt = tok.encode("Hello", prepend=tok.bos_id)
    healthy = Engine(real, tok, fast=False)
    ref, _ = healthy.generate_batch(prompt, num_samples=2, max_tokens=12, temperature=1.0, seed=3)
    assert healthy.last_broken == [False, False]
    broken = Engine(NanAfter(real, start=3), tok, fast=False)
    got, _ = broken.generate_batch(prompt, num_samples=2, max_tokens=12, temperature=1.0, seed=3)
    for g, r, toks in zip(got, ref, broken.last_tokens):
        assert len(r) > len(prompt) + 3  # the healthy run went on (so the stop below is the NaN's doing)
        assert g == r[:len(prompt) + 3]  # the same seed gives the same first 3 tokens
        assert all(0 <= t < tok.vocab_size for t in toks)
    assert broken.last_broken == [True, True]


class ScriptedModel(torch.nn.Module):
    """A stand-in model that writes a fixed script (a calculator call), then whatever follows the
    forced tool output is checked: it reads back what the engine injected."""

    def __init__(self, real: GPT, script: list[int]):
        super().__init__()
        self.real, self.script, self.config = real, script, real.config
        self.wte, self.compute_dtype = real.wte, real.compute_dtype
        self.seen: list[list[int]] = []

    def forward(self, idx, targets=None, kv_cache=None):
        self.seen.append(idx[0].tolist())
        out = self.real(idx, kv_cache=kv_cache)
        step = len(self.seen) - 1  # 0 = prefill
        nxt = self.script[step] if step < len(self.script) else self.script[-1]
        logits = torch.full_like(out[:, -1:], -1e9)
        logits[..., nxt] = 1e9
        return torch.cat([out[:, :-1], logits], 1)


def test_tool_call_injects_calculator_output(tok):
    cfg = GPTConfig.from_depth(2, vocab_size=tok.vocab_size, sequence_len=128, head_dim=32, aspect_ratio=32)
    sp = tok.encode_special
    call = tok.encode("12*34")
    after = tok.encode(" done")
    script = [sp("python_start"), *call, sp("python_end")]
    n_out = len([sp("output_start"), *tok.encode("408"), sp("output_end")])
    script += [0] * n_out + after + [sp("assistant_end")]  # while output is forced, the script is ignored
    model = ScriptedModel(GPT(cfg), script)
    engine = Engine(model, tok, fast=False)  # the scripted forward replaces the model's: the plain decode path
    prompt = tok.render_for_completion([{"role": "user", "content": "what is 12*34?"}])
    results, masks = engine.generate_batch(prompt, num_samples=1, max_tokens=60, temperature=0.0)
    completion, mask = results[0][len(prompt):], masks[0][len(prompt):]
    expected_out = [sp("output_start"), *tok.encode("408"), sp("output_end")]
    k = len(call) + 2
    assert completion[:k] == [sp("python_start"), *call, sp("python_end")] and mask[:k] == [1] * k
    assert completion[k:k + n_out] == expected_out and mask[k:k + n_out] == [0] * n_out  # injected, not sampled
    assert completion[k + n_out:] == after and mask[k + n_out:] == [1] * len(after)
    # the model was fed the injected tokens (they are in its context)
    fed = [t for s in model.seen[1:] for t in s]
    assert expected_out[1] in fed
    # a bad expression injects an error message instead of crashing
    bad = ScriptedModel(GPT(cfg), [sp("python_start"), *tok.encode("__import__('os')"), sp("python_end"),
                                    sp("assistant_end")])
    r, _ = Engine(bad, tok, fast=False).generate_batch(prompt, max_tokens=60, temperature=0.0)
    assert "error: dunder" in tok.decode(r[0][len(prompt):])


@pytest.mark.parametrize("expr, value", [("1+2*3", "7"), ("2**10", "1024"), ("7/2", "3.5"), ("-(3-5)", "2"),
                                         ("'strawberry'.count('r')", "3"), ("len('hello')", "5"),
                                         ("'ab'*3", "ababab"), ("'Hello'.upper()", "HELLO"), ("'hello'[1:3]", "el"),
                                         ("max(3, 9, 4)", "9"), ("round(3.14159, 2)", "3.14"),
                                         # depth counts nesting, not length: a flat sum is one level
                                         ("+".join(["1"] * 41), "41"), ("1+" * 499 + "1", "500"),
                                         ("1-2+3*4-5", "6"), ("2**3**2", "512"), ("(2**3)**2", "64"),
                                         ("-" * 40 + "1", "1"), ("(" * 40 + "1" + ")" * 40, "1"),
                                         ("'a'" + ".upper().lower()" * 20, "a"),
                                         ("'" + "(" * 50 + "'.count('(')", "50"),  # brackets in a string do not nest
                                         ("'abc'[::-1]", "cba"), ("'a b c'.split(' ', 1)", "['a', 'b c']"),
                                         ("('xx').replace('', '-')", "-x-x-"), ("'abcabc'.find('c', 3)", "5")])
def test_calculator_computes(expr, value):
    assert calculator(expr) == value


@pytest.mark.parametrize("attack, message", [
    ("__import__('os').system('ls')", "dunder"),
    ("().__class__.__bases__[0].__subclasses__()", "dunder"),
    ("'a'.__class__", "dunder"),
    ("open('/etc/passwd').read()", "may be called"),
    ("exec('print(1)')", "may be called"),
    ("'abc'.format_map", "attribute access"),
    ("x", "unknown name"),
    ("[i for i in range(10**9)]", "not allowed"),
    ("lambda: 1", "not allowed"),
    ("9**9**9", "exponent too large"),
    ("2**100000", "exponent too large"),
    ("'a'*10**7", "repetition"),
    ("-" * 100 + "1", "nested deeper"),
    ("(" * 60 + "1" + "+1)" * 60, "nested deeper"),
    # 41 levels of nesting, each way there is to nest (a flat 1+1+... of any length is fine: test_calculator_computes)
    ("(" * 41 + "1" + ")" * 41, "nested deeper"),
    ("1+(" * 41 + "1" + ")" * 41, "nested deeper"),
    ("-" * 41 + "1", "nested deeper"),
    ("'a'" + ".upper()" * 41, "nested deeper"),
    ("'abc'" + "[0]" * 41, "nested deeper"),
    ("2**" * 41 + "1", "nested deeper"),
    ("'x' * 5000 + 'y' * 6000", "longer than"),
    ("1/0", "ZeroDivisionError"),
    ("round(1, -10**9)", "ndigits"),
    ("'%999999999d' % 1", "printf"),
    ("'a b'.split() * 10**9", "repetition"),
    ("('x'*10000).replace('x', 'y'*10000)", "replace"),
    ("import os", "not a valid expression"),
    ("1" * 2000, "longer than 1000"),
    ("1\x00", "not a valid expression"),
    # issue #12: each of these escaped as OverflowError / ValueError, or returned a complex number
    ("round(1e309)", "not finite"),
    ("1e309", "not finite"),
    ("round(1e308 * 10)", "not finite"),
    ("'x'.replace('x', 'y', 10**100)", "within"),
    ("'a b'.split('a', 10**100)", "within"),
    ("'abc'[::0]", "step cannot be zero"),
    ("(-8)**0.5", "complex"),
    ("abs((-1)**0.5)", "complex"),
    # every other integer that Python uses as a position or a count, huge
    ("'abc'[10**100]", "index must be within"),
    ("'abc'[:10**100]", "slice stop"),
    ("'abc'[-10**100:]", "slice start"),
    ("'abc'[::10**100]", "slice step"),
    ("'abc'.find('a', 10**100)", "within"),
    ("'abc'.count('a', 0, -10**100)", "within"),
    ("'abc'.index('a', 10**100)", "within"),
    ("'abc'.startswith('a', 10**100)", "within"),
    ("'abc'.endswith('c', 0, 10**100)", "within"),
    ("round(1.5, 10**100)", "ndigits"),
    ("round(1.5, 2.0)", "ndigits"),
    # repetition and the things built by it (min/max scan only lists that passed these bounds)
    ("'ab' * 10**100", "repetition"),
    ("'ab' * 2.5", "integer count"),
    ("('a'*5000).split('b') * 3", "repetition"),  # 3 items, but 15,000 characters
    ("max(('a'*5000).split('a') * 2)", "repetition"),
    ("min('x'*10001)", "repetition"),
    ("max(('a'*10000).split('a'))", "list result too large"),
    ("('x'*5000).replace('', 'y')", "replace"),  # 10,001 insertions: the exact length is checked first
])
def test_calculator_rejects_attacks_clearly(attack, message):
    with pytest.raises(CalculatorError, match=message):
        calculator(attack)


def test_calculator_only_ever_raises_calculator_error():
    """A small exhaustive fuzz: every allowed operation applied to extreme values (huge, negative, zero,
    non-finite, empty, long) returns text or raises CalculatorError, and quickly. Before issue #12,
    OverflowError, ValueError and complex results came out of this."""
    import itertools
    import time

    values = ["0", "-1", "10**100", "-10**100", "10**999", "0.5", "1e308", "(-8)", "''", "'a b'", "('x'*9999)"]
    templates = ["{a}[{b}]", "{a}[{b}:{c}:{b}]", "{a}.replace({b}, {c}, {a})", "{a}.split({b}, {c})",
                 "{a}.find({b}, {c}, {a})", "{a}.count({b}, {c})", "round({a}, {b})", "round({a})", "{a}**{b}",
                 "{a}*{b}", "{a}/{b}", "{a}//{b}", "{a}%{b}", "min({a}, {b})", "max({a}*{b})", "abs({a}**{b})",
                 "len({a}*{b})", "-{a}**{c}"]
    slowest = 0.0
    for template in templates:
        for a, b, c in itertools.product(values, repeat=3):
            expr = template.format(a=a, b=b, c=c)
            t = time.perf_counter()
            try:
                assert isinstance(calculator(expr), str)
            except CalculatorError:
                pass
            slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 0.5, slowest
