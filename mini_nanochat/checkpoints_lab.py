"""
Executable checkpoints: for each phase, the observations its checkpoint page (docs/checkpoints/phaseN.md)
asks a learner to make, measured on tiny models in seconds, each as a named Check with the measured value,
what was expected and whether it passed.

    checks = run_phase(1, workdir)     # [Check("loss at init, modern", 8.3178, "ln V = 8.3178 +- 0.01", True), ...]

Everything runs in `workdir` (a temporary base directory holding the embedded corpus and a small tokenizer
trained there): no check reads or writes the user's runs. Sizes are the checkpoint pages' own where they
are small, smaller where they are not; the thresholds are loose enough to hold on any seed and machine and
tight enough that a broken component fails them (each says what it guards against).

Phase 4 starts torchrun with 2 CPU processes (gloo), the way tests/test_distributed.py does; it is the one
slow phase (tens of seconds of process start-up).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PHASES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")


@dataclass
class Check:
    name: str
    measured: str
    expected: str
    ok: bool


def _fmt(x, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


class Workdir:
    """A base directory with the embedded corpus and one small tokenizer, built once and shared by the
    phases (a tokenizer of 512 trained on ~1 MB of the corpus in a second or two)."""

    TOKENIZER = "checkpoint"

    def __init__(self, root: Path):
        self.root = Path(root)
        self._tok = None

    def corpus(self) -> None:
        from .dataset import corpus_dir, manifest_is_complete
        from .stages import data

        if manifest_is_complete(corpus_dir("embedded", self.root)) is None:
            with _with_base(self.root):
                _quiet(data.main, [])

    def texts(self, split: str = "train", max_chars: int = 1_000_000) -> list[str]:
        from .dataset import iter_texts
        from .tokenizer import iter_chunks_of_text

        self.corpus()
        return list(iter_chunks_of_text(iter_texts("embedded", split, self.root), max_chars))

    def tok(self):
        from .tokenizer import Tokenizer, tokenizer_dir

        if self._tok is None:
            d = tokenizer_dir(self.TOKENIZER, self.root)
            if (d / "tokenizer.json").exists():
                self._tok = Tokenizer.load(d)
            else:
                self._tok = Tokenizer.train(self.texts(), 512)
                self._tok.save(d)
        return self._tok


def _tiny_model(vocab: int, depth: int = 2, T: int = 64, seed: int = 0, **kw):
    from .gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig.from_depth(depth, vocab_size=vocab, sequence_len=T, head_dim=32, aspect_ratio=32, **kw))


def _noisy(model):
    """Random weights on every path (the zero-initialised projections too): a model whose outputs depend on
    its whole input, for the equality checks (an identity model proves nothing; ADR 0017)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _overfit(model, optimizer_name: str, steps: int, vocab: int, T: int = 32) -> tuple[float, float]:
    from .optim import MuonAdamW, build_param_groups

    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02 if optimizer_name == "muon" else 3e-3,
                                       embedding_lr=0.3, unembedding_lr=0.01, scalar_lr=0.01,
                                       optimizer=optimizer_name))
    idx = torch.randint(0, vocab, (4, T + 1))
    first = last = None
    for _ in range(steps):
        loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return first, last


# ---- Phase 0: the tokenizer ---------------------------------------------------------------------------------

def phase0(w: Workdir) -> list[Check]:
    import regex

    from .tokenizer import SPLIT_PATTERN, Tokenizer, bpe_encode_chunk, train_bpe, train_bpe_fast

    checks = []
    tok = w.tok()
    checks.append(Check("tokenizer trains to the requested size", str(tok.vocab_size), "512", tok.vocab_size == 512))
    small = w.texts(max_chars=60_000)
    py, fast = train_bpe(small, 400), train_bpe_fast(small, 400)
    same = sum(1 for k, v in py.items() if fast.get(k) == v)
    checks.append(Check("python trainer == rustbpe (merges, 60k chars, vocab 400)", f"{same}/{len(py)} identical",
                        "all identical", py == fast))
    val = w.texts("val", 200_000) + ["naïve café 北京 🤖 \t\n  x=1,234.5  ", ""]
    bad = sum(1 for t in val if tok.decode(tok.encode(t)) != t)
    checks.append(Check("decode(encode(text)) == text (200k chars of val + unicode)", f"{bad} mismatches", "0",
                        bad == 0))
    text = "".join(val[:20])
    ref = [i for chunk in regex.findall(SPLIT_PATTERN, text) for i in bpe_encode_chunk(chunk.encode(), tok.mergeable_ranks)]
    ours = tok.encode(text)
    checks.append(Check("tiktoken with our ranks == the readable BPE encoder", f"{len(ours):,} vs {len(ref):,} ids, "
                        f"{'equal' if ours == ref else 'different'}", "equal", ours == ref))
    nbytes = len(text.encode())
    checks.append(Check("compression on val text", f"{nbytes / len(ours):.2f} bytes/token", "> 2 (vocab 512)",
                        nbytes / len(ours) > 2))
    return checks


