"""Pretraining: LR schedule values, gradient accumulation == one big batch, exact resume (2N steps ==
N + stop + resume + N, bitwise), never overwriting a run, NaN stop keeping the last good checkpoint,
clear checkpoint errors (disk full, corrupt files)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mini_nanochat.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.stages import base_train, tok_train
from mini_nanochat.training import lr_multiplier, muon_momentum


@pytest.fixture(scope="module")
def small_tok(base_dir):
    tok_train.main(["--name", "train-test", "--vocab-size", "512", "--max-chars", "2000000"])
    return "train-test"


def args(run_dir, *extra):
    return ["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--tokenizer", "train-test",
            "--eval-every", "0", "--eval-tokens", "256", "--dtype", "float32", "--warmup-steps", "2",
            "--run-dir", str(run_dir), *extra]


def test_lr_schedule_key_steps():
    assert lr_multiplier(0, 100, 10, 0.5, 0.0) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, 10, 0.5, 0.0) == 1.0
    assert lr_multiplier(50, 100, 10, 0.5, 0.0) == 1.0
    assert lr_multiplier(75, 100, 10, 0.5, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, 10, 0.5, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(90, 100, 10, 0.5, 0.1) == pytest.approx(0.2 + 0.8 * 0.1)
    assert muon_momentum(0) == 0.85 and muon_momentum(150) == pytest.approx(0.90) and muon_momentum(1000) == 0.95


def test_grad_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, vocab_size=97, sequence_len=16, head_dim=32, aspect_ratio=32))
    idx = torch.randint(0, 97, (8, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    model(x, y).backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for k in range(4):
        (model(x[2 * k:2 * k + 2], y[2 * k:2 * k + 2]) / 4).backward()
    for g, p in zip(big, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_resume_is_exact(small_tok, tmp_path):
    full = base_train.main(args(tmp_path / "full", "--num-iterations", "8", "--save-every", "4"))
    half = base_train.main(args(tmp_path / "split", "--num-iterations", "8", "--stop-at", "4"))
    resumed = base_train.main(args(tmp_path / "split", "--num-iterations", "8", "--resume"))
    losses = lambda d: [json.loads(ln)["loss"] for ln in (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                        if "loss" in json.loads(ln)]
    assert losses(tmp_path / "full") == losses(tmp_path / "split") and len(losses(tmp_path / "full")) == 8
    w_full = load_file(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    w_split = load_file(str(latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    assert w_full.keys() == w_split.keys()
    for k in w_full:
        assert torch.equal(w_full[k], w_split[k]), k
    assert full["final_val_bpb"] == resumed["final_val_bpb"] and half["steps"] == 4
    # the run directory holds what the issue promises
    d = tmp_path / "full"
    assert (d / "plots" / "loss.png").is_file() and (d / "samples.txt").read_text().count("--- step") == 1
    assert [p.name for p in sorted((d / "checkpoints").iterdir())] == ["step_000004", "step_000008"]
    meta = json.loads((latest_checkpoint(d) / "meta.json").read_text())
    assert meta["model_config"]["n_layer"] == 1 and len(meta["tokenizer_sha256"]) == 64


def test_existing_run_is_never_overwritten(small_tok, tmp_path):
    base_train.main(args(tmp_path / "r", "--num-iterations", "2"))
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit, match="already holds a run"):
        base_train.main(args(tmp_path / "r", "--num-iterations", "2"))
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    with pytest.raises(SystemExit, match="no checkpoint"):
        base_train.main(args(tmp_path / "empty", "--num-iterations", "2", "--resume"))
    with pytest.raises(SystemExit, match="different model config"):
        base_train.main(args(tmp_path / "r", "--num-iterations", "4", "--resume", "--max-seq-len", "16"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_tok, tmp_path, monkeypatch):
    """From the 6th training step on, the loss is NaN (as after a numerical blow-up): the run stops with a
    clear message and the last checkpoint saved before it is intact and finite."""
    import mini_nanochat.gpt as gpt_module

    real = gpt_module.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        out = real(*a, **k)
        if k.get("reduction", "mean") == "mean":
            calls["n"] += 1
            if calls["n"] > 5:
                return out * float("nan")
        return out

    monkeypatch.setattr(gpt_module.F, "cross_entropy", poisoned)
    with pytest.raises(SystemExit, match="loss became nan at step 5.*step_000004"):
        base_train.main(args(tmp_path / "nan", "--num-iterations", "20", "--save-every", "2"))
    good = latest_checkpoint(tmp_path / "nan")
    assert good.name == "step_000004"
    assert all(torch.isfinite(t).all() for t in load_file(str(good / "model.safetensors")).values())


def test_checkpoint_errors_are_clear(tmp_path, monkeypatch):
    model = GPT(GPTConfig.from_depth(1, vocab_size=64, sequence_len=16))
    save_checkpoint(tmp_path, 1, model, meta={"x": 1})

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="disk is full"):
        save_checkpoint(tmp_path, 2, model)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]  # no half-written dir
    (tmp_path / "checkpoints" / "step_000001" / "optim.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "checkpoints" / "step_000001", model)
    other = GPT(GPTConfig.from_depth(2, vocab_size=64, sequence_len=16))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "checkpoints" / "step_000001", other)


def test_resume_uses_the_flags_given_now(small_tok, tmp_path):
    """A resumed run takes the learning rates of its command line, not the ones saved in the optimizer."""
    base_train.main(args(tmp_path / "a", "--num-iterations", "4", "--stop-at", "2", "--eval-every", "2"))
    base_train.main(args(tmp_path / "b", "--num-iterations", "4", "--stop-at", "2"))
    base_train.main(args(tmp_path / "a", "--num-iterations", "4", "--resume", "--eval-every", "2"))
    base_train.main(args(tmp_path / "b", "--num-iterations", "4", "--resume", "--matrix-lr", "0.5"))
    wa = load_file(str(latest_checkpoint(tmp_path / "a") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert not torch.equal(wa["blocks.0.attn.c_q.weight"], wb["blocks.0.attn.c_q.weight"])
    records = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 2, 4]  # no duplicate record at the resume step
