"""
Checkpoints: everything needed to continue a run exactly, written so that a crash never leaves a
half-written checkpoint behind.

    runs/<tag>/checkpoints/step_NNNNNN/
        model.safetensors   the weights (safetensors: tensors only, loading cannot run code)
        optim.pt            optimizer, data loader, RNG and step state, loaded with weights_only=True
        meta.json           model config, training config, tokenizer hash, git commit, metrics

A checkpoint is written into a hidden temp directory, fsynced, then renamed into place: a directory that
is named step_NNNNNN is complete. Only the newest `keep_last` are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import torch

from .common import fsync_dir, sha256_file


class CheckpointError(Exception):
    """A checkpoint could not be written or read; the message says why and what to do."""


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    d = Path(run_dir) / "checkpoints"
    return sorted(p for p in d.glob("step_*") if p.is_dir() and (p / "meta.json").is_file()) if d.is_dir() else []


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# A run family: the base run <tag>, its fine-tuned chat model <tag>-sft, and that model after RL <tag>-rl.
STAGE_SUFFIX = {"base": "", "sft": "-sft", "rl": "-rl"}


def resolve_run(runs_dir: str | os.PathLike, tag: str, stage: str = "latest") -> Path:
    """The run directory of `tag` at `stage`: "base", "sft", "rl", or "latest" (the most trained one that
    has a checkpoint: <tag>-rl, else <tag>-sft, else <tag>). A tag that already names a stage is kept.

        resolve_run(get_base_dir() / "runs", "speedrun")   # .../runs/speedrun-rl after the speedrun
    """
    runs_dir = Path(runs_dir)
    if stage != "latest":
        return runs_dir / (tag + STAGE_SUFFIX[stage])
    if tag.endswith(("-sft", "-rl")):
        return runs_dir / tag
    for suffix in ("-rl", "-sft", ""):
        if latest_checkpoint(runs_dir / (tag + suffix)) is not None:
            return runs_dir / (tag + suffix)
    return runs_dir / tag


def add_run_flags(parser, run_dir: bool = True) -> None:
    """The flags by which chat, chat-eval and serve name a model: --model-tag, --stage (and --run-dir)."""
    parser.add_argument("--model-tag", default="speedrun",
                        help="the run family under <base>/runs: <tag>, <tag>-sft, <tag>-rl (default: the speedrun's)")
    parser.add_argument("--stage", default="latest", choices=["latest", *STAGE_SUFFIX],
                        help="which model of the family (latest: the most trained one that has a checkpoint)")
    if run_dir:
        parser.add_argument("--run-dir", default="", help="explicit run or checkpoint directory (overrides --model-tag)")


def run_from_flags(args) -> Path:
    """The run directory that add_run_flags' flags name."""
    from .common import get_base_dir

    if getattr(args, "run_dir", ""):
        return Path(args.run_dir)
    return resolve_run(get_base_dir() / "runs", args.model_tag, args.stage)


