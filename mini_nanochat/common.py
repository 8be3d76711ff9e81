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
# User mistakes: one line, exit code 2, no traceback (docs/adrs/0029-error-policy.md).


class UserError(SystemExit):
    """A mistake the user can fix: a bad flag, a missing or mismatched artifact, a full disk. The CLI
    (`python -m mini_nanochat`) prints `mini-nanochat <stage>: <message>` on stderr and exits with code 2,
    without a traceback (set MINI_NANOCHAT_DEBUG=1 to see one). It is a SystemExit, so a script or test
    that calls a stage's main() directly stops the same way, and `except Exception` does not swallow it.

    >>> str(UserError("--depth must be >= 1, got 0")), UserError("x").code
    ('--depth must be >= 1, got 0', 2)
    """

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def require(ok: bool, message: str) -> None:
    """Refuse a user's mistake: raise UserError(message) unless `ok` (flag checks read as a list of rules)."""
    if not ok:
        raise UserError(message)


PLAIN_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}"  # a name that becomes one directory: no '/', no '..'


def is_plain_name(name) -> bool:
    """True for a name that can only ever mean one directory under the base directory (a run tag, a
    corpus or tokenizer name): letters, digits, '.', '_' and '-', not starting with '.' or '-', at most
    100 characters. `..`, `/tmp` or `a/b` would reach outside, and a stage that replaces its artifact
    would then remove something it does not own.

    >>> is_plain_name("d20"), is_plain_name(".."), is_plain_name("/tmp"), is_plain_name("a/b")
    (True, False, False, False)
    """
    import re

    return isinstance(name, str) and re.fullmatch(PLAIN_NAME, name) is not None


def debug_enabled() -> bool:
    """MINI_NANOCHAT_DEBUG=1: show tracebacks for user errors too."""
    return os.environ.get("MINI_NANOCHAT_DEBUG", "") not in ("", "0")


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


# Dense (no sparsity) matrix-product peaks of known accelerators, FLOP/s, from the vendors' data sheets, for
# MFU. Checked in order; a pattern is a regex on torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3"
# (the SXM card), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA L4" (not "NVIDIA L40S").
# "tf32" is the fp32 peak when TF32 tensor cores are allowed (we allow them on CUDA, see setup_device).
# A data sheet's "with sparsity" figures are twice these. An accelerator that is not listed gets no
# peak at all (MFU "unknown"): a guessed peak gives a wrong MFU that looks right.
GPU_PEAK_FLOPS = [
    # pattern                   bf16      tf32      fp32
    (r"H100.*NVL|H100 NVL",     (835e12,  418e12,   60e12)),   # H100 NVL data sheet (per GPU)
    (r"H100.*PCIe",             (756e12,  378e12,   51e12)),   # H100 PCIe
    (r"H100",                   (989e12,  495e12,   67e12)),   # H100 SXM5 ("H100 80GB HBM3")
    (r"H200.*NVL",              (835e12,  418e12,   60e12)),   # H200 NVL
    (r"H200",                   (989e12,  495e12,   67e12)),   # H200 SXM (same compute as H100 SXM)
    (r"\bA100\b",               (312e12,  156e12,   19.5e12)),  # A100 SXM4 and PCIe, 40 and 80 GB
    (r"L40S",                   (362e12,  183e12,   91.6e12)),  # L40S
    (r"\bL40\b",                (181e12,  90.5e12,  90.5e12)),  # L40
    (r"\bL4\b",                 (121e12,  60e12,    30.3e12)),  # L4
    (r"\bA10\b",                (125e12,  62.5e12,  31.2e12)),  # A10 (not the A10G, whose clocks differ)
    (r"RTX 4090",               (165e12,  82.6e12,  82.6e12)),  # GeForce RTX 4090 (bf16 with fp32 accumulate)
    (r"RTX 3090",               (71e12,   35.6e12,  35.6e12)),  # GeForce RTX 3090
]


