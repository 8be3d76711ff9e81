"""Phase 8: the conversation loader (masks correct in packed batches, whole conversations, exact resume),
the SFT validation loss, the run-family resolution; the sft and rl stages on a tiny model (the tool
format learned within the test budget, RL raises the reward on a toy task, exact resume)."""
from __future__ import annotations

import random

import pytest
import torch

from mini_nanochat.dataloader import ConversationLoader


@pytest.fixture(scope="module")
def tok(base_dir):
    from mini_nanochat.stages import tok_train
    from mini_nanochat.tokenizer import get_tokenizer

    tok_train.main(["--name", "sft-test", "--vocab-size", "512", "--max-chars", "500000"])
    return get_tokenizer("sft-test")


def _convs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        words = " ".join(rng.choice(["hello", "there", "friend", "numbers", "are", "fun"]) for _ in range(rng.randint(1, 10)))
        out.append({"messages": [
            {"role": "user", "content": f"{words} What is {a} + {b}?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me compute. "},
                                              {"type": "python", "text": f"{a}+{b}"},
                                              {"type": "python_output", "text": str(a + b)},
                                              {"type": "text", "text": f"It is {a + b}."}]}]})
    return out


def test_packed_rows_hold_whole_conversations_and_train_only_the_assistant(tok):
    convs = _convs(200)
    rendered = {tuple(tok.render_conversation(c, 10**9)[0]): tok.render_conversation(c, 10**9)[1] for c in convs}
    T = 128
    loader = ConversationLoader(tok, convs, B=4, T=T, seed=1)
    assert loader.dropped == 0
    seen = 0
    for _ in range(10):
        x, y = next(loader)
        assert x.shape == y.shape == (4, T)
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            # walk the row: each conversation must appear whole, then only padding (<|bos|>, target -1)
            i = 0
            while i < T:
                match = next((ids for ids in rendered if row_x[i:i + len(ids)] == list(ids)[:T - i]
                              and i + len(ids) <= T + 1), None)
                if match is None:
                    assert all(t == tok.bos_id for t in row_x[i:]) and all(t == -1 for t in row_y[i:]), "not padding"
                    break
                mask = rendered[match]
                for j in range(len(match) - 1):  # the target of position i+j is token j+1 of the conversation
                    if i + j < T:
                        assert row_y[i + j] == (match[j + 1] if mask[j + 1] else -1)
                seen += 1
                i += len(match)
    assert seen > 20


def test_the_tool_output_is_never_a_target(tok):
    convs = _convs(50)
    x, y = next(ConversationLoader(tok, convs, B=8, T=128))
    out_start, out_end = tok.encode_special("output_start"), tok.encode_special("output_end")
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        inside = False
        for t, target in zip(row_x[1:] + [None], row_y):
            if t == out_start:
                inside = True
            if inside and t is not None:
                assert target == -1  # the target predicting a token inside <|output_start|>...<|output_end|>
            if t == out_end:
                inside = False


def test_too_long_conversations_are_dropped_not_cropped(tok):
    convs = _convs(30) + [{"messages": [{"role": "user", "content": "word " * 400},
                                        {"role": "assistant", "content": "ok"}]}]
    loader = ConversationLoader(tok, convs, B=2, T=64)
    assert loader.dropped >= 1 and len(loader.items) + loader.dropped == 31


def test_exact_resume(tok):
    convs = _convs(120)
    a = ConversationLoader(tok, convs, B=3, T=96, seed=5)
    for _ in range(7):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(5)]
    b = ConversationLoader(tok, convs, B=3, T=96, seed=5)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, (next(b) for _ in range(5))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="seed"):
        ConversationLoader(tok, convs, B=3, T=96, seed=6).load_state_dict(state)


def test_one_pass_covers_every_conversation_once(tok):
    convs = _convs(37)
    loader = ConversationLoader(tok, convs, B=4, T=128, shuffle=False)
    batches = loader.one_pass()
    assert loader.epoch == 0 and loader.position == 0  # the training position is untouched
    trained = sum(int((y >= 0).sum()) for _, y in batches)
    assert trained == sum(sum(m[1:]) for _, m in loader.items)  # every assistant token of every conversation, once


def test_evaluate_loss_is_the_mean_over_trained_targets(tok):
    from mini_nanochat.gpt import GPT, GPTConfig
    from mini_nanochat.loss_eval import evaluate_loss

    model = GPT(GPTConfig.from_depth(1, vocab_size=tok.vocab_size, sequence_len=128), device="cpu",
                compute_dtype=torch.float32)
    model.init_weights()
    batches = ConversationLoader(tok, _convs(20), B=4, T=128, shuffle=False).one_pass()
    got = evaluate_loss(model, batches)
    with torch.no_grad():
        nats = sum(float(model(x, y, loss_reduction="sum")) for x, y in batches)
    n = sum(int((y >= 0).sum()) for _, y in batches)
    assert got == pytest.approx(nats / n, rel=1e-6)


def test_resolve_run_prefers_the_most_trained_stage(tmp_path):
    from mini_nanochat.checkpoint import resolve_run

    runs = tmp_path / "runs"
    assert resolve_run(runs, "speedrun") == runs / "speedrun"
    for tag in ("speedrun", "speedrun-sft"):
        (runs / tag / "checkpoints" / "step_000001").mkdir(parents=True)
        (runs / tag / "checkpoints" / "step_000001" / "meta.json").write_text("{}")
    assert resolve_run(runs, "speedrun") == runs / "speedrun-sft"
    assert resolve_run(runs, "speedrun", "base") == runs / "speedrun"
    assert resolve_run(runs, "speedrun", "rl") == runs / "speedrun-rl"
    assert resolve_run(runs, "speedrun-sft") == runs / "speedrun-sft"