def _clean_stale_temps(ck_root: Path) -> None:
    """Remove `.step_*.tmp-PID` folders left by a process that died while saving (or by this one): they
    are never complete checkpoints, and on a full disk they are what keeps it full. A folder whose PID
    is still alive belongs to another save in progress and is left alone."""
    for tmp in ck_root.glob(".step_*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        alive = pid != os.getpid()
        if alive:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:  # someone else's live process
                pass
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


def _why_write_failed(e: BaseException, where: Path) -> str:
    """A short reason for a failed checkpoint write. torch.save reports a full disk as a RuntimeError
    ("file write failed"), not as OSError 28, so the free space is checked too."""
    free = None
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        pass
    if (isinstance(e, OSError) and e.errno == 28) or "No space left" in str(e) or (free is not None and free < 64 << 20):
        return f"the disk is full ({free / 2**20:.0f} MiB free)" if free is not None else "the disk is full"
    if isinstance(e, OSError) and e.errno == 13:
        return "permission denied"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, optimizer=None,
                    loader_state: dict | None = None, meta: dict | None = None, keep_last: int = 3,
                    optimizer_state: dict | None = None) -> Path:
    """Write checkpoint `step` atomically; prune to the newest `keep_last`. Raises CheckpointError.
    `optimizer_state` (a state_dict, e.g. gathered from the ranks of a sharded optimizer) is saved
    instead of `optimizer.state_dict()` when given. meta.json records the sha256 of model.safetensors
    and optim.pt, checked when the checkpoint is loaded (a flipped bit or a truncated copy is found)."""
    from safetensors.torch import save_file

    ck_root = Path(run_dir) / "checkpoints"
    final = ck_root / f"step_{step:06d}"
    tmp = ck_root / f".step_{step:06d}.tmp-{os.getpid()}"
    try:
        ck_root.mkdir(parents=True, exist_ok=True)
        _clean_stale_temps(ck_root)
        tmp.mkdir()
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        state = {"step": step, "loader": loader_state,
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
        if optimizer_state is not None:
            state["optimizer"] = optimizer_state
        elif optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        torch.save(state, tmp / "optim.pt")
        sums = {"weights_sha256": sha256_file(tmp / "model.safetensors"), "optim_sha256": sha256_file(tmp / "optim.pt")}
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump({"step": step, "git_commit": git_commit(), **(meta or {}), **sums}, f, indent=2, default=str)
        for name in ("model.safetensors", "optim.pt", "meta.json"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ck_root)
    except Exception as e:  # noqa: BLE001 - OSError, and torch.save's RuntimeError on a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {_why_write_failed(e, ck_root)}. The previous "
                              f"checkpoints are untouched; free space / fix permissions and resume with --resume.") from e
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_meta(path: str | os.PathLike) -> dict:
    """A checkpoint's meta.json, validated: a JSON object with an integer "step" and, where present, a
    dict "model_config" and string checksums. Raises CheckpointError naming the file and the problem."""
    f = Path(path) / "meta.json"
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f} is missing or corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or isinstance(meta.get("step"), bool):
        raise CheckpointError(f"{f} is not a checkpoint's meta.json (no integer 'step')")
    if "model_config" in meta and not isinstance(meta["model_config"], dict):
        raise CheckpointError(f"{f}: 'model_config' is not an object")
    for key in ("weights_sha256", "optim_sha256", "tokenizer_sha256"):
        if key in meta and not (isinstance(meta[key], str) and len(meta[key]) == 64):
            raise CheckpointError(f"{f}: '{key}' is not a sha256 hex digest")
    return meta


def verify_checkpoint(path: str | os.PathLike, optimizer: bool = True) -> dict:
    """Check a checkpoint against the checksums in its meta.json (model.safetensors, and optim.pt unless
    optimizer=False); return the meta. Checkpoints written before checksums were recorded pass on the
    meta alone. Raises CheckpointError naming the file that does not match."""
    path = Path(path)
    meta = read_meta(path)
    files = [("model.safetensors", "weights_sha256")] + ([("optim.pt", "optim_sha256")] if optimizer else [])
    for name, key in files:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing")
        if key in meta and sha256_file(path / name) != meta[key]:
            raise CheckpointError(f"{path / name} does not match the checksum in meta.json (corrupt or truncated)")
    return meta


