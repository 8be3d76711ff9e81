"""
The inference engine: KV-cached decoding, batched sampling from one prompt, and the calculator tool.

    engine = Engine(model, tokenizer)
    for column in engine.generate(ids, num_samples=4, max_tokens=64, temperature=0.8, top_k=50, seed=0):
        ...                                   # one token per sample per step (a list of num_samples ints)
    results, masks = engine.generate_batch(ids, num_samples=4, max_tokens=64)

Decoding speed tricks (row-split products on CPU, CUDA graphs on GPU) live in fast_decode.py, switched by
`Engine(..., fast=True)`, the default.

Decoding with a cache: the prompt is run through the model once (prefill), filling the per-layer keys and
values; each new token then costs one position of compute instead of re-running the whole sequence. The
prefilled cache is copied into every sample's row, so N samples share one prefill.

Tool use: when a sample writes <|python_start|> expr <|python_end|>, the engine evaluates `expr` with a
safe calculator and forces <|output_start|> result <|output_end|> into that sample's stream (mask 0: these
tokens were not sampled, and SFT does not train on them), then generation continues.
"""
from __future__ import annotations

import ast
import io
import math
import operator
import tokenize
from collections import deque
from collections.abc import Iterator

import torch

from .gpt import KVCache

# ====================================================================================================
# The calculator: arithmetic and a few string operations, parsed with `ast` against a whitelist.
# Never eval(): the expression is walked node by node and only the listed node types are interpreted.
# Every way to make it slow or huge is bounded: input length, nesting depth, exponent size, string size,
# and every integer that Python would use as a count or a position (ADR 0025).
# ====================================================================================================

MAX_EXPR_CHARS = 1000
MAX_DEPTH = 40  # brackets open at once, and operands nested inside operands (a flat 1+2+3+... is one level)
MAX_STR = 10_000
MAX_POW_DIGITS = 1000  # refuse a ** b whose result would have more digits than this
# Indices, slice bounds and steps, and the counts/positions of string methods. No string or list is longer
# than MAX_STR, so a larger value means nothing; beyond 2**63 CPython raises OverflowError instead.
MAX_INT_ARG = MAX_STR
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_STR_METHODS = {"count", "upper", "lower", "replace", "startswith", "endswith", "find", "strip", "split",
                "title", "index"}
_FUNCS = {"len": len, "abs": abs, "round": round, "min": min, "max": max}
# what Python raises when an allowed operation gets values it cannot handle; each becomes a CalculatorError
_ARITH_ERRORS = (ZeroDivisionError, OverflowError, TypeError, ValueError, IndexError)


# How a calculator call reads to a person (terminal chat, the server's replies, the web page):
#   <|python_start|>123 + 456<|python_end|><|output_start|>579<|output_end|>  ->  [calculator: 123 + 456 = 579]
TOOL_DISPLAY = {"<|python_start|>": "[calculator: ", "<|python_end|>": " = ", "<|output_end|>": "] "}


def tool_display(tok) -> dict[int, str]:
    """{special token id: the text shown in its place} for a tokenizer's tool-call markers."""
    return {tok.special_tokens[k]: v for k, v in TOOL_DISPLAY.items() if k in tok.special_tokens}


class CalculatorError(Exception):
    """The expression is not allowed or cannot be computed; the message says why."""


def _check_value(value):
    """Every value passes here: only finite real numbers, strings and lists of strings, each within its
    size bound. Checked after the operation, so it is the second line for sizes: operations that could
    build something huge are bounded before they run."""
    if isinstance(value, bool):  # startswith / endswith
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_POW_DIGITS * 3.33:
            raise CalculatorError("integer result too large")
    elif isinstance(value, float):
        if not math.isfinite(value):  # 1e309, 1e308*10: inf would crash round() and int() later
            raise CalculatorError("float result is not finite (overflow)")
    elif isinstance(value, str):
        if len(value) > MAX_STR:
            raise CalculatorError(f"string result longer than {MAX_STR} characters")
    elif isinstance(value, list):
        if len(value) > MAX_STR or sum(len(str(v)) for v in value) > MAX_STR:
            raise CalculatorError("list result too large")
    elif isinstance(value, complex):  # (-8)**0.5: the only way to get one (complex literals are refused)
        raise CalculatorError("complex result (a fractional power of a negative number?) is not allowed")
    else:
        raise CalculatorError(f"{type(value).__name__} result is not allowed")
    return value


