"""Optimizers: hand-written AdamW == torch.optim.AdamW; Newton-Schulz against float64 references;
Muon's update has near-equal singular values; parameter groups; a tiny model trains with both."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.optim import MuonAdamW, build_param_groups, newton_schulz


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_equals_torch(wd):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    ref = [p.detach().clone().requires_grad_(True) for p in params]
    ours = MuonAdamW([dict(params=params, kind="adamw", lr=1e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd)])
    theirs = torch.optim.AdamW(ref, lr=1e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd)
    for step in range(10):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        for p, q in zip(params, ref):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def _polar_f64(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def _ns_f64(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The same iteration, in float64, written independently (the reference for the fp32 kernel)."""
    X = G.double()
    t = X.size(0) > X.size(1)
    X = X.T if t else X
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
    return X.T if t else X


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_newton_schulz_matches_float64_and_orthogonalises(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape)
    X = newton_schulz(G)
    torch.testing.assert_close(X.double(), _ns_f64(G), atol=2e-4, rtol=1e-3)  # same iteration, fp32 vs fp64
    s = torch.linalg.svdvals(X.double())
    # The quintic lands singular values in about [0.7, 1.2] - except the very smallest of a square random
    # matrix (~1/n of the largest), which 5 steps cannot lift all the way: 63 of 64 are in range.
    assert (s > 0.6).double().mean() > 0.95 and s.max() < 1.25, s
    # and it points in the direction of the exact polar factor U V^T
    cos = (X.double() * _polar_f64(G)).sum() / (X.double().norm() * _polar_f64(G).norm())
    assert cos > 0.97
    # batched == one at a time
    G2 = torch.randn(3, *shape)
    torch.testing.assert_close(newton_schulz(G2), torch.stack([newton_schulz(g) for g in G2]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (96, 32)])
def test_newton_schulz_in_bf16_stays_close_to_fp32(shape):
    """On GPUs the iterations run in bf16 (as Jordan et al. and nanochat do): 8 mantissa bits. The result
    must stay an approximately orthogonal matrix pointing the same way as the fp32 one."""
    torch.manual_seed(0)
    G = torch.randn(*shape)
    ref = newton_schulz(G).double()
    low = newton_schulz(G, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    low = low.double()
    s = torch.linalg.svdvals(low)
    assert (s > 0.6).double().mean() > 0.95 and s.max() < 1.3, s
    cos = (low * ref).sum() / (low.norm() * ref.norm())
    assert cos > 0.99, cos


def test_newton_schulz_compiles_without_graph_breaks():
    """On CUDA the optimizer runs newton_schulz through torch.compile(fullgraph=True) in bf16
    (optim._orthogonalize). Tracing it the same way on the CPU (backend "eager": trace only) checks that
    it has no graph break, which would make fullgraph compilation fail on the GPU."""
    torch._dynamo.reset()
    traced = torch.compile(newton_schulz, dynamic=False, fullgraph=True, backend="eager")
    G = torch.randn(3, 32, 96)
    torch.testing.assert_close(traced(G, 5, dtype=torch.bfloat16), newton_schulz(G, 5, dtype=torch.bfloat16))
    torch._dynamo.reset()


def test_muon_update_singular_values_nearly_equal():
    torch.manual_seed(0)
    # an ill-conditioned gradient: singular values spanning 4 orders of magnitude
    U, _ = torch.linalg.qr(torch.randn(48, 48))
    V, _ = torch.linalg.qr(torch.randn(48, 48))
    g = U @ torch.diag(torch.logspace(0, -4, 48)) @ V.T
    w = torch.zeros(48, 48, requires_grad=True)
    opt = MuonAdamW([dict(params=[w], kind="muon", lr=1.0, momentum=0.0, nesterov=False, ns_steps=5)])
    w.grad = g
    opt.step()
    s = torch.linalg.svdvals(-w.detach())
    # The 28 directions whose gradient singular values span 1 .. 5e-3 (a 200x range) come out within
    # 1.8x of each other; the weakest directions (below ~3e-3 of the top) are lifted less in 5 steps.
    big = s[:28]
    assert big.max() / big.min() < 1.8 and s.max() < 1.25, s


def test_param_groups_cover_every_parameter_once():
    for preset in ("modern", "gpt2", "llama"):
        model = GPT(GPTConfig.from_depth(2, vocab_size=128, sequence_len=32, preset=preset, value_embeds=preset == "modern"))
        groups = build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.01)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids)) == len(list(model.parameters()))
        muon = [g for g in groups if g["kind"] == "muon"][0]
        assert all(p.dim() == 2 for p in muon["params"])
        names = {g["name"] for g in groups}
        assert {"unembedding", "matrices"} <= names
    with pytest.raises(ValueError):
        MuonAdamW([dict(params=[torch.zeros(3, requires_grad=True)], kind="muon")])


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_tiny_model_overfits_with_both_optimizers(optimizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=97, sequence_len=32, head_dim=32, aspect_ratio=32))
    groups = build_param_groups(model, matrix_lr=0.02 if optimizer == "muon" else 3e-3, embedding_lr=0.3,
                                unembedding_lr=0.01, scalar_lr=0.01, optimizer=optimizer)
    opt = MuonAdamW(groups)
    idx = torch.randint(0, 97, (4, 33))
    for _ in range(150):
        loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2


def test_state_dict_roundtrip_continues_identically():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=97, sequence_len=16, head_dim=32, aspect_ratio=32))
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.01, scalar_lr=0.01))
    idx = torch.randint(0, 97, (2, 17))

    def step(m, o):
        loss = m(idx[:, :-1], idx[:, 1:])
        o.zero_grad()
        loss.backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    model2 = copy.deepcopy(model)
    opt2 = MuonAdamW(build_param_groups(model2, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.01, scalar_lr=0.01))
    # through bytes, as a checkpoint would go (and loadable with weights_only=True: no pickled code)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        step(model, opt)
        step(model2, opt2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
