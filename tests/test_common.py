"""Shared helpers: base directory, device/dtype policy, rank-aware printing, atomic writes, seeding."""
from __future__ import annotations

import os

import pytest
import torch

from mini_nanochat import common


def test_base_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(tmp_path / "x"))
    assert common.get_base_dir() == tmp_path / "x" and (tmp_path / "x").is_dir()
    monkeypatch.delenv("MINI_NANOCHAT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert common.get_base_dir() == tmp_path / ".cache" / "mini_nanochat"


def test_device_and_dtype_policy(monkeypatch):
    monkeypatch.delenv("MINI_NANOCHAT_DEVICE", raising=False)
    monkeypatch.delenv("MINI_NANOCHAT_DTYPE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert common.autodetect_device() == expected
    assert common.autodetect_device("cpu") == "cpu"
    assert common.compute_dtype("cpu") == (torch.bfloat16 if common.cpu_has_native_bf16() else torch.float32)
    assert common.compute_dtype("cpu", "bf16") == torch.bfloat16
    monkeypatch.setenv("MINI_NANOCHAT_DTYPE", "bfloat16")
    assert common.compute_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError):
        common.compute_dtype("cpu", "float8")
    with pytest.raises(ValueError):
        common.autodetect_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            common.autodetect_device("cuda")


def test_print0_only_on_rank_zero(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    common.print0("hidden")
    info = common.get_dist_info()
    assert info.rank == 1 and info.world_size == 2 and info.is_distributed and not info.is_master
    monkeypatch.setenv("RANK", "0")
    common.print0("shown")
    assert capsys.readouterr().out == "shown\n"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    with common.atomic_write(p) as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with common.atomic_write(p) as f:
            f.write("new, half written")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # no temp file left behind


def test_seed_everything_reproducible():
    common.seed_everything(123)
    a = torch.rand(3)
    common.seed_everything(123)
    assert torch.equal(a, torch.rand(3))


def test_peak_flops_table_and_unknown_devices():
    """Known accelerators get their data-sheet peak (L4 is not L40S, PCIe is not SXM); an unknown one gets
    None (MFU "unknown"), never a guess; the CPU's peak is measured."""
    g = common.gpu_peak_flops
    assert g("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12  # SXM
    assert g("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert g("NVIDIA H100 NVL", torch.bfloat16) == 835e12
    assert g("NVIDIA H200", torch.bfloat16) == 989e12
    assert g("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert g("NVIDIA L4", torch.bfloat16) == 121e12 and g("NVIDIA L40S", torch.bfloat16) == 362e12
    assert g("NVIDIA L40", torch.bfloat16) == 181e12
    assert g("NVIDIA RTX A1000", torch.bfloat16) is None and g("Imaginary GPU 9000", torch.bfloat16) is None
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert g("NVIDIA H100 80GB HBM3", torch.float32) == 67e12
        torch.backends.cuda.matmul.allow_tf32 = True
        assert g("NVIDIA H100 80GB HBM3", torch.float32) == 495e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert common.peak_flops("cpu") > 1e9
    assert common.peak_flops("mps") is None
