"""torchrun with 2 CPU processes (gloo): 2 ranks x 1 micro-batch == 1 process x 2 accumulated
micro-batches for both synchronisation modes; every tensor reaching a collective is on the training
device; zero2 shards the optimizer state and gathers it on save; checkpoints move between 2 and 1 ranks;
a rank whose process is killed ends the job quickly with a clear message."""
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
    assert a["bpb"] == pytest.approx(b["bpb"], abs=1e-5)  # evaluation summed over ranks == one process
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


@pytest.mark.parametrize("mode", ["ddp", "zero2"])
def test_every_collective_runs_on_the_training_device(tmp_path, mode):
    """The training step, bits-per-byte evaluation and checkpoint gathers under 2 gloo ranks, with torch's
    default device set to "meta" (see tests/dist_worker.py): every tensor that reaches a collective is on
    the training device (here "cpu"), so none was created without an explicit device. On GPUs such a
    tensor would be on the CPU and NCCL would refuse it."""
    out = tmp_path / "devices.pt"
    r = torchrun([str(HERE / "dist_worker.py"), "--mode", mode, "--check-devices", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    res = torch.load(out, weights_only=True)
    kinds = {name for name, _ in res["seen"]}
    assert {"all_reduce", "broadcast"} <= kinds and ("reduce" in kinds) == (mode == "zero2"), kinds
    assert len(res["seen"]) > 50
    assert {device for _, device in res["seen"]} == {"cpu"}, [s for s in res["seen"] if s[1] != "cpu"][:5]
    assert res["ranks"] == [{"rank": 0}, {"rank": 1}]
    assert res["caught"] and "training device" in res["caught"]  # the check refuses a device-less tensor


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the processes torchrun started (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid != launcher_pid:
            continue
        for item in env:
            if item.startswith(b"LOCAL_RANK="):
                found[int(item.split(b"=", 1)[1])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_ends_the_job_quickly(run_env, tmp_path):
    """Rank 1's process is killed (SIGKILL, as the kernel's OOM killer would) while the job trains: the
    job ends on its own within a bounded time, with a message, instead of hanging; no half-written
    checkpoint is left behind."""
    import signal

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_args(run_dir, "--num-iterations", "100000", "--dist-timeout", "30", "--save-every", "5")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **run_env})
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (run_dir / "checkpoints" / "step_000005").is_dir():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        assert (run_dir / "checkpoints" / "step_000005").is_dir(), "training did not get going"
        pids = _worker_pids(proc.pid)
        assert set(pids) == {0, 1}, pids
        t0 = time.time()
        os.kill(pids[1], signal.SIGKILL)
        text, _ = proc.communicate(timeout=120)
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert elapsed < 90, elapsed
    assert "collective operation failed" in text or "exitcode" in text or "Signal 9" in text, text[-3000:]
    assert not list((run_dir / "checkpoints").glob(".step_*"))
