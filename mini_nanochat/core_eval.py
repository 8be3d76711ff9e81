"""
The CORE scorer: how a base model answers a benchmark without being able to talk.

A base model only gives probabilities of text, so every question becomes "which text is most likely?"
(DCLM, Li et al. 2024, arXiv:2406.11794; the same method as MosaicML's eval gauntlet and nanochat's
core_eval). An item is one of three kinds:

  mc      multiple choice: one context, several continuations; the model picks the continuation with
          the lowest *mean* loss per token (mean, not sum, so long answers are not punished for length)
              context  "Question: Which gas do plants take in?\\nAnswer:"
              choices  ["oxygen", "carbon dioxide"]   -> scored: " oxygen" vs " carbon dioxide"
  schema  several contexts, one continuation (Winograd-style): the blank is filled with each option and
          the model picks the context under which the *rest of the sentence* is most likely
              contexts ["The trophy didn't fit in the case because the trophy",
                        "The trophy didn't fit in the case because the case"]
              choice   ["was too big."]
  lm      language modelling: one context, one continuation, correct only if greedy decoding (argmax at
          every position) reproduces the continuation token for token (LAMBADA, SQuAD, Jeopardy ...)

Few-shot: `shots` solved examples of the same task, drawn from the other items with a fixed seed, are
put before the item, separated by blank lines. A model with a short context cannot hold DCLM's 10 shots:
we then drop whole examples (the ones farthest from the question first) until the prompt fits, and
record how many were used; only if the item alone is too long is its beginning cut off.

Accuracy is then *centred*: (accuracy - chance) / (1 - chance), so 0 means "no better than guessing"
and 1 means "always right", whatever the number of choices. CORE = mean centred accuracy over tasks.

All the options of an item are scored in one forward pass (a batch of B rows, padded on the right).
Ties (a model whose losses are exactly equal, e.g. uniform logits) are broken at random with a seed,
so that a model that knows nothing scores chance and not "how often the answer is A" (nanochat and
DCLM take the first of equal losses).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("mc", "schema", "lm")
SEPARATOR = "\n\n"  # between few-shot examples


# ---------------------------------------------------------------------------------------------------
# 1. Items: check them (a user's --tasks-file arrives here too)

def check_item(item: dict, where: str = "item") -> dict:
    """Validate one item and return it normalised; raise ValueError with a message a user can act on.

        >>> check_item({"id": 1, "context": "2+2=", "choices": ["4", "5"], "gold": 0})["kind"]
        'mc'
    """
    if not isinstance(item, dict):
        raise ValueError(f"{where}: an item is a JSON object, got {type(item).__name__}")
    kind = item.get("kind", "mc")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for key in ("context", "choices", "gold"):
        if key not in item:
            raise ValueError(f"{where}: missing field {key!r} (an item has id, context, choices, gold, kind)")
    ctx, choices, gold = item["context"], item["choices"], item["gold"]
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError(f"{where}: choices must be a non-empty list of non-empty strings")
    if kind == "schema":
        if not isinstance(ctx, list) or len(ctx) < 2 or not all(isinstance(c, str) for c in ctx):
            raise ValueError(f"{where}: a schema item's context is a list of at least 2 strings (one per option)")
        if len(choices) != 1:
            raise ValueError(f"{where}: a schema item has exactly one continuation in choices")
        n_options = len(ctx)
    else:
        if not isinstance(ctx, str):
            raise ValueError(f"{where}: context must be a string")
        if kind == "mc" and len(choices) < 2:
            raise ValueError(f"{where}: a multiple-choice item needs at least 2 choices")
        if kind == "lm" and len(choices) != 1:
            raise ValueError(f"{where}: an lm item has exactly one continuation in choices")
        n_options = len(choices)
    if type(gold) is not int or not 0 <= gold < n_options:
        raise ValueError(f"{where}: gold must be an integer index in 0..{n_options - 1}, got {gold!r}")
    item_id = item.get("id", where)
    if not isinstance(item_id, (str, int)):
        raise ValueError(f"{where}: id must be a string or an integer")
    return {"id": str(item_id), "kind": kind, "context": ctx, "choices": choices, "gold": gold}


def chance_level(items: list[dict]) -> float:
    """The accuracy of guessing: mean of 1/options for mc and schema items, 0 for lm items.

        >>> chance_level([{"kind": "mc", "choices": ["a", "b"]}, {"kind": "mc", "choices": ["a", "b", "c", "d"]}])
        0.375
    """
    def one(it):
        if it["kind"] == "lm":
            return 0.0
        return 1.0 / (len(it["context"]) if it["kind"] == "schema" else len(it["choices"]))
    return sum(one(it) for it in items) / len(items) if items else 0.0


def centred(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 = guessing, 1 = perfect, negative = worse than guessing."""
    return (accuracy - chance) / (1.0 - chance)


# ---------------------------------------------------------------------------------------------------
# 2. Prompts: text for every option of an item, with its few-shot examples

