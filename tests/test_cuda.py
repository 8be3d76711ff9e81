"""On a CUDA GPU only (skipped elsewhere): base-train end to end with torch.compile (a few steps, an
evaluation, a checkpoint), the checkpoint reloaded for inference on the GPU and on the CPU, and the
engine's CUDA-graph decoding through `chat`. tests/test_fast_decode.py holds the graph-equivalence test."""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_run(base_dir, tmp_path_factory):
    from mini_nanochat.stages import base_train, tok_train

    tok_train.main(["--name", "cuda-test", "--vocab-size", "512", "--max-chars", "2000000"])
    run_dir = tmp_path_factory.mktemp("cuda") / "run"
    summary = base_train.main(["--depth", "2", "--max-seq-len", "64", "--device-batch-size", "4", "--tokenizer",
                               "cuda-test", "--num-iterations", "6", "--eval-every", "3", "--eval-tokens", "2048",
                               "--device", "cuda", "--run-dir", str(run_dir)])  # --compile is the CUDA default
    return run_dir, summary


def test_compiled_training_evaluates_and_saves(cuda_run):
    run_dir, summary = cuda_run
    assert summary["steps"] == 6 and summary["final_val_bpb"] == summary["final_val_bpb"]  # not NaN
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 3, 6]
    meta = json.loads((run_dir / "checkpoints" / "step_000006" / "meta.json").read_text())
    assert meta["train_config"]["compile"] is None  # auto: on for CUDA
    name = torch.cuda.get_device_name()
    from mini_nanochat.common import gpu_peak_flops
    if gpu_peak_flops(name, torch.bfloat16) is not None:
        assert 0 < summary["mfu"] < 1
    else:
        assert summary["mfu"] is None


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_gpu_checkpoint_reloads_on_gpu_and_cpu(cuda_run, device):
    from mini_nanochat.checkpoint import load_model

    run_dir, _ = cuda_run
    model, tok, meta = load_model(run_dir, device)
    assert model.wte.weight.device.type == device
    ids = tok.encode("The Congress shall", prepend=tok.bos_id)
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device))
    assert torch.isfinite(logits).all()


def test_chat_decodes_with_cuda_graphs(cuda_run, capsys):
    from mini_nanochat.stages import chat

    run_dir, _ = cuda_run
    text = chat.main(["--run-dir", str(run_dir), "-p", "The Congress shall", "--max-tokens", "16",
                      "--temperature", "0", "--device", "cuda"])
    assert isinstance(text, str) and len(text) > 0