def _small_int(value, what: str) -> int:
    """An integer used as a position or a count: at most MAX_INT_ARG either way."""
    if not isinstance(value, int):
        raise CalculatorError(f"{what} must be an integer")
    if abs(value) > MAX_INT_ARG:
        raise CalculatorError(f"{what} must be within +-{MAX_INT_ARG}")
    return value


def _binop(op: ast.operator, a, b):
    """a <op> b for one whitelisted operator, with the size checks that must come before computing."""
    if isinstance(op, ast.Pow):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            raise CalculatorError("** needs numbers")
        if abs(b) > 10_000 or (abs(a) > 1 and b > 0 and b * math.log10(abs(a)) > MAX_POW_DIGITS):
            raise CalculatorError(f"exponent too large (result over {MAX_POW_DIGITS} digits)")
    if isinstance(op, ast.Mult) and (isinstance(a, (str, list)) or isinstance(b, (str, list))):
        s, n = (a, b) if isinstance(a, (str, list)) else (b, a)
        if not isinstance(n, int):
            raise CalculatorError("string/list repetition needs an integer count")
        chars = len(s) if isinstance(s, str) else sum(len(x) for x in s)
        if max(len(s), chars) * max(n, 0) > MAX_STR:  # checked before the copy is built
            raise CalculatorError(f"string/list repetition over {MAX_STR} items")
    if isinstance(op, ast.Mod) and not isinstance(a, (int, float)):
        raise CalculatorError("% is only allowed on numbers (no printf-style formatting)")
    try:
        return _check_value(_BINOPS[type(op)](a, b))
    except _ARITH_ERRORS as e:
        raise CalculatorError(f"{type(e).__name__}: {e}") from None


def _call_method(name: str, target, args: list):
    """target.name(*args) for one of _STR_METHODS, with its integer arguments and its result bounded."""
    if not isinstance(target, str) or not all(isinstance(a, (str, int)) for a in args):
        raise CalculatorError(f".{name}() is only allowed on strings, with string/int arguments")
    for a in args:  # positions (find, count, ...) and counts (replace, split): 10**100 would overflow C
        if isinstance(a, int):
            _small_int(a, f"integer argument of .{name}()")
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        # the exact result length, computed before the result is built (count("") is len + 1, as replace uses)
        old, new = args[0], args[1]
        n = target.count(old)
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            n = min(n, args[2])
        if len(target) + n * (len(new) - len(old)) > MAX_STR:
            raise CalculatorError(f"replace() result would exceed {MAX_STR} characters")
    try:
        return _check_value(getattr(target, name)(*args))
    except _ARITH_ERRORS as e:
        raise CalculatorError(f".{name}(): {e}") from None


