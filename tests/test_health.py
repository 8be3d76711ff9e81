"""health.py: the metrics against direct computations, the detectors on injected faults and on a normal
run, and the health records that base-train writes."""
from __future__ import annotations

import doctest
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mini_nanochat import health
from mini_nanochat.gpt import GPT, GPTConfig, attention_mask, rms
from mini_nanochat.optim import MuonAdamW, build_param_groups


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=128, sequence_len=16, head_dim=32, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_doctests():
    assert doctest.testmod(health).failed == 0


def test_grad_norm_and_update_ratios_match_a_direct_computation():
    model = tiny()
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.01))
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    x = torch.randint(0, 128, (2, 16))
    model(x, x).backward()
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=float("inf"))  # returns the total norm
    assert math.isclose(health.grad_norm(model.parameters()).item(), expected.item(), rel_tol=1e-5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    snap = health.snapshot(opt)
    opt.step()
    ratios = health.update_ratios(opt, snap)
    assert set(ratios) == {"unembedding", "embedding", "scalars", "matrices"} - ({"scalars"} if not any(
        g["name"] == "scalars" and g["params"] for g in opt.param_groups) else set())
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        if not g["params"]:
            continue
        d = math.sqrt(sum((p.detach() - before[names[id(p)]]).square().sum().item() for p in g["params"]))
        w = math.sqrt(sum(before[names[id(p)]].square().sum().item() for p in g["params"]))
        assert math.isclose(ratios[g["name"]], d / w, rel_tol=1e-4)


def test_activation_stats_match_a_direct_computation():
    """Recompute every number with the textbook attention (materialised probabilities) and the blocks
    run one by one, without the hooks health.py uses."""
    model = tiny(n_kv_head=1)  # GQA too (2 query heads share 1 key head)
    model.eval()
    idx = torch.randint(0, 128, (2, 16))
    stats = health.activation_stats(model, idx)
    x = model.embed_norm(model.wte(idx))
    rope = (model.rope_cos[:16], model.rope_sin[:16])
    ents, acts, gains = [], [], []
    for block in model.blocks:
        a = block.attn
        h = block.norm1(x)
        B, T, C = h.shape
        q = a.c_q(h).view(B, T, a.n_head, a.head_dim).transpose(1, 2)
        k = a.c_k(h).view(B, T, a.n_kv_head, a.head_dim).transpose(1, 2)
        from mini_nanochat.gpt import apply_rope

        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k = rms(q) * a.qk_scale, rms(k) * a.qk_scale
        k = k.repeat_interleave(a.n_head // a.n_kv_head, dim=1)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(a.head_dim)
        p = torch.softmax(s.masked_fill(~attention_mask(T, T, a.window), float("-inf")), -1)
        ents.append((-(p * torch.log(p.clamp_min(1e-30))).sum(-1)).mean().item())
        with torch.no_grad():
            y = block(x, rope)
        acts.append(y.square().mean().sqrt().item())
        gains.append(((y - x).square().mean().sqrt() / x.square().mean().sqrt()).item())
        x = y
    assert stats["attn_entropy"] == pytest.approx(ents, rel=1e-4)
    assert stats["act_rms"] == pytest.approx(acts, rel=1e-5) and stats["layer_gain"] == pytest.approx(gains, rel=1e-4)
    with torch.no_grad():
        assert stats["max_logit"] == pytest.approx(model(idx).max().item())
    assert all(0 < e <= math.log(16) for e in stats["attn_entropy"])


def test_detectors_fire_on_injected_faults():
    losses = [8.3 - 0.04 * i + 0.05 * math.sin(i) for i in range(60)]  # a normal, noisy, falling curve
    assert all(health.loss_spike(losses[max(0, i - 50):i], losses[i]) is None for i in range(len(losses)))
    assert health.loss_spike(losses[-50:], 2.5 * losses[-1]).startswith("loss spike")
    assert health.loss_spike(losses, float("nan")) == "loss is nan"
    norms = [1.0 / (1 + 0.1 * i) for i in range(60)]
    assert all(health.grad_explosion(norms[max(0, i - 50):i], norms[i]) is None for i in range(60))
    assert health.grad_explosion(norms[-50:], 40.0).startswith("grad norm exploded")
    assert health.grad_explosion(norms, float("inf")) == "grad norm is inf"
    assert health.attention_collapse([2.0, 1.5]) == [] and health.dead_layers([0.2, 0.4]) == []
    assert health.exploding_layers([0.5, 2.0]) == [] and health.exploding_layers([30.0])[0].startswith("layer 0")
    assert all(health.loss_above_uniform(x, 4096) is None for x in losses)  # ln 4096 = 8.32
    assert health.loss_above_uniform(9.7, 4096).startswith("loss 9.70 is above ln V")


def test_monitor_reports_a_spike_once_with_its_step():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = health.HealthMonitor(model, opt, probe=None, every=0, quiet=5)
    said = []
    for step in range(1, 41):
        loss = 20.0 if step in (30, 31) else 4.0 - 0.01 * step  # a spike at 30 lasting two steps
        said += mon.after_update(step, loss)[1]
    assert said == ["health: step 30: loss spike 20.00 vs running median 3.85",  # 31 is within `quiet`
                    "health: step 30: loss 20.00 is above ln V = 4.85: worse than a uniform guess"]


def test_a_dead_layer_and_a_collapsed_attention_are_named():
    model = tiny()
    with torch.no_grad():
        for m in model.blocks[1].modules():  # zero block 1 (as tools/broken_runs.py --zero-layer 1)
            if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 2:
                m.weight.zero_()
        model.blocks[0].attn.qk_scale = 1000.0  # q.k logits huge: each query looks at one key
    stats = health.activation_stats(model, torch.randint(0, 128, (2, 16)))
    assert stats["layer_gain"][1] == 0.0 and stats["layer_gain"][0] > 1e-3
    assert health.dead_layers(stats["layer_gain"]) == ["layer 1 is dead (adds 0 to the residual stream)"]
    assert [ln.split(" (")[0] for ln in health.attention_collapse(stats["attn_entropy"])] == ["layer 0 attention collapsed"]


def test_base_train_logs_health_and_keeps_its_keys(base_dir, tmp_path, capsys):
    """A short normal run: health records every 5 steps, grad norm every step, the existing keys as they
    were, and no alert."""
    from mini_nanochat.stages import base_train, tok_train

    tok_train.main(["--name", "health-test", "--vocab-size", "300", "--max-chars", "200000"])
    run_dir = tmp_path / "run"
    base_train.main(["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "4", "--tokenizer", "health-test",
                     "--num-iterations", "30", "--warmup-steps", "5", "--eval-every", "0", "--eval-tokens", "256",
                     "--health-every", "5", "--run-dir", str(run_dir)])
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert len(train) == 30
    for r in train:
        assert {"step", "loss", "lr_mult", "tok_per_s", "mfu", "dt", "health"} <= set(r)
        assert r["health"]["grad_norm"] > 0
        full = r["step"] % 5 == 0
        assert ("attn_entropy" in r["health"]) == full and ("update_ratio" in r["health"]) == full
    h = train[-1]["health"]
    assert len(h["act_rms"]) == len(h["attn_entropy"]) == 1 and set(h["update_ratio"]) >= {"matrices", "embedding"}
    assert [s for s, _ in health.read_health(run_dir / "metrics.jsonl")] == list(range(1, 31))
    assert health.plot_health(run_dir / "metrics.jsonl", tmp_path / "health.png")  # the report's picture
    assert (tmp_path / "health.png").read_bytes()[:4] == b"\x89PNG"
    assert not health.plot_health(tmp_path / "none.jsonl", tmp_path / "none.png")  # no records: no picture
    out = capsys.readouterr()
    assert "health:" not in out.out + out.err  # a normal run raises no alarm


def test_base_train_prints_an_alert_with_its_step(base_dir, tmp_path, capsys, monkeypatch):
    """The alert of a detector reaches the log (the detector itself is tested above): inject one."""
    from mini_nanochat.stages import base_train, tok_train

    tok_train.main(["--name", "health-test", "--vocab-size", "300", "--max-chars", "200000"])
    monkeypatch.setattr(health, "loss_spike", lambda history, loss, ratio: "injected spike")
    base_train.main(["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--tokenizer", "health-test",
                     "--num-iterations", "2", "--eval-every", "0", "--eval-tokens", "128", "--run-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert "health: step 1: injected spike" in out.out + out.err