# ---- Phase 1: the model ---------------------------------------------------------------------------------------

def phase1(w: Workdir) -> list[Check]:
    from .gpt import attend, attention_mask, attention_reference

    checks = []
    V = 4096
    torch.manual_seed(0)
    x, y = torch.randint(0, V, (4, 128)), torch.randint(0, V, (4, 128))
    for preset, tol in (("modern", 0.01), ("llama", 0.01), ("gpt2", 0.1)):
        model = _tiny_model(V, depth=4, T=128, preset=preset)
        with torch.no_grad():
            loss = model(x, y).item()
        checks.append(Check(f"loss at init, {preset}", _fmt(loss), f"ln V = {math.log(V):.4f} +- {tol}",
                            abs(loss - math.log(V)) < tol))
    torch.manual_seed(0)
    model = _tiny_model(256, depth=2, T=64)
    batch = torch.randint(0, 256, (4, 65))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(40):
        loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    checks.append(Check("overfit one batch (AdamW, 40 steps, V 256)", _fmt(loss.item()), "< 0.1 (from ln 256 = 5.545)",
                        loss.item() < 0.1))
    model = _noisy(_tiny_model(256, depth=2, T=64))
    x = torch.randint(0, 256, (1, 64))
    x2 = x.clone()
    x2[0, 40] = (x2[0, 40] + 1) % 256
    with torch.no_grad():
        d = (model(x) - model(x2)).abs().amax(-1)[0]
    checks.append(Check("causality: change token 40", f"before 40: {d[:40].max().item():.1e}, after: min "
                        f"{d[40:].min().item():.1e}", "before exactly 0, after > 0",
                        d[:40].max().item() == 0.0 and d[40:].min().item() > 0))
    q, k, v = (torch.randn(2, 2, 64, 32) for _ in range(3))
    err = (attend(q, k, v, window=16) - attention_reference(q, k, v, attention_mask(64, 64, 16))).abs().max().item()
    checks.append(Check("fused attention == textbook formula (window 16)", f"max |diff| {err:.1e}", "< 1e-5",
                        err < 1e-5))
    return checks


# ---- Phases 2-3: pretraining ---------------------------------------------------------------------------------

def phase2(w: Workdir) -> list[Check]:
    from .common import seed_everything
    from .dataloader import DataLoader, build_val_loader
    from .loss_eval import evaluate_bpb
    from .optim import MuonAdamW, build_param_groups
    from .training import train_step

    checks = []
    for name in ("muon", "adamw"):
        torch.manual_seed(0)
        first, last = _overfit(_tiny_model(97), name, 60, 97)
        checks.append(Check(f"overfit one batch with {name} (60 steps, V 97)", f"{first:.3f} -> {last:.3f}",
                            "< 0.1 (from ln 97 = 4.575)", last < 0.1))
    tok = w.tok()
    seed_everything(0)
    model = _tiny_model(tok.vocab_size, depth=2, T=64)
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.01))
    loader = DataLoader(tok, 8, 64, base_dir=w.root, seed=0)
    tb = torch.tensor(tok.token_bytes())

    def bpb():
        return evaluate_bpb(model, build_val_loader(tok, 8, 64, tokens=8192, base_dir=w.root), tb)

    curve = [bpb()]
    batches = iter(loader)
    for step in range(1, 61):
        train_step(model, opt, batches, 1)
        if step % 20 == 0:
            curve.append(bpb())
    loader.close()
    init_expected = math.log2(tok.vocab_size) / _bytes_per_token(tok, w)
    checks.append(Check("val bpb at init ~ log2(V) / bytes per token", _fmt(curve[0]), f"{init_expected:.3f} +- 5%",
                        abs(curve[0] / init_expected - 1) < 0.05))
    falls = all(b < a for a, b in zip(curve, curve[1:]))
    checks.append(Check("val bpb falls (steps 0, 20, 40, 60)", " > ".join(f"{b:.3f}" for b in curve),
                        "each lower, last < 0.8 x first", falls and curve[-1] < 0.8 * curve[0]))
    checks.append(_resume_check(w))
    return checks


