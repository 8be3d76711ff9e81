"""Faults and mistakes around training (issue #12): a run killed before its first checkpoint restarts; a
full disk while saving keeps the last good checkpoint and cleans up; temp folders of dead processes are
removed; short-context runs save before sampling; a corrupt newest checkpoint is skipped on resume; a
half-written metrics line does not block resume; every flag mistake is one line with exit code 2; a batch
that cannot fit is refused up front."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mini_nanochat import __main__ as cli
from mini_nanochat.checkpoint import CheckpointError, latest_checkpoint, load_model, save_checkpoint, verify_checkpoint
from mini_nanochat.gpt import GPT, GPTConfig
from mini_nanochat.stages import base_train, tok_train


@pytest.fixture(scope="module")
def tok(base_dir):
    tok_train.main(["--name", "faults-test", "--vocab-size", "512", "--max-chars", "2000000"])
    return "faults-test"


def args(run_dir, *extra):
    return ["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--tokenizer", "faults-test",
            "--eval-every", "0", "--eval-tokens", "256", "--dtype", "float32", "--warmup-steps", "2",
            "--run-dir", str(run_dir), *extra]


def test_run_killed_before_its_first_checkpoint_starts_again(tok, base_dir, tmp_path):
    """kill -9 while training, before any checkpoint: the same command then trains from step 0 instead of
    refusing ("already holds a run") or failing ("no checkpoint"), with or without --resume."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mini_nanochat", "base-train", *args(run_dir, "--num-iterations", "100000")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MINI_NANOCHAT_HOME": str(base_dir)})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and '"loss"' in metrics.read_text():
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (run_dir / "metrics.jsonl").exists() and latest_checkpoint(run_dir) is None
    summary = base_train.main(args(run_dir, "--num-iterations", "3", "--resume"))
    assert summary["steps"] == 3 and latest_checkpoint(run_dir).name == "step_000003"
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # the dead run's records are gone


def test_full_disk_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError, not OSError: still a clear CheckpointError naming
    the cause, no temp folder left, the previous checkpoint intact."""
    import shutil as shutil_module

    model = GPT(GPTConfig.from_depth(1, vocab_size=64, sequence_len=16))
    save_checkpoint(tmp_path, 1, model, meta={"x": 1})

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    real_usage = shutil_module.disk_usage
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: real_usage(p)._replace(free=1 << 20))
    with pytest.raises(CheckpointError, match="disk is full"):
        save_checkpoint(tmp_path, 2, model, meta={"x": 2})
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]
    verify_checkpoint(tmp_path / "checkpoints" / "step_000001")


def test_temp_folders_of_dead_processes_are_removed_at_the_next_save(tmp_path):
    model = GPT(GPTConfig.from_depth(1, vocab_size=64, sequence_len=16))
    root = tmp_path / "checkpoints"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / f".step_000005.tmp-{dead.pid}").mkdir()  # a save that died with its process
    (root / f".step_000006.tmp-{os.getppid()}").mkdir()  # a live process: maybe saving right now
    save_checkpoint(tmp_path, 7, model)
    names = sorted(p.name for p in root.iterdir())
    assert names == [f".step_000006.tmp-{os.getppid()}", "step_000007"]


def test_short_context_run_saves_and_samples(tok, tmp_path):
    """gpt2's learned positions stop at T: the end-of-run samples must fit (and come after the save)."""
    d = tmp_path / "short"
    summary = base_train.main(args(d, "--preset", "gpt2", "--num-iterations", "2"))
    assert summary["steps"] == 2 and latest_checkpoint(d).name == "step_000002"
    assert (d / "samples.txt").read_text().count(">>>") == 4


def test_corrupt_newest_checkpoint_is_skipped_on_resume(tok, tmp_path, capsys):
    d = tmp_path / "run"
    base_train.main(args(d, "--num-iterations", "8", "--save-every", "2", "--stop-at", "4"))
    newest = d / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the weights
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(d, "cpu", tokenizer=False)  # inference says what is wrong
    capsys.readouterr()
    summary = base_train.main(args(d, "--num-iterations", "6", "--resume"))
    out = capsys.readouterr().out
    assert "skipping a checkpoint" in out and "step_000004" in out and "resumed from" in out and "step_000002" in out
    assert summary["steps"] == 6
    (d / "checkpoints" / "step_000006" / "meta.json").write_text("[1, 2")  # unreadable meta: refused by name
    with pytest.raises(CheckpointError, match="meta.json"):
        verify_checkpoint(d / "checkpoints" / "step_000006")