def latest_valid_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of a run that passes verify_checkpoint, and a note for each newer one that
    did not (newest first). (None, notes) if none is valid."""
    notes = []
    for ck in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ck)
            return ck, notes
        except CheckpointError as e:
            notes.append(str(e))
    return None, notes


def _load_weights(path: Path, model: torch.nn.Module) -> None:
    """safetensors -> host memory -> copied into the model's parameters, wherever they live (each rank's
    own GPU, or the CPU): a checkpoint written on any device loads on any other."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "model.safetensors"), device="cpu")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); is the model config the same?")


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None, optimizer=None,
                    restore_rng: bool = True) -> dict:
    """Load a checkpoint directory into `model` / `optimizer` (if given) to continue training. Returns
    the training state: {"step", "loader", "meta", "optimizer"}. Raises CheckpointError with a clear
    message on a missing/corrupt file.

    optim.pt is read with map_location="cpu": tensors saved from a GPU would otherwise be restored onto
    that GPU, which fails on a machine without one (and puts every rank's copy on GPU 0). The optimizer's
    load_state_dict then moves each state tensor to its parameter's device. For inference, use
    load_model, which does not read optim.pt at all."""
    path = Path(path)
    meta = verify_checkpoint(path)
    try:
        if model is not None:
            _load_weights(path, model)
        state = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - I/O, JSON, unpickling, safetensors: all mean "corrupt or missing"
        raise CheckpointError(f"checkpoint {path} is missing or corrupt ({type(e).__name__}: {e})") from e
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        torch.set_rng_state(state["rng"]["torch"])
        py = state["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    return {"step": state["step"], "loader": state.get("loader"), "meta": meta, "optimizer": state.get("optimizer")}


def _legacy_tokenizer_hash(tok) -> str:
    """The hash that checkpoints written before 2026-11-30 recorded as `tokenizer_sha256`: the merge
    ranks only (Tokenizer.sha256 now covers the pattern and the special tokens too)."""
    import hashlib

    h = hashlib.sha256()
    for t, _ in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(t + b"\0")
    return h.hexdigest()


def check_tokenizer(meta: dict, tok, where: str | os.PathLike) -> None:
    """Refuse to pair a checkpoint with a tokenizer other than the one it was trained with: the ids would
    mean other text (a retrained tokenizer of the same size gave garbage in `chat`, and `--resume` trained
    on silently). Compares Tokenizer.sha256() with meta's `tokenizer_sha256` (or, for an older checkpoint,
    the ranks-only hash it recorded). A checkpoint without the field passes. Raises CheckpointError naming
    both hashes."""
    saved = meta.get("tokenizer_sha256")
    if saved is None or saved in (tok.sha256(), _legacy_tokenizer_hash(tok)):
        return
    raise CheckpointError(f"{where} was trained with tokenizer sha256 {saved[:16]}..., but tokenizer "
                          f"{meta.get('tokenizer', '?')!r} now has sha256 {tok.sha256()[:16]}... (retrained since?): "
                          f"the ids would mean other text. Restore that tokenizer or train a new model.")


def find_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint directory from a run directory (its latest checkpoint) or a checkpoint directory."""
    source = Path(source)
    if (source / "meta.json").is_file() and (source / "model.safetensors").is_file():
        return source
    ck = latest_checkpoint(source)
    if ck is None:
        raise CheckpointError(f"no checkpoint in {source}")
    return ck


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               tokenizer: bool = True):
    """Build the model of a run for inference or fine-tuning: (model, tokenizer, meta).

    `source` is a run directory (its latest checkpoint is used) or one checkpoint directory. Reads
    meta.json (the model config, the tokenizer's name) and model.safetensors only: the optimizer state,
    often twice the size of the weights, is never read. The model is built on `device` with the compute
    dtype of that device (common.compute_dtype, or `dtype`) and returned in eval mode; meta gains
    "checkpoint" (the directory used). With tokenizer=True the run's tokenizer is loaded and checked
    against the model's vocabulary. Raises CheckpointError with a message for the user.

        model, tok, meta = load_model(get_base_dir() / "runs" / "speedrun", "cuda")
    """
    from .common import compute_dtype
    from .gpt import GPT, GPTConfig

    ck = find_checkpoint(source)
    meta = verify_checkpoint(ck, optimizer=False)  # weights checked against meta.json; optim.pt not read
    try:
        config = GPTConfig.from_dict(meta["model_config"])
    except Exception as e:  # noqa: BLE001 - missing key, unknown field, invalid value
        raise CheckpointError(f"checkpoint {ck}: meta.json has no valid model_config ({type(e).__name__}: {e})") from e
    device = str(device)
    model = GPT(config, device=device, compute_dtype=dtype or compute_dtype(device))
    try:
        _load_weights(ck, model)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {ck}: model.safetensors is missing or corrupt ({type(e).__name__}: {e})") from e
    tok = None
    if tokenizer:
        from .tokenizer import get_tokenizer

        name = meta.get("tokenizer", "default")
        try:
            tok = get_tokenizer(name)
        except Exception as e:  # noqa: BLE001 - a missing or unreadable tokenizer directory
            raise CheckpointError(f"checkpoint {ck} needs tokenizer {name!r}, which could not be loaded "
                                  f"({type(e).__name__}: {e})") from e
        if tok.vocab_size != config.vocab_size:
            raise CheckpointError(f"tokenizer {name!r} has {tok.vocab_size} tokens but the model expects "
                                  f"{config.vocab_size}; was the tokenizer retrained after this run?")
        check_tokenizer(meta, tok, ck)
    return model.eval(), tok, {**meta, "checkpoint": str(ck)}
