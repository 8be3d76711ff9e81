"""inspect_model: the attention maps are the model's own, the logit lens ends at the model's logits, the
page renders with every section for every preset, and the `inspect` stage writes it for a run."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mini_nanochat import inspect_model as im
from mini_nanochat.gpt import GPT, GPTConfig

PRESETS = ["modern", "gpt2", "llama"]


def tiny(preset: str, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig.from_depth(2, vocab_size=300, sequence_len=32, preset=preset, head_dim=32, **kw)
    model = GPT(cfg)
    with torch.no_grad():  # a trained-looking model: the modern init zeroes c_proj, which hides bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def tok(sample_2mb):
    from mini_nanochat.tokenizer import Tokenizer

    return Tokenizer.train(sample_2mb[:200], 300)


@pytest.mark.parametrize("preset,kw", [("modern", {}), ("gpt2", {}), ("llama", {}),
                                       ("modern", {"value_embeds": True, "n_kv_head": 1})])
def test_attention_maps_are_the_models_own(preset, kw):
    """probs @ v equals the fused kernel's output in every layer (RoPE, QK-norm, GQA, windows, value
    embeddings included), and the traced forward returns the model's logits unchanged."""
    model = tiny(preset, **kw)
    idx = torch.randint(0, 300, (2, 32))
    check, seen = [], []
    with im.watch_attention(lambda layer, p: seen.append((layer, p.shape)), check=check):
        logits = model(idx)
    assert len(check) == model.config.n_layer and max(check) < 1e-5
    H = model.config.n_head
    assert seen == [(i, (2, H, 32, 32)) for i in range(model.config.n_layer)]
    tr = im.trace(model, idx)
    assert torch.equal(tr.logits, logits) and torch.equal(model(idx), logits)  # the swap is undone
    for p, w in zip(tr.attention, model.windows):
        assert torch.allclose(p.sum(-1), torch.ones(2, H, 32))
        i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        assert (p[:, :, (j > i) | (i - j >= w)] == 0).all()  # causal and sliding window
    if preset == "modern":
        assert min(model.windows) < 32  # a short window was exercised


@pytest.mark.parametrize("preset", PRESETS)
def test_residual_stream_and_logit_lens(preset):
    model = tiny(preset)
    idx = torch.randint(0, 300, (1, 20))
    tr = im.trace(model, idx)
    assert len(tr.residuals) == model.config.n_layer + 1
    # block i maps residual i to residual i + 1 (checked by running the block directly)
    rope = (model.rope_cos[:20], model.rope_sin[:20]) if model.config.pos_emb == "rope" else None
    for i, block in enumerate(model.blocks):
        with torch.no_grad():
            assert torch.allclose(block(tr.residuals[i], rope), tr.residuals[i + 1], atol=1e-6)
    lens = im.logit_lens(model, tr)
    assert lens.shape == (model.config.n_layer + 1, 20, 300)
    assert torch.allclose(lens[-1], torch.softmax(tr.logits[0], -1), atol=1e-6)


def test_token_losses_match_the_models_loss():
    model = tiny("modern")
    ids = torch.randint(0, 300, (33,)).tolist()
    losses = im.token_losses(model, ids)
    with torch.no_grad():
        mean = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert losses.shape == (32,) and math.isclose(losses.mean().item(), mean.item(), rel_tol=1e-5)


def test_pca_matches_torch_pca_lowrank():
    torch.manual_seed(0)
    x = torch.randn(50, 8) @ torch.diag(torch.tensor([5.0, 3, 1, 1, 1, 1, 1, 1]))
    pts, share = im.pca_2d(x)
    _, s, v = torch.pca_lowrank(x, q=8, center=True)
    ref = (x - x.mean(0)) @ v[:, :2]
    assert torch.allclose(pts.abs(), ref.abs(), atol=1e-4)  # equal up to the sign of each axis
    assert share[0] > share[1] > 0 and math.isclose(share[0], (s[0] ** 2 / (s ** 2).sum()).item(), rel_tol=1e-4)


def test_rope_wavelengths_are_the_models_tables():
    cfg = GPTConfig.from_depth(2, head_dim=32)
    model = GPT(cfg)
    w = im.rope_wavelengths(cfg)
    # the angle of pair i at position t is t * 2 pi / wavelength_i: compare with the model's cos table
    t = 7
    assert torch.allclose(torch.cos(t * 2 * math.pi / w), model.rope_cos[t], atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_page_renders_every_section(preset, tok, tmp_path):
    model = tiny(preset)
    text = "The Congress shall have power to lay and collect taxes, duties, imposts and excises. " * 2
    page = im.write_page(model, tok, "To be, or not to be, that is the question:", text, tmp_path)
    html = page.read_text()
    for s in im.SECTIONS:
        assert f'id="{s}"' in html
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted([f"attention_layer{i}.png" for i in range(2)] + ["embeddings_pca.png", "logit_lens.png",
                                                                           "positions.png", "token_loss.png"])
    assert html.count("data:image/png;base64,") == len(pngs)  # every picture inline: the page stands alone
    for p in tmp_path.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_stage_on_a_trained_run(base_dir, tmp_path):
    from mini_nanochat.__main__ import main as cli
    from mini_nanochat.stages import base_train, inspect as inspect_stage, tok_train

    tok_train.main(["--name", "inspect-test", "--vocab-size", "300", "--max-chars", "200000"])
    run_dir = tmp_path / "run"
    base_train.main(["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--tokenizer", "inspect-test",
                     "--num-iterations", "2", "--eval-every", "0", "--eval-tokens", "128", "--run-dir", str(run_dir)])
    out = inspect_stage.main(["--run-dir", str(run_dir), "--prompt", "The state of the Union is"])
    assert out == run_dir / "inspect" / "index.html" and all(f'id="{s}"' in out.read_text() for s in im.SECTIONS)
    assert cli(["inspect", "--run-dir", str(tmp_path / "nothing")]) == 2  # a missing run: one line, exit 2
    assert cli(["inspect", "--run-dir", str(run_dir), "--prompt", ""]) == 2


def test_doctests():
    import doctest

    assert doctest.testmod(im).failed == 0