def _bytes_per_token(tok, w: Workdir) -> float:
    from .dataloader import build_val_loader

    tb = torch.tensor(tok.token_bytes())
    nb = nt = 0
    for _, y in build_val_loader(tok, 8, 64, tokens=8192, base_dir=w.root):
        b = tb[y.reshape(-1)]
        nb += b.sum().item()
        nt += (b > 0).sum().item()
    return nb / nt


def _with_base(root: Path):
    """Point MINI_NANOCHAT_HOME at `root` for a stage call (restored afterwards)."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        old = os.environ.get("MINI_NANOCHAT_HOME")
        os.environ["MINI_NANOCHAT_HOME"] = str(root)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("MINI_NANOCHAT_HOME", None)
            else:
                os.environ["MINI_NANOCHAT_HOME"] = old
    return cm()


def _train_args(w: Workdir, run_dir: Path, *extra) -> list[str]:
    return ["--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2", "--tokenizer", Workdir.TOKENIZER,
            "--eval-every", "0", "--eval-tokens", "256", "--dtype", "float32", "--warmup-steps", "2",
            "--run-dir", str(run_dir), *extra]


def _quiet(fn, *a, **kw):
    """Run a stage with its progress output swallowed (the checkpoint prints its own table)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*a, **kw)


def _resume_check(w: Workdir) -> Check:
    from safetensors.torch import load_file

    from .checkpoint import latest_checkpoint
    from .stages import base_train

    w.tok()
    runs = w.root / "runs"
    for d in ("full", "split"):
        if (runs / d).exists():
            import shutil

            shutil.rmtree(runs / d)
    with _with_base(w.root):
        _quiet(base_train.main, _train_args(w, runs / "full", "--num-iterations", "8"))
        _quiet(base_train.main, _train_args(w, runs / "split", "--num-iterations", "8", "--stop-at", "4"))
        _quiet(base_train.main, _train_args(w, runs / "split", "--num-iterations", "8", "--resume"))
    a = load_file(str(latest_checkpoint(runs / "full") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(runs / "split") / "model.safetensors"))
    diff = [k for k in a if not torch.equal(a[k], b.get(k, torch.empty(0)))]
    return Check("8 steps == 4 + stop + resume + 4 (weights)", f"{len(a) - len(diff)}/{len(a)} tensors bit-identical",
                 "all bit-identical", not diff and a.keys() == b.keys())


# ---- Phase 4: distributed --------------------------------------------------------------------------------------