def _eval(node, depth: int = 0):
    """The value of one whitelisted node. `depth` counts the operations this node is nested inside: each
    operand, argument, index and unary operand is one level deeper than its parent, except the left spine
    of an operator chain (below)."""
    if depth > MAX_DEPTH:
        raise CalculatorError(f"expression nested deeper than {MAX_DEPTH}")
    d = depth + 1
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) and not isinstance(node.value, bool):
        return _check_value(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        v = _eval(node.operand, d)
        if not isinstance(v, (int, float)):
            raise CalculatorError("unary +/- needs a number")
        return _UNARY[type(node.op)](v)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        # `1+2+3+4` parses as (((1+2)+3)+4): a spine of BinOps down the left, as long as the sum. As written
        # it is flat, so walk the spine with a loop: the whole chain is one level of depth and one Python
        # frame, and a long sum is limited by MAX_EXPR_CHARS only. Parentheses that really nest the left
        # side, `((1+2)+3)`, are counted by the bracket check in calculator().
        spine = [node]
        while isinstance(spine[-1].left, ast.BinOp) and type(spine[-1].left.op) in _BINOPS:
            spine.append(spine[-1].left)
        value = _eval(spine[-1].left, d)
        for op_node in reversed(spine):  # innermost first: the order Python evaluates in
            value = _binop(op_node.op, value, _eval(op_node.right, d))
        return value
    if isinstance(node, ast.Subscript):
        v = _eval(node.value, d)
        if not isinstance(v, (str, list)):
            raise CalculatorError("only strings and lists can be indexed")
        if isinstance(node.slice, ast.Slice):
            bounds = {"start": node.slice.lower, "stop": node.slice.upper, "step": node.slice.step}
            parts = [None if x is None else _small_int(_eval(x, d), f"slice {what}") for what, x in bounds.items()]
            if parts[2] == 0:
                raise CalculatorError("slice step cannot be zero")
            return v[slice(*parts)]
        i = _small_int(_eval(node.slice, d), "index")
        try:
            return v[i]
        except IndexError as e:
            raise CalculatorError(str(e)) from None
    if isinstance(node, ast.Call) and not node.keywords:
        args = [_eval(a, d) for a in node.args]
        if isinstance(node.func, ast.Name) and node.func.id == "round" and len(args) > 1 and (
                not isinstance(args[1], int) or abs(args[1]) > 1000):
            raise CalculatorError("round(): ndigits must be an integer within +-1000")
        if isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            try:  # arguments are bounded values already: min/max scan at most MAX_STR items
                return _check_value(_FUNCS[node.func.id](*args))
            except _ARITH_ERRORS as e:
                raise CalculatorError(f"{node.func.id}(): {e}") from None
        if isinstance(node.func, ast.Attribute) and node.func.attr in _STR_METHODS:
            return _call_method(node.func.attr, _eval(node.func.value, d), args)
        raise CalculatorError("only len/abs/round/min/max and a few string methods may be called")
    if isinstance(node, ast.Attribute):
        raise CalculatorError("attribute access is not allowed")
    if isinstance(node, ast.Name):
        raise CalculatorError(f"unknown name {node.id!r}: only literals, arithmetic and a few functions")
    raise CalculatorError(f"{type(node).__name__} is not allowed in the calculator")


def _bracket_depth(expr: str) -> int:
    """The most brackets ( [ { open at once, read from Python's own tokens (so a '(' inside a string
    literal does not count). Parentheses leave no node in the tree, so _eval cannot see them."""
    depth = deepest = 0
    for tok in tokenize.generate_tokens(io.StringIO(expr).readline):
        if tok.type == tokenize.OP and tok.string in ("(", "[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif tok.type == tokenize.OP and tok.string in (")", "]", "}"):
            depth -= 1
    return deepest


def calculator(expr: str) -> str:
    """Evaluate an arithmetic / simple string expression safely; return the result as text.

    >>> calculator("12 * (3 + 4) / 2")
    '42.0'
    >>> calculator("'strawberry'.count('r')")
    '3'
    >>> calculator("__import__('os')")
    Traceback (most recent call last):
    ...
    mini_nanochat.engine.CalculatorError: dunder names are not allowed
    """
    if not isinstance(expr, str):
        raise CalculatorError("the expression must be text")
    if len(expr) > MAX_EXPR_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPR_CHARS} characters")
    if "__" in expr:
        raise CalculatorError("dunder names are not allowed")
    expr = expr.strip()
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL character, on older Pythons
        raise CalculatorError(f"not a valid expression: {getattr(e, 'msg', e)}") from None
    except (RecursionError, MemoryError):  # the parser's own stack limit
        raise CalculatorError(f"expression nested deeper than {MAX_DEPTH}") from None
    try:
        brackets = _bracket_depth(expr)
    except (tokenize.TokenError, SyntaxError) as e:  # not expected once ast.parse has accepted the text
        raise CalculatorError(f"not a valid expression: {e}") from None
    if brackets > MAX_DEPTH:
        raise CalculatorError(f"expression nested deeper than {MAX_DEPTH} (brackets)")
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16 and "/" not in expr:
        value = int(value)
    return str(value)


# ====================================================================================================
# Sampling
# ====================================================================================================

# Upper bound on the temperature. Dividing logits by T flattens them: at T = 100 a 30-nat gap between the
# best and a junk token (a wide range for a trained LM) becomes 0.3 nats, a probability ratio of 1.35, so
# the output is already close to uniform noise over the vocabulary. A larger T shows nothing new and is
# most likely a typo (60 for 0.6). OpenAI's API stops at 2; a learner may want to see the noise, hence 100.
MAX_TEMPERATURE = 100.0
# A positive temperature below float32's smallest normal number would be rounded to 0 (or flushed, as a
# subnormal) when the logits are divided by it: 0 / 0 = NaN. Such a temperature is greedy, its limit.
_TINY_TEMPERATURE = torch.finfo(torch.float32).tiny