def gpu_peak_flops(name: str, dtype) -> float | None:
    """The data-sheet peak of the GPU called `name` for products in `dtype` (bf16/fp16, or fp32 with
    TF32 allowed), or None when the GPU is not in GPU_PEAK_FLOPS.

    >>> import torch
    >>> gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16), gpu_peak_flops("NVIDIA L4", torch.bfloat16)
    (989000000000000.0, 121000000000000.0)
    >>> gpu_peak_flops("NVIDIA L40S", torch.bfloat16), gpu_peak_flops("Some Future GPU", torch.bfloat16)
    (362000000000000.0, None)
    """
    import re

    import torch

    for pattern, (bf16, tf32, fp32) in GPU_PEAK_FLOPS:
        if re.search(pattern, name):
            if dtype in (torch.bfloat16, torch.float16):
                return bf16
            return tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32
    return None


def peak_flops(device: str, dtype=None) -> float | None:
    """The matrix-product peak that MFU is measured against: on a GPU the data-sheet figure of a known
    model (gpu_peak_flops), None for an unknown one; on a CPU measured here (median of 3 products of
    2048x2048 matrices, as docs/anchors.md measures; ~0.5 s), since CPUs differ too much for a
    table; None on MPS. Timing one product on a GPU is no substitute for the data sheet: on an H200 it
    gave 396 TFLOP/s, 40% of the 989 that MFU is quoted against (issue #11)."""
    import statistics
    import time

    import torch

    dtype = dtype or torch.float32
    if device.startswith("cuda"):
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    if device != "cpu":
        return None
    n = 2048
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def synchronize(device) -> None:
    """Wait until the device has finished the work queued so far. CUDA (and MPS) run asynchronously: the
    host queues kernels and moves on, so a clock read without this measures the queueing, not the work."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def setup_device(device: str) -> None:
    """Per-process switches for a device. On CUDA: allow TF32 tensor cores for fp32 matrix products
    (10 mantissa bits instead of 23 for the product inputs, accumulation still fp32; ~7x the fp32 peak on
    an H100). It matters for what still runs in fp32 when the model computes in bf16, and for fp32 runs.
    Measured on an H200: our d20 step went from 98,800 to 142,800 tok/s with it (issue #11, ADR 0027)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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


def umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere os.umask() must set it to read it, which
    for a moment changes it for every thread, so /proc is tried first."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The permissions a plain open() would give a new file here: 0666 minus the process's umask."""
    return 0o666 & ~umask()


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
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600 files; the artifact gets the usual permissions
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside `path` durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LockBusy(Exception):
    """file_lock waited its whole timeout: another process holds the lock."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float | None = None):
    """An exclusive advisory lock on `path` (created if needed) for as long as the block runs, shared by
    threads and processes (POSIX flock; it dies with its process, so a killed holder never blocks the next
    one). Waits up to `timeout` seconds (None: for ever; 0: not at all), then raises LockBusy. The
    lock file stays afterwards: removing it while another process opens it would let two lock different
    files. Without fcntl (Windows) the block runs unlocked."""
    import time

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise LockBusy(f"{path} is locked by another process") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl_atomic(path: str | os.PathLike, records) -> None:
    """One JSON object per line (per-item evaluation results), written atomically."""
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def earlier_eval_summary(path: str | os.PathLike, **match) -> dict | None:
    """An earlier evaluation summary (base_eval.json, chat_eval.json) whose fields equal `match` (the same
    checkpoint, sample size, dtype ...), so that evaluating other tasks adds to it instead of replacing
    it; None if there is none, it is unreadable, or it was made under other conditions."""
    try:
        old = json.loads(Path(path).read_text())
        if isinstance(old, dict) and isinstance(old.get("tasks"), dict) and \
                all(old.get(k) == v for k, v in match.items()):
            return old
    except (OSError, ValueError):
        pass
    return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