def dist_worker(out: str, steps: int = 4, micro: int = 2) -> None:
    """A few optimizer steps of a tiny GPT on fixed batches through the library's training step: with W
    ranks (torchrun), rank r takes micro-batch r of each step; alone, it accumulates all `micro`
    micro-batches. Rank 0 (or the lone process) saves losses and weights to `out`."""
    from .distributed import GradSync, broadcast_parameters, destroy, init_distributed
    from .optim import MuonAdamW, build_param_groups
    from .training import train_step

    info = init_distributed("cpu", timeout_s=60)
    model = _tiny_model(97, depth=2, T=32)
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.01, scalar_lr=0.01))
    sync = GradSync(model, "ddp")
    broadcast_parameters(model)
    torch.manual_seed(1)
    data = torch.randint(0, 97, (steps, micro, 2, 33))  # (step, micro-batch, B, T+1): the same on every rank
    losses = []
    for s in range(steps):
        mine = [data[s, info.rank]] if info.world_size > 1 else list(data[s])
        losses.append(train_step(model, opt, iter([(b[:, :-1], b[:, 1:]) for b in mine]), len(mine), sync))
    if info.is_master:
        torch.save({"world_size": info.world_size, "losses": losses, "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}, out)
    destroy()


def phase4(w: Workdir) -> list[Check]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    ref, dist = w.root / "dist-ref.pt", w.root / "dist-2.pt"
    worker = ["-m", "mini_nanochat.checkpoints_lab", "dist-worker"]
    r1 = subprocess.run([sys.executable, *worker, str(ref)], capture_output=True, text=True, env=env, timeout=300)
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *worker,
                         str(dist)], capture_output=True, text=True, env=env, timeout=300)
    if r1.returncode or r2.returncode:
        tail = (r1.stderr or r2.stderr).strip().splitlines()[-1:] or ["?"]
        return [Check("torchrun 2 ranks (gloo) ran", f"exit {r1.returncode}/{r2.returncode}: {tail[0][:120]}", "exit 0",
                      False)]
    a, b = torch.load(ref, weights_only=True), torch.load(dist, weights_only=True)
    dl = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
    dw = max((a["weights"][k] - b["weights"][k]).abs().max().item() for k in a["weights"])
    ranks = (a["world_size"], b["world_size"])
    return [Check("the runs: 1 process, then torchrun", f"world sizes {ranks[0]} and {ranks[1]}", "1 and 2", ranks == (1, 2)),
            Check("2 ranks x 1 micro-batch == 1 process x 2 (losses, 4 steps)", f"max |diff| {dl:.1e}", "< 1e-5", dl < 1e-5),
            Check("... and the weights after 4 Muon steps", f"max |diff| {dw:.1e}", "< 1e-5", dw < 1e-5)]


# ---- Phase 5: data and packing -----------------------------------------------------------------------------

def phase5(w: Workdir) -> list[Check]:
    from .dataloader import DataLoader

    tok = w.tok()
    loader = DataLoader(tok, 4, 64, base_dir=w.root, seed=3, prefetch=0)
    batches = [next(loader) for _ in range(10)]
    full = all(x.shape == (4, 64) and bool((y >= 0).all()) for x, y in batches)
    starts = all(bool((x[:, 0] == tok.bos_id).all()) for x, _ in batches)
    shifted = all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)
    checks = [Check("packed rows are full: no padding, targets = inputs shifted", f"{10 * 4} rows",
                    "every position a real token", full and shifted),
              Check("every row starts with <|bos|>", "yes" if starts else "no", "yes", starts),
              Check("row utilisation (best-fit never pads)", f"{loader.stats.utilisation:.3f}, "
                    f"{loader.stats.cropped_fraction:.1%} of document tokens cropped", "1.000", loader.stats.utilisation == 1.0)]
    state = loader.state_dict()
    after = [next(loader) for _ in range(5)]
    loader.close()
    other = DataLoader(tok, 4, 64, base_dir=w.root, seed=3, prefetch=0)
    other.load_state_dict(state)
    again = [next(other) for _ in range(5)]
    other.close()
    same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(after, again))
    checks.append(Check("exact resume: state after 10 batches -> next 5 identical", "identical" if same else "different",
                        "identical", same))
    return checks


# ---- Phase 6: inference ----------------------------------------------------------------------------------

def phase6(w: Workdir) -> list[Check]:
    from .engine import Engine, calculator

    tok = w.tok()
    model = _noisy(_tiny_model(tok.vocab_size, depth=2, T=128, window_pattern="SL"))  # S = a window of 32
    prompt = tok.encode("The Congress shall", prepend=tok.bos_id)
    engine = Engine(model, tok, fast=False)  # the readable KV-cache path (gpt.KVCache)
    # CPU time of this process, not wall time: on a shared machine the wall clock measures the neighbours
    t0 = time.process_time()
    results, _ = engine.generate_batch(prompt, num_samples=1, max_tokens=100, temperature=0.0)
    t_cache = time.process_time() - t0
    got = results[0][len(prompt):]
    ids = list(prompt)
    t0 = time.process_time()
    with torch.no_grad():  # no cache: the whole sequence again for every new token
        for _ in range(len(got)):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    t_full = time.process_time() - t0
    checks = [Check(f"KV-cache greedy decode == full recompute ({len(got)} tokens, window 32 crossed)",
                    "same tokens" if got == ids[len(prompt):] else "different tokens", "same tokens",
                    got == ids[len(prompt):] and len(got) > 32)]
    checks.append(Check(f"cache speed-up at {len(got)} tokens (CPU time)", f"{t_full / t_cache:.1f}x ({t_full:.2f} s "
                        f"vs {t_cache:.2f} s)", "> 1x", t_full > t_cache))
    cases = {"2+3*4": "14", "(1+2)**10": "59049", "10/4": "2.5"}
    got_calc = {e: calculator(e) for e in cases}
    checks.append(Check("calculator", ", ".join(f"{e} = {v}" for e, v in got_calc.items()), ", ".join(
        f"{e} = {v}" for e, v in cases.items()), got_calc == cases))
    try:
        calculator("__import__('os')")
        refused = False
    except Exception:  # noqa: BLE001 - any refusal will do; CalculatorError is the expected one
        refused = True
    checks.append(Check("calculator refuses code", "refused" if refused else "ran it", "refused", refused))
    return checks