def solved(item: dict, delim: str) -> str:
    """A few-shot example: the item with its correct answer filled in."""
    if item["kind"] == "schema":
        return f"{item['context'][item['gold']]}{delim}{item['choices'][0]}"
    return f"{item['context']}{delim}{item['choices'][item['gold']]}"


def render(item: dict, fewshot: list[dict], delim: str = " ", preamble: str = "") -> list[str]:
    """The texts to score, one per option (lm: [prompt without the answer, prompt with it]).

        >>> render({"kind": "mc", "context": "2+2=", "choices": ["4", "5"], "gold": 0},
        ...        [{"kind": "mc", "context": "1+1=", "choices": ["2", "3"], "gold": 0}])
        ['1+1= 2\\n\\n2+2= 4', '1+1= 2\\n\\n2+2= 5']
    """
    head = [preamble] if preamble else []
    head += [solved(ex, delim) for ex in fewshot]
    prefix = SEPARATOR.join(head) + SEPARATOR if head else ""
    if item["kind"] == "schema":
        return [f"{prefix}{c}{delim}{item['choices'][0]}" for c in item["context"]]
    if item["kind"] == "lm":
        return [f"{prefix}{item['context']}".rstrip(), f"{prefix}{item['context']}{delim}{item['choices'][0]}"]
    return [f"{prefix}{item['context']}{delim}{c}" for c in item["choices"]]


def common_length(rows: list[list[int]], from_end: bool = False) -> int:
    """How many tokens all rows share at the start (or, from_end=True, at the end).

        >>> common_length([[1, 2, 3], [1, 2, 4]]), common_length([[9, 5, 6], [8, 5, 6]], from_end=True)
        (2, 2)
    """
    n = min(len(r) for r in rows)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(r[j] != rows[0][j] for r in rows):
            return i
    return n