def check_temperature(temperature, name: str = "temperature") -> float:
    """A finite number in [0, MAX_TEMPERATURE] (0 = greedy), else ValueError naming `name`."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            0 <= temperature <= MAX_TEMPERATURE):  # NaN fails every comparison, so it lands here too
        raise ValueError(f"{name} must be a number in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {temperature!r}")
    return temperature


def check_top_k(top_k, name: str = "top_k") -> int | None:
    """None or an integer >= 0 (0 = off), else ValueError."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"{name} must be an integer >= 0 (0 = off), got {top_k!r}")
    return top_k


def check_top_p(top_p, name: str = "top_p") -> float | None:
    """None or a number in (0, 1] (1 = off), else ValueError."""
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"{name} must be a number in (0, 1] (1 = off), got {top_p!r}")
    return top_p


def check_positive(value, name: str) -> int:
    """An integer >= 1 (max_tokens, num_samples), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_seed(seed, name: str = "seed") -> int:
    """An integer in [0, 2**64): what torch.Generator.manual_seed accepts (it overflows beyond)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {seed!r}")
    return seed


def usable_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, V) -> (B,) bool: True where the row is a distribution the sampler can use. A row's max is
    NaN if any entry is NaN (torch.amax propagates NaN), +inf if any is +inf, -inf if all are -inf; it is
    finite exactly when the row has no NaN, no +inf and at least one finite logit (-inf entries are fine:
    probability 0). One reduction, no host sync."""
    return torch.isfinite(logits.amax(-1))


def sample_next(logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, fallback: int = 0) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,), always in [0, V) or `fallback`. temperature 0 = greedy; top-k
    keeps the k most likely; top-p keeps the smallest set whose probability reaches p (Holtzman et al. 2019,
    arXiv:1904.09751).

    Broken logits (ADR 0024): a row with a NaN or +inf logit, or with every logit -inf, comes from a
    numerically broken forward pass and has no distribution to sample; it gets `fallback` (the Engine
    passes a stop token, so that sample ends). Without this, NaN probabilities made draw() return V, an id
    outside the vocabulary. Checked with torch.where, so there is no extra host sync per step."""
    check_temperature(temperature)
    check_top_k(top_k)
    check_top_p(top_p)
    if temperature < _TINY_TEMPERATURE:  # 0 = greedy; so is a temperature float32 cannot divide by (T -> 0)
        usable = usable_rows(logits)
        ids = logits.argmax(-1)
    else:
        logits = logits.float()
        peak = logits.amax(-1, keepdim=True)  # (B, 1)
        usable = torch.isfinite(peak[:, 0])  # usable_rows' test, on the max that is needed anyway
        # Shift each row so that its best logit is 0 and the rest are <= 0 (softmax, top-k and top-p are
        # unchanged by a shift): dividing by a small temperature then gives -inf, probability 0, and never
        # the +inf, then NaN, that 3e38 / 0.5 would give.
        logits = (logits - peak).div_(temperature)
        if top_k is not None and 0 < top_k < logits.size(-1):
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            probs = torch.softmax(sorted_logits, dim=-1)
            before = probs.cumsum(-1) - probs  # probability mass strictly before each token
            sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # the top token always stays
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        ids = draw(torch.softmax(logits, dim=-1), generator)  # garbage (possibly V) for rows not usable
    return torch.where(usable, ids, torch.full_like(ids, fallback))


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """probs (B, V), rows finite and summing to 1 -> one index per row, index i with probability probs[i].
    A row of NaN or of zeros would give V, outside the vocabulary: sample_next never passes one.

    Inverse-CDF sampling: draw u uniform in [0, total) and take the first index whose running sum
    exceeds u. One uniform number per row; torch.multinomial instead draws an exponential variate for
    every vocabulary entry, which cost ~1 ms per step at batch 8 on this CPU (ADR 0026). A token of
    probability 0 adds nothing to the running sum, so it can never be the first to exceed u.

    >>> draw(torch.tensor([[0.0, 1.0, 0.0]]), torch.Generator().manual_seed(0)).tolist()
    [1]
    """
    cdf = probs.double().cumsum(-1)  # (B, V), float64 so that the running sum is exact enough
    total = cdf[:, -1:]  # (B, 1)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=torch.float64) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total, even after rounding
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)  # (B,) first i with cdf[i] > u