# ---- Phase 7: evaluation -----------------------------------------------------------------------------------

class _Scripted(torch.nn.Module):
    """A 'model' whose logits follow a rule about each row's text: the oracle knows the gold answers (its
    rows that end in a solved item get their next tokens at near certainty), the uniform one knows nothing."""

    def __init__(self, tok, golds: set[str] | None):
        super().__init__()
        self.tok, self.golds = tok, golds

    def forward(self, x):  # (B, T) -> (B, T, V)
        out = torch.zeros(*x.shape, self.tok.vocab_size)
        if self.golds is None:
            return out
        for i, row in enumerate(x.tolist()):
            r = list(row)
            while len(r) > 1 and r[-1] == self.tok.bos_id:
                r = r[:-1]
            text = self.tok.decode([t for t in r if t != self.tok.bos_id]).lstrip("\ufffd")
            if any(text.endswith(g) or g.endswith(text) for g in self.golds):
                out[i, torch.arange(len(row) - 1), x[i, 1:]] = 30.0
        return out


def phase7(w: Workdir) -> list[Check]:
    from . import core_eval
    from .tasks import TaskDataError
    from .tasks.core import BY_NAME

    tok = w.tok()
    checks = []
    dev = var = 0.0
    for name in ("arc_easy", "copa", "winogrande", "lambada_openai"):
        task = BY_NAME[name]
        try:
            items, pre = task.load()
        except TaskDataError as e:
            return [Check("CORE benchmark items installed", str(e)[:80], "installed (bash install.sh)", False)]
        golds = {core_eval.solved(it, " ") for it in items}
        kw = dict(items=items, shots=task.shots, max_len=256, device="cpu", name=name, max_per_task=12,
                  preamble=pre, progress=False)
        oracle = core_eval.evaluate_task(_Scripted(tok, golds), tok, **kw)
        checks.append(Check(f"CORE {name} ({task.kind}): oracle", f"centred {oracle['centred']:.3f} (n {oracle['n']})",
                            "1.000", abs(oracle["centred"] - 1) < 1e-9))
        uni = core_eval.evaluate_task(_Scripted(tok, None), tok, **kw)
        if task.kind == "lm":
            checks.append(Check(f"CORE {name}: uniform logits", f"accuracy {uni['accuracy']:.3f}", "0 (greedy never matches)",
                                uni["accuracy"] == 0))
        else:
            dev += (uni["accuracy"] - uni["chance"]) * uni["n"]
            var += uni["chance"] * (1 - uni["chance"]) * uni["n"]
            bound = 4 * math.sqrt(uni["chance"] * (1 - uni["chance"]) / uni["n"])
            checks.append(Check(f"CORE {name}: uniform logits", f"accuracy {uni['accuracy']:.3f}",
                                f"chance {uni['chance']:.3f} +- {bound:.2f} (ties broken at random)",
                                abs(uni["accuracy"] - uni["chance"]) <= bound))
    z = dev / math.sqrt(var) if var else 0.0
    checks.append(Check("uniform logits, multiple choice summed: (correct - chance) / std error", f"{z:+.2f}",
                        "|z| < 3", abs(z) < 3))
    return checks


# ---- Phase 8: SFT ------------------------------------------------------------------------------------------