def spans(kind: str, rows: list[list[int]]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token rows to score and each row's scored span [start, end): the tokens of the answer.

    mc: the rows share the context, so the answer starts where they first differ. schema: the rows
    share the continuation, so it is their common end. lm: rows = [without, with]; the answer is what
    `with` adds. Every span keeps at least one token and never starts at position 0 (nothing predicts
    the first token)."""
    if kind == "lm":
        without, with_ = rows
        start = len(without) if with_[:len(without)] == without else common_length([without, with_])
        start = max(1, min(start, len(with_) - 1))
        return [with_], [(start, len(with_))]
    if kind == "schema":
        tail = min(common_length(rows, from_end=True), min(len(r) for r in rows) - 1)
        tail = max(tail, 1)
        return rows, [(len(r) - tail, len(r)) for r in rows]
    head = common_length(rows)
    return rows, [(max(1, min(head, len(r) - 1)), len(r)) for r in rows]


@dataclass
class Prepared:
    rows: list[list[int]]
    spans: list[tuple[int, int]]
    shots: int          # few-shot examples that fitted
    cropped: int        # tokens cut from the left of the longest row (0 = none)


def prepare(tok, item: dict, fewshot: list[dict], max_len: int, delim: str = " ", preamble: str = "") -> Prepared:
    """Tokenise an item's options with as many of `fewshot` as fit in `max_len` tokens (BOS included).

    Examples are dropped from the front (the farthest from the question) until the longest row fits;
    token counts of the examples alone guess where to start, then the real rows are checked."""
    k = len(fewshot)
    if k:
        bare = max(len(r) for r in tok.encode_batch(render(item, [], delim, preamble))) + 1
        costs = [len(x) + 2 for x in tok.encode_batch([solved(ex, delim) for ex in fewshot])]  # + separator
        while k and bare + sum(costs[len(fewshot) - k:]) > max_len:
            k -= 1
    while True:
        texts = render(item, fewshot[len(fewshot) - k:], delim, preamble)
        rows = [[tok.bos_id] + r for r in tok.encode_batch(texts)]
        if k == 0 or max(len(r) for r in rows) <= max_len:
            break
        k -= 1
    rows, sp = spans(item["kind"], rows)
    cropped = max(0, max(len(r) for r in rows) - max_len)
    if cropped:  # the item alone is too long: keep its end (where the answer is)
        new_rows, new_spans = [], []
        for r, (s, e) in zip(rows, sp):
            cut = max(0, len(r) - max_len)
            new_rows.append(r[cut:])
            new_spans.append((max(1, s - cut), e - cut))
        rows, sp = new_rows, new_spans
    return Prepared(rows, sp, k, cropped)


# ---------------------------------------------------------------------------------------------------
# 3. Scoring: one forward for all the options of an item

PAD_MULTIPLE = 64


@torch.no_grad()
def score_rows(model, rows: list[list[int]], spans_: list[tuple[int, int]], pad_id: int, device,
               max_len: int | None = None) -> tuple[list[float], list[bool], list[list[int]]]:
    """Forward the padded rows once; per row: mean loss over its span, whether greedy decoding
    reproduces the span, and the greedy tokens themselves.

    Position t's logits predict token t+1, so the span [s, e) is scored by logits at s-1 .. e-2.
    Only those positions are turned into log-probabilities (a (B, T, V) float32 log-softmax of a
    65k vocabulary would cost more memory than the model).

    Rows are padded (on the right, where causal attention cannot see it) to a multiple of 64 tokens, so
    a run meets at most max_len/64 distinct shapes: kernels are prepared per shape on first use (oneDNN
    on CPU, and a recompilation under torch.compile). How much it saves is unsettled: 7x on one
    micro-benchmark of 40 new lengths, 1.0-1.4x in a later one, on shared cores (2026-12-01). In bf16 the
    padding length moves losses slightly, which is why base-eval scores in fp32 on a CPU."""
    T = max(len(r) for r in rows)
    T = max(T, min(-(-T // PAD_MULTIPLE) * PAD_MULTIPLE, max_len or T))
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    x = x.to(device)
    logits = model(x)  # (B, T, V)
    means, greedy_ok, greedy = [], [], []
    for i, (s, e) in enumerate(spans_):
        lg = logits[i, s - 1:e - 1].float()  # (n, V): the predictions of the span's tokens
        target = x[i, s:e]  # (n,)
        losses = F.cross_entropy(lg, target, reduction="none")  # (n,) nats
        means.append(losses.mean().item())
        pred = lg.argmax(dim=-1)
        greedy_ok.append(bool(torch.equal(pred, target)))
        greedy.append(pred.tolist())
    return means, greedy_ok, greedy


def pick(losses: list[float], rng: random.Random) -> int:
    """Index of the lowest loss; exact ties broken at random (see the module docstring)."""
    best = min(losses)
    return rng.choice([i for i, v in enumerate(losses) if v == best])


def fewshot_for(pool: list[dict], index: int, shots: int, seed: int = 1234) -> list[dict]:
    """`shots` examples from the pool other than the item itself, the same ones on every run
    (random.Random(seed + index), as nanochat seeds them)."""
    if shots <= 0 or len(pool) < 2:
        return []
    others = [j for j in range(len(pool)) if j != index]
    return [pool[j] for j in random.Random(seed + index).sample(others, min(shots, len(others)))]


def evaluate_item(model, tok, item: dict, fewshot: list[dict], max_len: int, device, delim: str = " ",
                  preamble: str = "", rng: random.Random | None = None) -> dict:
    """Score one item; the returned record is what base-eval saves per item."""
    p = prepare(tok, item, fewshot, max_len, delim, preamble)
    losses, greedy_ok, greedy = score_rows(model, p.rows, p.spans, tok.bos_id, device, max_len)
    record = {"id": item["id"], "kind": item["kind"], "gold": item["gold"], "shots": p.shots}
    if p.cropped:
        record["cropped_tokens"] = p.cropped
    if item["kind"] == "lm":
        record.update(prediction=tok.decode(greedy[0]), gold_text=item["choices"][0], loss=losses[0],
                      correct=greedy_ok[0])
    else:
        pred = pick(losses, rng or random.Random(item["id"]))
        record.update(losses=losses, prediction=pred, correct=pred == item["gold"])
    return record


def subsample(items: list[dict], max_per_task: int, seed: int = 1337) -> list[int]:
    """Indices of the items to score: all of them, or the first `max_per_task` of a seeded shuffle
    (the same subset on every run, and a fair sample of the task, not its first lines)."""
    order = list(range(len(items)))
    if 0 < max_per_task < len(items):
        random.Random(seed).shuffle(order)
        order = order[:max_per_task]
    return order


def evaluate_task(model, tok, items: list[dict], shots: int, max_len: int, device, name: str = "task",
                  max_per_task: int = -1, delim: str = " ", preamble: str = "", progress: bool = True) -> dict:
    """Score a task's items (strided over ranks under torchrun); returns
    {"accuracy", "centred", "chance", "n", "mean_shots", "records"} with every rank's records."""
    from tqdm import tqdm

    from .common import get_dist_info
    from .distributed import all_reduce, gather_objects

    dist = get_dist_info()
    chosen = subsample(items, max_per_task)
    mine = chosen[dist.rank::dist.world_size]
    was_training = model.training
    model.eval()
    records = []
    for i in tqdm(mine, desc=name, unit="item", disable=not (progress and dist.is_master), leave=False):
        rec = evaluate_item(model, tok, items[i], fewshot_for(items, i, shots), max_len, device, delim, preamble,
                            rng=random.Random(f"{name}:{items[i]['id']}"))
        records.append(rec)
    model.train(was_training)
    counts = torch.tensor([sum(r["correct"] for r in records), len(records), sum(r["shots"] for r in records)],
                          dtype=torch.float64, device=device)
    correct, n, shots_used = all_reduce(counts).tolist()  # summed over ranks, on the model's device
    if dist.world_size > 1:
        records = [r for part in gather_objects(records) for r in part]
    chance = chance_level([items[i] for i in chosen])
    accuracy = correct / n if n else 0.0
    return {"accuracy": accuracy, "centred": centred(accuracy, chance), "chance": chance, "n": int(n),
            "mean_shots": shots_used / n if n else 0.0, "records": records}
