"""
Data-parallel training across processes (torchrun), two ways:

  ddp    every rank keeps the full optimizer state; after backward the gradients are averaged across
         ranks (all-reduce), then every rank takes the same optimizer step (Li et al. 2020, PyTorch DDP,
         arXiv:2006.15704).
  zero2  each parameter is owned by one rank, which alone keeps its optimizer state: gradients are
         reduced to the owner, the owner takes the step, then broadcasts the new values (ZeRO stage 2,
         Rajbhandari et al. 2020, arXiv:1910.02054). Optimizer memory falls by ~W; communication is a
         reduce + a broadcast per parameter, the same volume as an all-reduce.

Ownership is per whole parameter, not per slice: Muon must orthogonalise a whole matrix, so a matrix
cannot be split across ranks anyway (nanochat's distributed Muon also assigns whole matrices to ranks).
Parameters are dealt to ranks largest first, each to the least-loaded rank, to balance memory and work.

Both modes compute exactly what one process computes with gradient accumulation over the same batches
(tests/test_distributed.py checks it to 1e-5 with 2 processes on CPU, gloo).

Every tensor collective goes through the helpers here (all_reduce, reduce, broadcast), which check that
the tensor lives on the training device: NCCL, the GPU backend, refuses CPU tensors, so a loss or a
counter left on the CPU would stop an 8-GPU run at its first collective, while gloo on a CPU machine
would never notice. tests/test_distributed.py runs the training step, the evaluation and the
checkpoint gathers under 2 gloo ranks with the default device set to "meta", so that any tensor created
without an explicit device is caught there, as NCCL would catch it on GPUs (ADR 0027).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .common import DistInfo, get_dist_info


_DEVICE: torch.device | None = None  # the training device of this process, set by init_distributed


def init_distributed(device: str, timeout_s: float = 300.0) -> DistInfo:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU) and remember the training
    device that every collective must use. A no-op for a single process. `timeout_s` bounds how long a
    collective waits for a rank that died: the job then fails with a message instead of hanging forever.
    On CUDA, `device` must be this rank's GPU (`cuda:LOCAL_RANK`, see device_for_rank)."""
    global _DEVICE
    info = get_dist_info()
    _DEVICE = torch.device(device)
    if _DEVICE.type == "cuda" and _DEVICE.index is None and torch.cuda.is_available():
        _DEVICE = torch.device("cuda", torch.cuda.current_device())  # tensors report "cuda:0", not "cuda"
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if _DEVICE.type == "cuda" else "gloo"
        if _DEVICE.type == "cuda":
            torch.cuda.set_device(_DEVICE)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info


def start(device: str = "", dtype: str = "", timeout_s: float = 300.0, cpu_dtype: str | None = None):
    """Every stage's first step: this rank's device (autodetected unless `device`; under torchrun each rank
    its own GPU), the compute dtype (`dtype`, else `cpu_dtype` on a CPU if given, else the device's), the
    process group joined, and the device set up (TF32 on CUDA). Returns (device, dtype). Raises ValueError
    for a device or dtype that does not exist here (the stage turns it into one line for the user)."""
    from .common import autodetect_device, compute_dtype, setup_device

    try:
        dev = device_for_rank(autodetect_device(device or None))
        dt = compute_dtype(dev, dtype or (cpu_dtype if dev == "cpu" else None))
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    init_distributed(dev, timeout_s)
    setup_device(dev)
    return dev, dt


def device_for_rank(device: str) -> str:
    """Each rank on its own GPU: "cuda" becomes "cuda:LOCAL_RANK" under torchrun; other devices unchanged."""
    info = get_dist_info()
    if device == "cuda" and info.world_size > 1:
        return f"cuda:{info.local_rank}"
    return device


def _check(t: torch.Tensor) -> torch.Tensor:
    if _DEVICE is not None and t.device != _DEVICE:
        raise RuntimeError(f"a collective got a tensor on {t.device}, but this rank trains on {_DEVICE}: "
                           f"create it on the training device (NCCL refuses CPU tensors)")
    return t


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place: t becomes the sum (or "avg") over ranks. Unchanged in a single process."""
    if is_distributed():
        dist.all_reduce(_check(t), op=dist.ReduceOp.SUM)
        if op == "avg":
            t.div_(dist.get_world_size())
    return t


def reduce(t: torch.Tensor, dst: int) -> None:
    if is_distributed():
        dist.reduce(_check(t), dst=dst, op=dist.ReduceOp.SUM)


def broadcast(t: torch.Tensor, src: int) -> None:
    if is_distributed():
        dist.broadcast(_check(t), src=src)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights."""
    for p in model.parameters():
        broadcast(p.data, src=0)


def assign_owners(params: list[torch.nn.Parameter], world_size: int) -> list[int]:
    """Owner rank of each parameter: largest first, each to the rank holding the fewest elements."""
    load = [0] * world_size
    owners = [0] * len(params)
    for i in sorted(range(len(params)), key=lambda i: -params[i].numel()):
        r = min(range(world_size), key=lambda k: load[k])
        owners[i] = r
        load[r] += params[i].numel()
    return owners


class GradSync:
    """Synchronise gradients (and, for zero2, parameters) around `optimizer.step()`.

        sync = GradSync(model, mode)        # after building the model
        loss.backward() ...                 # accumulate micro-batches as usual
        sync.before_step(); opt.step(); sync.after_step()
    """

    def __init__(self, model: torch.nn.Module, mode: str = "ddp"):
        if mode not in ("ddp", "zero2"):
            raise ValueError(f"sync mode must be 'ddp' or 'zero2', got {mode!r}")
        self.mode = mode
        self.params = list(model.parameters())
        self.active = is_distributed()
        self.world = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0
        self.owners = assign_owners(self.params, self.world)

    def owned(self, i: int) -> bool:
        return self.mode == "ddp" or self.owners[i] == self.rank

    def before_step(self) -> None:
        if not self.active:
            return
        for i, p in enumerate(self.params):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if self.mode == "ddp":
                all_reduce(p.grad, "avg")
            else:
                reduce(p.grad, dst=self.owners[i])
                if self.owners[i] == self.rank:
                    p.grad.div_(self.world)
                else:
                    p.grad = None  # the optimizer skips it: no state is created for it on this rank

    def after_step(self) -> None:
        if self.active and self.mode == "zero2":
            for i, p in enumerate(self.params):
                broadcast(p.data, src=self.owners[i])

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state_dict with every parameter's state, gathered from the owners (zero2), in
        the ordinary single-process format, so that a checkpoint resumes under any number of ranks."""
        sd = optimizer.state_dict()
        if not (self.active and self.mode == "zero2"):
            return sd
        pieces = [None] * self.world
        dist.all_gather_object(pieces, {k: {n: (v.cpu() if torch.is_tensor(v) else v) for n, v in s.items()}
                                        for k, s in sd["state"].items()})
        merged = {}
        for piece in pieces:
            merged.update(piece)
        return {"state": merged, "param_groups": sd["param_groups"]}

    def load_full_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a full (gathered) optimizer state; under zero2 keep only this rank's parameters' state."""
        optimizer.load_state_dict(state)
        if self.active and self.mode == "zero2":
            for i, p in enumerate(self.params):
                if not self.owned(i):
                    optimizer.state.pop(p, None)


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def destroy() -> None:
    """Leave the process group. The barrier first lets every rank finish its last collective: a rank that
    tore down its gloo connections while its peer was still using them was seen to abort at exit
    ("terminate called without an active exception") in our 2-rank tests."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))