def test_half_written_metrics_line_does_not_block_resume(tok, tmp_path):
    d = tmp_path / "run"
    base_train.main(args(d, "--num-iterations", "4", "--stop-at", "2"))
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 4.1')  # the process died mid-write
    summary = base_train.main(args(d, "--num-iterations", "4", "--resume"))
    assert summary["steps"] == 4
    for line in (d / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # every line is whole again


@pytest.mark.parametrize("flags, message", [
    (["--depth", "0"], "--depth"),
    (["--max-seq-len", "1"], "--max-seq-len"),
    (["--device-batch-size", "0"], "--device-batch-size"),
    (["--num-iterations", "0"], "--num-iterations"),
    (["--num-iterations", "-5"], "--num-iterations"),
    (["--warmdown-ratio", "2"], "--warmdown-ratio"),
    (["--matrix-lr", "nan"], "--matrix-lr"),
    (["--dtype", "float8"], "dtype"),
    (["--device", "tpu"], "device"),
    (["--tokenizer", "no-such-tokenizer"], "no tokenizer"),
    (["--total-batch-size", "100"], "multiple of"),
])
def test_flag_mistakes_are_one_line_with_exit_code_2(tok, tmp_path, capsys, flags, message):
    code = cli.main(["base-train", *args(tmp_path / "r", "--num-iterations", "2"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and message in err, err
    assert err.startswith("mini-nanochat base-train: ")
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks --device cuda on a machine without CUDA")
def test_cuda_requested_without_cuda_is_one_line(tok, tmp_path, capsys):
    assert cli.main(["base-train", *args(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_batch_that_cannot_fit_is_refused_up_front(tok, tmp_path, capsys, monkeypatch):
    """The free memory is pretended to be 64 MiB (a real out-of-memory run would hurt the machine); a
    micro-batch estimated at ~10x that is refused before anything is allocated for it, and one that fits
    is not."""
    from mini_nanochat import training

    assert training.available_bytes("cpu") is None or training.available_bytes("cpu") > 2**20  # the real reading
    monkeypatch.setattr(training, "available_bytes", lambda device: 64 * 2**20)
    model = GPT(GPTConfig.from_depth(1, vocab_size=512, sequence_len=32), device="meta")
    per_row = training.estimate_training_bytes(model, 1, 32) - training.estimate_training_bytes(model, 0, 32)
    rows = 10 * 64 * 2**20 // per_row
    code = cli.main(["base-train", *args(tmp_path / "r", "--num-iterations", "2"), "--device-batch-size", str(rows)])
    err = capsys.readouterr().err
    assert code == 2 and "GiB" in err and "--device-batch-size" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()
    assert base_train.main(args(tmp_path / "ok", "--num-iterations", "1"))["steps"] == 1  # 2 rows fit in 64 MiB


def test_file_system_refusals_are_one_line():
    e = PermissionError(errno.EACCES, "Permission denied", "/base/runs/x")
    assert "Permission denied: /base/runs/x" in cli.user_message(e)
    assert "No space left" in cli.user_message(OSError(errno.ENOSPC, "No space left on device"))
    assert cli.user_message(ValueError("a bug")) is None  # anything else keeps its traceback


def test_retrained_tokenizer_is_refused_by_resume_and_chat(base_dir, tmp_path, capsys):
    """A tokenizer retrained under the same name and size maps ids to other text: --resume and chat refuse
    the checkpoint with both hashes instead of training on / printing garbage."""
    from mini_nanochat.stages import chat

    tok_train.main(["--name", "retrained", "--vocab-size", "512", "--max-chars", "1000000"])
    d = tmp_path / "run"
    base_train.main(["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--tokenizer", "retrained",
                     "--eval-every", "0", "--eval-tokens", "256", "--num-iterations", "4", "--stop-at", "2",
                     "--run-dir", str(d)])
    tok_train.main(["--name", "retrained", "--vocab-size", "512", "--max-chars", "1500000", "--force"])
    with pytest.raises(SystemExit, match="trained with tokenizer sha256"):
        base_train.main(["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--tokenizer",
                         "retrained", "--eval-every", "0", "--num-iterations", "4", "--resume", "--run-dir", str(d)])
    with pytest.raises(SystemExit, match="trained with tokenizer sha256"):
        chat.main(["--run-dir", str(d), "-p", "hello", "--max-tokens", "4"])