# ---- the stages on a tiny model ----

@pytest.fixture(scope="module")
def tiny_base(base_dir, tok):
    """A barely pretrained depth-2 base run (the stages only need its weights and tokenizer)."""
    from mini_nanochat.stages import base_train

    base_train.main(["--depth", "2", "--max-seq-len", "128", "--device-batch-size", "4", "--tokenizer", "sft-test",
                     "--num-iterations", "20", "--eval-every", "0", "--eval-tokens", "512", "--dtype", "float32",
                     "--model-tag", "sft-tiny"])
    return base_dir / "runs" / "sft-tiny"


SFT_ARGS = ["--model-tag", "sft-tiny", "--mixture-size", "3000", "--device-batch-size", "8", "--dtype", "float32",
            "--eval-every", "0"]


def test_sft_teaches_a_tiny_model_the_calculator_format(tiny_base):
    """Within a test budget (~150 steps of a depth-2 model) the model learns to answer arithmetic it never
    saw by calling the calculator, and the run is marked as a chat model."""
    from mini_nanochat.checkpoint import latest_checkpoint, read_meta
    from mini_nanochat.stages import sft

    s = sft.main([*SFT_ARGS, "--num-iterations", "150", "--save-every", "0", "--eval-questions", "20",
                  "--lr-scale", "2"])
    assert s["arithmetic"]["tool_use"] >= 0.8, s
    assert s["multi_turn"]["turns"] == 4 and 0 <= s["multi_turn"]["stopped"] <= 4
    meta = read_meta(latest_checkpoint(tiny_base.parent / "sft-tiny-sft"))
    assert meta["sft"] is True and meta["kind"] == "sft" and "sft-tiny" in meta["parent"]


def _weights(run_dir):
    from safetensors.torch import load_file

    from mini_nanochat.checkpoint import latest_checkpoint

    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def _cut_back(src, dst, step: int):
    """A copy of run `src` as if it had stopped after checkpoint `step`."""
    import json
    import shutil

    shutil.copytree(src, dst)
    for ck in (dst / "checkpoints").glob("step_*"):
        if int(ck.name.split("_")[1]) > step:
            shutil.rmtree(ck)
    lines = [ln for ln in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))


def test_sft_and_rl_resume_exactly(tiny_base):
    from mini_nanochat.stages import rl, sft

    runs = tiny_base.parent
    sft.main([*SFT_ARGS, "--output-tag", "res-sft", "--num-iterations", "6", "--save-every", "3", "--eval-questions", "0"])
    _cut_back(runs / "res-sft", runs / "res-sft2", 3)
    sft.main([*SFT_ARGS, "--output-tag", "res-sft2", "--num-iterations", "6", "--save-every", "3",
              "--eval-questions", "0", "--resume"])
    a, b = _weights(runs / "res-sft"), _weights(runs / "res-sft2")
    assert all(torch.equal(a[k], b[k]) for k in a)

    rl_args = ["--model-tag", "res", "--source-tag", "res-sft", "--num-iterations", "4", "--save-every", "2",
               "--prompts-per-step", "2", "--samples", "3", "--max-new-tokens", "16", "--eval-questions", "0",
               "--dtype", "float32"]
    rl.main([*rl_args, "--output-tag", "res-rl"])
    _cut_back(runs / "res-rl", runs / "res-rl2", 2)
    rl.main([*rl_args, "--output-tag", "res-rl2", "--resume"])
    a, b = _weights(runs / "res-rl"), _weights(runs / "res-rl2")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_policy_gradient_raises_the_reward_of_a_toy_task(tok):
    """REINFORCE with a group-mean baseline, through the stage's own sampling and loss: reward 1 when the
    reply's first token is even. A random model starts near 1/2 and must climb well above it."""
    from mini_nanochat.engine import Engine
    from mini_nanochat.gpt import GPT, GPTConfig
    from mini_nanochat.stages.rl import RLConfig, policy_gradient_loss, sample_group

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, vocab_size=tok.vocab_size, sequence_len=64), device="cpu",
                compute_dtype=torch.float32)
    model.init_weights()
    engine = Engine(model, tok, fast=False)
    cfg = RLConfig(max_new_tokens=2, temperature=1.0, top_k=0, samples=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    n_prompt = len(tok.render_for_completion([{"role": "user", "content": "hi"}]))

    def reward(seq):
        return float(seq[n_prompt] % 2 == 0)

    def mean_reward(seed):
        group = sample_group(engine, tok, "hi", 64, RLConfig(max_new_tokens=1, top_k=0, samples=64), seed)
        return sum(reward(seq) for seq, _, _ in group) / 64

    before = mean_reward(999)
    for step in range(30):
        group = sample_group(engine, tok, "hi", cfg.samples, cfg, seed=step)
        r = [reward(seq) for seq, _, _ in group]
        mean = sum(r) / len(r)
        n_tokens = sum(sum(m) for _, m, _ in group)
        model.train()
        loss = policy_gradient_loss(model, [g[0] for g in group], [g[1] for g in group], [x - mean for x in r],
                                    tok.bos_id, n_tokens)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = mean_reward(999)
    assert after >= before + 0.3 and after > 0.8, (before, after)
