"""Checkpoints across devices and the library's model loader: a checkpoint whose optimizer state was
saved from a GPU loads on a CPU-only machine; load_model builds a run's model for inference from the
weights alone (the optimizer state is never read) and refuses a mismatched tokenizer clearly."""
from __future__ import annotations

import contextlib

import pytest
import torch

from mini_nanochat.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.optim import MuonAdamW, build_param_groups


@contextlib.contextmanager
def saved_as_if_on_cuda():
    """Make torch.save tag every CPU tensor's storage as "cuda:0", exactly as a tensor saved from a GPU
    is tagged, so that a GPU checkpoint can be produced on a machine without one."""
    import torch.serialization as ser

    entry = (0, lambda storage: "cuda:0" if storage.device.type == "cpu" else None, lambda storage, loc: None)
    ser._package_registry.insert(0, entry)
    try:
        yield
    finally:
        ser._package_registry.remove(entry)


def trained_model_and_optimizer():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, vocab_size=64, sequence_len=16, head_dim=32, aspect_ratio=32))
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.01))
    idx = torch.randint(0, 64, (2, 17))
    model(idx[:, :-1], idx[:, 1:]).backward()
    opt.step()
    return model, opt


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading on a machine without CUDA")
def test_gpu_checkpoint_loads_on_a_cpu_machine(tmp_path):
    model, opt = trained_model_and_optimizer()
    with saved_as_if_on_cuda():
        ck = save_checkpoint(tmp_path, 1, model, opt, loader_state={"x": 1}, meta={"model_config": model.config.to_dict()})
    # the file really is a GPU checkpoint: torch.load without map_location fails here, as it would for a user
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(ck / "optim.pt", weights_only=True)
    fresh_model = GPT(model.config)
    fresh_opt = MuonAdamW(build_param_groups(fresh_model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
                                             scalar_lr=0.01))
    state = load_checkpoint(ck, fresh_model, fresh_opt)
    assert state["step"] == 1 and state["loader"] == {"x": 1}
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)
    moments = [s["exp_avg"] for s in fresh_opt.state.values() if "exp_avg" in s]
    assert moments and all(m.device.type == "cpu" for m in moments)
    for p in opt.state:  # the optimizer state came back equal
        q = dict(zip(model.parameters(), fresh_model.parameters()))[p]
        for k, v in opt.state[p].items():
            assert torch.equal(v, fresh_opt.state[q][k]), k


def test_load_model_reads_weights_only(tmp_path, base_dir):
    from mini_nanochat.stages import tok_train

    tok_train.main(["--name", "ck-test", "--vocab-size", "512", "--max-chars", "500000"])
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, vocab_size=512, sequence_len=16, head_dim=32, aspect_ratio=32))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(tmp_path, 3, model, None, meta={"model_config": model.config.to_dict(), "tokenizer": "ck-test"})
    ck = tmp_path / "checkpoints" / "step_000003"
    (ck / "optim.pt").write_bytes(b"not a torch file")  # never read for inference
    for source in (tmp_path, ck):  # a run directory or one checkpoint
        loaded, tok, meta = load_model(source, "cpu")
        assert not loaded.training and tok.vocab_size == 512 and meta["checkpoint"] == str(ck)
        model.compute_dtype = loaded.compute_dtype  # bf16 on a CPU with native bf16, else fp32 (ADR 0013)
        idx = torch.randint(0, 512, (1, 8))
        torch.testing.assert_close(loaded(idx), model(idx))
    save_checkpoint(tmp_path / "other", 1, model, None, meta={"model_config": model.config.to_dict(), "tokenizer": "default"})
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_model(tmp_path / "other", "cpu")  # "default" has 4096 tokens (or does not exist): refused clearly
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "nothing-here", "cpu")
