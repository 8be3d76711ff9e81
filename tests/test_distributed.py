"""torchrun with 2 CPU processes (gloo): 2 ranks x 1 micro-batch == 1 process x 2 accumulated
micro-batches for both synchronisation modes; zero2 shards the optimizer state and gathers it on save;
checkpoints move between 2 and 1 ranks; a rank that dies ends the job quickly with a clear message."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def torchrun(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)


@pytest.mark.parametrize("mode", ["ddp", "zero2"])
def test_two_processes_equal_one_process_with_accumulation(tmp_path, mode):
    ref = tmp_path / "ref.pt"
    r = subprocess.run([sys.executable, str(HERE / "dist_worker.py"), "--mode", mode, "--out", str(ref)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    out = tmp_path / "dist.pt"
    r = torchrun([str(HERE / "dist_worker.py"), "--mode", mode, "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(ref, weights_only=True), torch.load(out, weights_only=True)
    assert a["losses"] == pytest.approx(b["losses"], abs=1e-5)
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], atol=1e-5, rtol=1e-5)
    assert b["n_state"] == b["n_params"]  # the gathered optimizer state covers every parameter
    if mode == "zero2":
        assert 0 < b["n_local_state"] < b["n_params"]  # ... while rank 0 holds only its own share
    else:
        assert b["n_local_state"] == b["n_params"]


@pytest.fixture(scope="module")
def run_env(base_dir):
    from mini_nanochat.stages import tok_train

    tok_train.main(["--name", "dist-test", "--vocab-size", "512", "--max-chars", "2000000"])
    return {"MINI_NANOCHAT_HOME": str(base_dir)}


def train_args(run_dir, *extra):
    return ["-m", "mini_nanochat", "base-train", "--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2",
            "--tokenizer", "dist-test", "--eval-every", "0", "--eval-tokens", "256", "--dtype", "float32",
            "--run-dir", str(run_dir), *extra]


@pytest.mark.parametrize("mode", ["ddp", "zero2"])
def test_checkpoints_move_between_2_and_1_ranks(run_env, tmp_path, mode):
    d = tmp_path / "run"
    r = torchrun(train_args(d, "--num-iterations", "6", "--stop-at", "2", "--sync", mode), env=run_env)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(d / "checkpoints" / "step_000002" / "optim.pt", weights_only=True)
    assert state["loader"]["world_size"] == 2 and len(state["loader"]["ranks"]) == 2
    assert len(state["optimizer"]["state"]) == sum(1 for _ in state["optimizer"]["state"])  # gathered, not sharded
    # 2 ranks -> 1 process
    r = subprocess.run([sys.executable, *train_args(d, "--num-iterations", "6", "--stop-at", "4", "--resume")],
                       capture_output=True, text=True, env={**os.environ, **run_env})
    assert r.returncode == 0 and "resuming with 1" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    # and back: 1 process -> 2 ranks, to the end
    r = torchrun(train_args(d, "--num-iterations", "6", "--resume", "--sync", mode), env=run_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done: 6 of 6 steps" in r.stdout


def test_a_dead_rank_ends_the_job_quickly(run_env, tmp_path):
    t0 = time.time()
    r = torchrun(train_args(tmp_path / "run", "--num-iterations", "50", "--dist-timeout", "30"),
                 env={**run_env, "MINI_NANOCHAT_TEST_DIE_AT": "1:3"}, timeout=240)
    elapsed = time.time() - t0
    assert r.returncode != 0
    assert elapsed < 120, elapsed
    text = r.stdout + r.stderr
    assert "collective operation failed" in text or "exitcode" in text, text[-3000:]
    assert not list((tmp_path / "run" / "checkpoints").glob(".step_*")) if (tmp_path / "run" / "checkpoints").exists() else True