# ====================================================================================================
# The engine
# ====================================================================================================


class _Row:
    """Per-sample bookkeeping: forced tokens (tool output) waiting to be emitted, the tool call being
    written, and whether the sample has finished."""

    def __init__(self):
        self.forced: deque[int] = deque()
        self.in_python = False
        self.python_tokens: list[int] = []
        self.done = False


class Engine:
    """Generation from a GPT and its tokenizer. `fast` is the one switch for decode speed tricks: True
    (default) decodes with mini_nanochat/fast_decode.py (row-split products on a CPU, a CUDA graph of
    the one-token step with a static KV cache on a GPU); False runs the model's own forward with its
    KV cache, the readable path. Both give the same tokens (tests/test_fast_decode.py)."""

    MAX_GRAPHS = 4  # CUDA graphs kept, one per (batch, cache length): each holds its own KV cache

    def __init__(self, model, tokenizer, fast: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.fast = fast
        sp = tokenizer.special_tokens
        self.bos = tokenizer.bos_id
        self.assistant_end = sp.get("<|assistant_end|>")
        self.python_start, self.python_end = sp.get("<|python_start|>"), sp.get("<|python_end|>")
        self.output_start, self.output_end = sp.get("<|output_start|>"), sp.get("<|output_end|>")
        self.stop_ids = {t for t in (self.bos, self.assistant_end) if t is not None}
        # what a sample gets when its logits are NaN/inf (sample_next's fallback): a stop token, so it ends
        self.broken_stop = self.assistant_end if self.assistant_end is not None else self.bos
        self._graphs: dict[tuple[int, int], object] = {}  # (batch, max_len) -> GraphedDecoder
        self.graph_error: str | None = None  # why CUDA graphs are off, if they failed once

    def _tool_output(self, row: _Row) -> list[int]:
        expr = self.tokenizer.decode(row.python_tokens)
        try:
            result = calculator(expr)
        except CalculatorError as e:
            result = f"error: {e}"
        except Exception as e:  # noqa: BLE001 - whatever goes wrong, generation continues with an error
            result = f"error: {type(e).__name__}"
        return [self.output_start] + self.tokenizer.encode(result) + [self.output_end]

    def _graph_decoder(self, batch: int, needed: int):
        """A GraphedDecoder whose static cache holds `needed` positions (rounded up to a power of two, at
        least 256, at most the model's limit, so that a few graphs serve every request); None when CUDA
        graphs are unavailable (the reason is kept in self.graph_error and printed once)."""
        from .fast_decode import GraphedDecoder

        if self.graph_error is not None:
            return None
        limit = self.model.config.max_positions
        max_len = min(limit, max(256, 1 << (needed - 1).bit_length()))
        key = (batch, max_len)
        if key not in self._graphs:
            try:
                dec = GraphedDecoder(self.model, batch, max_len)
            except Exception as e:  # noqa: BLE001 - any capture/compile failure: decode without graphs
                self.graph_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(f"engine: CUDA graphs unavailable ({self.graph_error}); decoding without them")
                return None
            while len(self._graphs) >= self.MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = dec
        return self._graphs[key]

    @torch.inference_mode()  # like no_grad, and also skips version counters: ~10-20% less per-op overhead (ADR 0026)
    def generate(self, ids: list[int], num_samples: int = 1, max_tokens: int = 256, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 42) -> Iterator[list[int]]:
        """Yield, per step, one token per sample (a list of num_samples ints) until every sample has
        stopped (assistant_end or bos) or max_tokens steps. A finished sample's later entries repeat its
        stop token. As it runs, `self.last_tokens` / `self.last_masks` hold each sample's own tokens and
        masks (1 = sampled, 0 = forced tool output), and `self.last_broken[i]` is True if sample i was
        stopped because the model's logits were NaN/inf (ADR 0024), not because it chose to stop.

        Bad arguments (a NaN temperature, top_p 0, max_tokens 0, ...) raise ValueError before any work."""
        from .fast_decode import decode_step

        if not ids:
            raise ValueError("generate() needs a non-empty prompt (at least <|bos|>)")
        check_positive(num_samples, "num_samples")
        check_positive(max_tokens, "max_tokens")
        check_temperature(temperature)
        check_top_k(top_k)
        check_top_p(top_p)
        check_seed(seed)
        model, cfg = self.model, self.model.config
        device = model.wte.weight.device
        limit = cfg.max_positions
        if len(ids) + max_tokens > limit:
            raise ValueError(f"prompt ({len(ids)}) + max_tokens ({max_tokens}) exceeds the model's {limit} positions")
        gen = torch.Generator(device=device).manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            # prefill once with batch 1, then copy the cache into every sample's row
            prefill = KVCache(cfg.n_layer, 1, cfg.n_kv_head, len(ids), cfg.head_dim, device=device,
                              dtype=model.compute_dtype)
            logits = model(torch.tensor([ids], device=device), kv_cache=prefill)[:, -1]  # (1, V)
            graphed = None
            if self.fast and device.type == "cuda":
                graphed = self._graph_decoder(num_samples, len(ids) + max_tokens)
            if graphed is not None:
                cache = graphed.cache
            else:
                cache = KVCache(cfg.n_layer, num_samples, cfg.n_kv_head, len(ids) + max_tokens, cfg.head_dim,
                                device=device, dtype=model.compute_dtype)
            cache.k[:, :, :, : len(ids)] = prefill.k
            cache.v[:, :, :, : len(ids)] = prefill.v
            cache.pos = len(ids)
            logits = logits.expand(num_samples, -1)  # (N, V)
            rows = [_Row() for _ in range(num_samples)]
            self.last_tokens = [[] for _ in range(num_samples)]  # per sample, up to and including its stop token
            self.last_masks = [[] for _ in range(num_samples)]
            self.last_broken = [False] * num_samples
            for _ in range(max_tokens):
                sampled = sample_next(logits, gen, temperature, top_k, top_p, fallback=self.broken_stop).tolist()
                column = []
                for i, row in enumerate(rows):
                    if row.done:  # keep the batch rectangular: a finished sample repeats its stop token
                        column.append(self.last_tokens[i][-1])
                        continue
                    tok, mask = (row.forced.popleft(), 0) if row.forced else (sampled[i], 1)
                    column.append(tok)
                    self.last_tokens[i].append(tok)
                    self.last_masks[i].append(mask)
                    if tok in self.stop_ids and mask == 1:
                        row.done = True
                        # a stop token from sample_next's fallback: say so (checked once per sample, at its end)
                        self.last_broken[i] = not bool(usable_rows(logits[i:i + 1])[0])
                    elif tok == self.python_start and self.python_start is not None:
                        row.in_python, row.python_tokens = True, []
                    elif tok == self.python_end and row.in_python:
                        row.in_python = False
                        row.forced.extend(self._tool_output(row))
                    elif row.in_python:
                        row.python_tokens.append(tok)
                yield column
                if all(r.done for r in rows):
                    break
                nxt = torch.tensor(column, device=device)  # (N,)
                if graphed is not None:  # one CUDA graph replay per token
                    logits = graphed.step(nxt, cache.pos)
                    cache.advance(1)
                elif self.fast:
                    logits = decode_step(model, nxt, cache, cache.pos)
                    cache.advance(1)
                else:  # the model's own forward (the readable path); it advances the cache itself
                    logits = model(nxt.view(num_samples, 1), kv_cache=cache)[:, -1]
        finally:
            model.train(was_training)

    def generate_batch(self, ids: list[int], num_samples: int = 1, **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Run generate() to the end; return (prompt + completion per sample, mask per sample). The final
        stop token is dropped; masks are 0 over the prompt and over forced tool output."""
        for _ in self.generate(ids, num_samples=num_samples, **kwargs):
            pass
        results, masks = [], []
        for toks, m in zip(self.last_tokens, self.last_masks):
            if toks and toks[-1] in self.stop_ids and m[-1] == 1:
                toks, m = toks[:-1], m[:-1]
            results.append(list(ids) + toks)
            masks.append([0] * len(ids) + m)
        return results, masks
