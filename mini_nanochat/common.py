"""
Small helpers every layer shares: the base directory, device and dtype policy, seeding, distributed
rank info, rank-aware printing and atomic file writes.

Nothing here knows about models, tokenizers or data. torch is imported lazily so that the tokenizer and
data stages start fast and can be used without it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------------------------------
# The base directory: every artifact (data shards, tokenizers, runs, reports) lives under it.


def get_base_dir() -> Path:
    """`$MINI_NANOCHAT_HOME`, else `~/.cache/mini_nanochat`. Created on first use."""
    base = os.environ.get("MINI_NANOCHAT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "mini_nanochat")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------
# Distributed info (torchrun sets these variables; a plain `python -m` run is rank 0 of 1).


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def get_dist_info() -> DistInfo:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE; defaults describe a single process."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only, so N processes do not print N copies of every line."""
    if get_dist_info().rank == 0:
        print(*args, **kwargs, flush=True)


def print_config(title: str, config: dict) -> None:
    """Print a stage's resolved configuration as aligned `key = value` lines (rank 0 only)."""
    print0(f"== {title} ==")
    width = max((len(k) for k in config), default=0)
    for k, v in config.items():
        print0(f"  {k:<{width}} = {v}")


# ----------------------------------------------------------------------------------------------------
# Device and dtype policy.


def autodetect_device(prefer: str | None = None) -> str:
    """Pick the device: an explicit `prefer` ("cuda", "mps", "cpu") wins, else cuda > mps > cpu.

    The environment variable MINI_NANOCHAT_DEVICE overrides autodetection (useful to force "cpu").
    """
    import torch

    choice = prefer or os.environ.get("MINI_NANOCHAT_DEVICE")
    if choice:
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {choice!r} requested but CUDA is not available")
        if choice == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RuntimeError("device 'mps' requested but MPS is not available")
        if not (choice == "cpu" or choice == "mps" or choice.startswith("cuda")):
            raise ValueError(f"unknown device {choice!r}; expected cuda, cuda:N, mps or cpu")
        return choice
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def compute_dtype(device: str, override: str | None = None):
    """The dtype matrix products run in; master weights always stay fp32.

    Policy: bf16 on CUDA GPUs with compute capability >= 8.0 (A100, H100, RTX 30xx+), where bf16 tensor
    cores are fast and need no loss scaling; on a CPU, bf16 only if it multiplies bf16 natively
    (AVX512-BF16 / AMX: ~2.2x the fp32 product), else fp32 (an AVX2-only CPU runs bf16 products ~100x
    slower); fp32 on MPS. The bf16 loss curve tracks fp32's (docs/adrs/0013-precision.md).
    `override` (or MINI_NANOCHAT_DTYPE) may be "float32" / "bfloat16" / "float16".
    """
    import torch

    name = override or os.environ.get("MINI_NANOCHAT_DTYPE")
    if name:
        table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
        if name not in table:
            raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(table)}")
        return table[name]
    if device.startswith("cuda"):
        major, _minor = torch.cuda.get_device_capability()
        return torch.bfloat16 if major >= 8 else torch.float32
    if device == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    """True if this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Linux only (reads /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Dense matrix-product peaks (FLOP/s) of common GPUs, from the vendors' data sheets, for MFU.
GPU_PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM; the PCIe card is ~25% lower
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp32": 30e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 83e12},
    "RTX 3090": {"bf16": 71e12, "fp32": 36e12},
}


def peak_flops(device: str, dtype=None) -> float:
    """The matrix-product peak that MFU is measured against: the data-sheet figure for a known GPU, else
    measured here (median of 3 products of 2048x2048 matrices, as ../shared/anchors.md measures; ~0.5 s on a CPU)."""
    import statistics
    import time

    import torch

    dtype = dtype or torch.float32
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, table in GPU_PEAK_FLOPS.items():
            if key in name:
                return table["fp32" if dtype == torch.float32 else "bf16"]
    n = 2048
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(3):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if present) and torch (if present) for reproducible runs."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------------------------------
# Files: atomic writes and hashing. A crash mid-write must never leave a half-written artifact that a
# later stage mistakes for a complete one, so everything is written to a temp file and renamed.


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file next to `path`; on success fsync and rename it over `path` (atomic on POSIX).

    >>> with atomic_write("/tmp/_mn_demo.txt") as f:  # doctest: +SKIP
    ...     f.write("hello")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