def _arithmetic(n: int, seed: int) -> list[dict]:
    import random

    from .chat_data import conversation

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        out.append(conversation(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return out


def phase8(w: Workdir) -> list[Check]:
    from .dataloader import ConversationLoader
    from .loss_eval import evaluate_loss
    from .optim import MuonAdamW, build_param_groups
    from .training import train_step

    tok = w.tok()
    conv = _arithmetic(1, 0)[0]
    ids, mask = tok.render_conversation(conv)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    reply = conv["messages"][1]["content"]
    reply = reply if isinstance(reply, str) else "".join(p["text"] for p in reply)
    want = reply + "<|assistant_end|>"
    checks = [Check("loss mask = the assistant's tokens only", repr(trained)[:60], repr(want)[:60], trained == want)]
    torch.manual_seed(0)
    model = _tiny_model(tok.vocab_size, depth=2, T=64)
    opt = MuonAdamW(build_param_groups(model, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.01))
    train = ConversationLoader(tok, _arithmetic(400, 1), B=8, T=64, seed=0)
    val = ConversationLoader(tok, _arithmetic(40, 2), B=8, T=64, seed=0).one_pass()
    before = evaluate_loss(model, val)
    for _ in range(40):
        train_step(model, opt, train, 1)
    after = evaluate_loss(model, val)
    checks.append(Check("a tiny SFT lowers the held-out assistant loss (40 steps)", f"{before:.3f} -> {after:.3f}",
                        "< 0.5 x before", after < 0.5 * before))
    return checks


# ---- Phase 9: serving ----------------------------------------------------------------------------------------

def phase9(w: Workdir) -> list[Check]:
    import json

    from fastapi.testclient import TestClient

    from .engine import Engine
    from .server import create_app

    tok = w.tok()
    model = _tiny_model(tok.vocab_size, depth=1, T=64)
    app = create_app([Engine(model, tok)], tok, model_id="tiny", chat=True)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8, "seed": 1}
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json=body)
        ok = r.status_code == 200
        j = r.json() if ok else {}
        choice = (j.get("choices") or [{}])[0]
        shaped = ok and j.get("object") == "chat.completion" and isinstance(choice.get("message", {}).get("content"), str)
        u = j.get("usage", {})
        checks = [Check("POST /v1/chat/completions (OpenAI shape)", f"HTTP {r.status_code}, object {j.get('object')}, "
                        f"{u.get('completion_tokens')} completion tokens", "HTTP 200, chat.completion, 1-8 tokens",
                        shaped and 0 < u.get("completion_tokens", 0) <= 8)]
        r = c.post("/v1/chat/completions", json={**body, "stream": True})
        lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
        chunks = [json.loads(x) for x in lines[:-1]] if lines else []
        checks.append(Check("streamed: chunks, then data: [DONE]", f"{len(chunks)} chunks, last {lines[-1] if lines else None!r}",
                            "chat.completion.chunk ..., '[DONE]'", bool(lines) and lines[-1] == "[DONE]" and
                            all(ch.get("object") == "chat.completion.chunk" for ch in chunks)))
        r = c.post("/v1/chat/completions", json={**body, "temperature": -1})
        err = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
        checks.append(Check("a bad request is an OpenAI-style 400", f"HTTP {r.status_code}, {str(err.get('message'))[:50]!r}",
                            "HTTP 400 with error.message", r.status_code == 400 and bool(err.get("message"))))
    return checks


PHASE_FUNCS = {"0": phase0, "1": phase1, "2": phase2, "3": phase2, "4": phase4, "5": phase5, "6": phase6,
               "7": phase7, "8": phase8, "9": phase9}
TITLES = {"0": "the tokenizer", "1": "the model", "2": "pretraining (Phases 2-3)", "3": "pretraining (Phases 2-3)",
          "4": "distributed training", "5": "data and packing", "6": "inference", "7": "evaluation",
          "8": "supervised fine-tuning", "9": "serving"}


def run_phase(phase: str, workdir: Workdir) -> list[Check]:
    """The checks of one phase ("2" and "3" are the same page and the same checks). Single-threaded: the
    models are tiny, and on a busy machine a second thread only spins waiting for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        return PHASE_FUNCS[str(phase)](workdir)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # the Phase 4 worker, started by phase4() alone and under torchrun
    if len(sys.argv) == 3 and sys.argv[1] == "dist-worker":
        dist_worker(sys.argv[2])
    else:
        sys.exit("usage: python -m mini_nanochat.checkpoints_lab dist-worker OUT (run by `checkpoint 4`)")
