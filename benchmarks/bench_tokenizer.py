"""
Tokenizer throughput benchmark: BPE *training* and *encoding* on one corpus, against peers.

Run on demand (the test suite never runs it):

    MINI_NANOCHAT_HOME=/tmp/mnh_bench python benchmarks/bench_tokenizer.py
    python benchmarks/bench_tokenizer.py --mb 5 --vocab-sizes 4096 --repeats 3 --skip-python

The text is the embedded corpus (train split, then val), whole documents, until `--mb` megabytes
(10^6 bytes of UTF-8) are reached; if the corpus is shorter, documents are taken again from the start
and the output says how many megabytes are such repeats. The corpus is built first if it is missing.

Training rows (time to go from a list of documents to the mergeable ranks, vocab counts 256 bytes +
merges, no special tokens):
    ours-fast    mini_nanochat.tokenizer.train_bpe_fast (rustbpe + conversion of its ranks to a dict)
    rustbpe      rustbpe.Tokenizer().train_from_iterator directly
    hf-tokenizers  HF `tokenizers` BPE with a byte-level setup and our split pattern
    ours-python  mini_nanochat.tokenizer.train_bpe (pure Python), vocab 4096 on the first 2 MB, and on
                 the full text when it finishes within 60 s
Encoding rows: the same text, as a batch of documents and as one joined string, with our vocab-4096
tokenizer (tiktoken underneath), tiktoken cl100k_base, rustbpe's own encoder and HF tokenizers.

Timing: time.perf_counter wall seconds. With --repeats N the rows of one group run interleaved N times
and the best time is reported (with the median beside it): on a shared 2-core machine the best run is
the one least disturbed by other processes. The load average is printed at the start and the end.

"anchor" columns repeat figures measured earlier on this machine (../shared/anchors.md, 2026-11-25),
printed for comparison only; nothing is asserted against them.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

TWO_MB = 2_000_000
PYTHON_FULL_LIMIT_S = 60.0

# Figures from ../shared/anchors.md ("Measured on this project's machine", 2026-11-25).
ANCHOR_TRAIN_S = {("rustbpe", 4096): 2.10, ("rustbpe", 32768): 2.32,
                  ("hf-tokenizers", 4096): 2.39, ("hf-tokenizers", 32768): 3.04}
ANCHOR_PYTHON_2MB = "21 s @v1024 dedup / 119 s @v512 naive"
ANCHOR_ENCODE_MBS = {"tiktoken": 13.2, "rustbpe": 8.5, "hf-tokenizers": 1.25}


# ----------------------------------------------------------------------------------------------------
# Corpus


def load_documents(mb: float) -> tuple[list[str], int, int]:
    """Whole documents (train, then val, then again from the start) until `mb` * 10^6 bytes.

    Returns (documents, total bytes, bytes that are repeats of documents already taken)."""
    from mini_nanochat.dataset import corpus_dir, iter_texts, manifest_is_complete

    if not manifest_is_complete(corpus_dir("embedded")):
        print(f"# corpus missing at {corpus_dir('embedded')}: building it")
        from mini_nanochat.stages import data

        data.main([])
        print()
    source = list(iter_texts("embedded", "train")) + list(iter_texts("embedded", "val"))
    sizes = [len(d.encode("utf-8")) for d in source]
    if not source:
        raise SystemExit("the embedded corpus is empty")
    target = int(mb * 1e6)
    docs: list[str] = []
    total = repeated = 0
    i = 0
    while total < target:
        k = i % len(source)
        docs.append(source[k])
        total += sizes[k]
        if i >= len(source):
            repeated += sizes[k]
        i += 1
    return docs, total, repeated


def first_bytes(docs: list[str], n_bytes: int) -> tuple[list[str], int]:
    """The leading whole documents of `docs` holding at least `n_bytes` bytes (fewer if docs is short)."""
    out, total = [], 0
    for d in docs:
        if total >= n_bytes:
            break
        out.append(d)
        total += len(d.encode("utf-8"))
    return out, total


# ----------------------------------------------------------------------------------------------------
# Timing


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Run `fn` `repeats` times; return every wall time (perf_counter) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def timed_round_robin(fns: list[Callable[[], object]], repeats: int,
                      keep: Callable[[int, object], object] = lambda i, r: r) -> list[tuple[list[float], object]]:
    """Time several functions `repeats` times each, interleaved (f0 f1 f2 f0 f1 f2 ...), so that load from
    other processes on a shared machine spreads over all of them instead of hitting one row.
    `keep(i, result)` reduces what is kept of function i's last result (the rest is freed at once)."""
    times: list[list[float]] = [[] for _ in fns]
    kept: list[object] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            kept[i] = None
            gc.collect()
            t0 = time.perf_counter()
            result = fn()
            times[i].append(time.perf_counter() - t0)
            kept[i] = keep(i, result)
            del result
    return list(zip(times, kept))


class _Timeout(Exception):
    pass


def timed_with_limit(fn: Callable[[], object], limit_s: float) -> tuple[float | None, object]:
    """One timed run of `fn`, abandoned after `limit_s` seconds (SIGALRM; pure-Python code stops at
    the next bytecode). Returns (None, None) on timeout. Without SIGALRM it simply runs to the end."""
    if not hasattr(signal, "SIGALRM"):
        (t,), r = timed(fn, 1)
        return t, r

    def on_alarm(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        (t,), r = timed(fn, 1)
        return t, r
    except _Timeout:
        return None, None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_table(header: list[str], rows: list[list[str]], align: str) -> None:
    """Plain-text table; `align` holds one 'l' or 'r' per column."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    print(line(header))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


# ----------------------------------------------------------------------------------------------------
# Peers


def hf_bpe_trainer_setup(vocab_size: int):
    """An untrained HF `tokenizers` BPE with our split pattern then byte-level mapping, and its trainer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from mini_nanochat.tokenizer import SPLIT_PATTERN

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    return tok, trainer


def train_hf(docs: list[str], vocab_size: int):
    tok, trainer = hf_bpe_trainer_setup(vocab_size)
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def train_rustbpe(docs: list[str], vocab_size: int):
    import rustbpe

    from mini_nanochat.tokenizer import SPLIT_PATTERN

    t = rustbpe.Tokenizer()
    t.train_from_iterator(iter(docs), vocab_size, pattern=SPLIT_PATTERN)
    return t


def hf_token_bytes(hf_tok) -> set[bytes]:
    """The byte strings of an HF byte-level vocabulary (undoing GPT-2's printable byte remapping)."""
    from mini_nanochat.tokenizer import gpt2_byte_decoder

    byte_of = gpt2_byte_decoder()
    return {bytes(byte_of[c] for c in s) for s in hf_tok.get_vocab()}


# ----------------------------------------------------------------------------------------------------
# Main


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=20.0, help="megabytes (10^6 bytes) of text (default 20)")
    p.add_argument("--vocab-sizes", default="4096,32768",
                   help="comma-separated vocab sizes for the fast trainers (default 4096,32768)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per fast-trainer / encoder row, interleaved; the best (fastest) is "
                        "reported, the median beside it (default 1). "
                        "The pure-Python rows always run once.")
    p.add_argument("--skip-python", action="store_true", help="skip the pure-Python trainer rows")
    return p


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    except (AttributeError, OSError):
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    args = get_parser().parse_args(argv)
    vocab_sizes = [int(v) for v in args.vocab_sizes.split(",") if v.strip()]
    if args.mb <= 0 or args.repeats < 1 or not vocab_sizes or min(vocab_sizes) < 256:
        raise SystemExit("--mb must be > 0, --repeats >= 1, every vocab size >= 256")

    import rustbpe  # noqa: F401  (fail early if a peer is missing)
    import tiktoken
    import tokenizers

    from mini_nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe, train_bpe_fast

    def ver(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    print(f"# bench_tokenizer  {time.strftime('%Y-%m-%d %H:%M:%S')}  python {platform.python_version()}  "
          f"cpus {os.cpu_count()}  rustbpe {ver('rustbpe')}  tokenizers {tokenizers.__version__}  "
          f"tiktoken {tiktoken.__version__}")
    print(f"# load average at start: {_loadavg()} (other processes share the {os.cpu_count()} cores; "
          f"a load near or above the core count inflates every time below)")
    print(f"# args: --mb {args.mb:g} --vocab-sizes {','.join(map(str, vocab_sizes))} --repeats {args.repeats}"
          f"{' --skip-python' if args.skip_python else ''}")

    docs, n_bytes, n_repeat = load_documents(args.mb)
    mb = n_bytes / 1e6
    print(f"# text: {len(docs)} documents, {mb:.3f} MB (embedded corpus train+val, whole documents); "
          f"{n_repeat / 1e6:.3f} MB of it are repeats of documents already used")
    sample, sample_bytes = first_bytes(docs, TWO_MB)
    sample_mb = sample_bytes / 1e6
    print(f"# 2 MB sample: first {len(sample)} documents, {sample_mb:.3f} MB")
    rep_note = (f"best of {args.repeats} interleaved runs (median in 'median s')" if args.repeats > 1
                else "1 run")
    print(f"# times: time.perf_counter wall seconds, {rep_note} per row (pure-Python rows: 1 run); "
          f"MB/s and ratios use the best, the least disturbed by other processes")

    # Warm-up (untimed): import paths, regex compilation, thread pools.
    warm, _ = first_bytes(docs, 100_000)
    train_bpe_fast(warm, 300)
    train_rustbpe(warm, 300)
    train_hf(warm, 300)

    # ---- training ----------------------------------------------------------------------------------
    print()
    print("## Training: documents -> mergeable ranks")
    rows = []
    # Keys: (vocab, scope) and (trainer, vocab, scope); scope is "full" (the --mb text) or "2mb" (the sample).
    rust_s: dict[tuple[int, str], float] = {}  # rustbpe's best seconds, the base of the ratios
    results: dict[tuple[str, int, str], float] = {}
    rust_4096 = hf_4096 = None
    hf_vocab_bytes = None
    ours_fast_ranks: dict[int, dict[bytes, int]] = {}

    def add_row(name, vocab, scope, times, anchor="-"):
        row_mb = mb if scope == "full" else sample_mb
        best = min(times)
        results[(name, vocab, scope)] = best
        base = rust_s.get((vocab, scope))
        rows.append([name, str(vocab), f"{row_mb:.2f}", f"{best:.2f}",
                     f"{statistics.median(times):.2f}" if len(times) > 1 else "-", f"{row_mb / best:.2f}",
                     fmt_ratio(best / base if base else None), anchor])

    for v in vocab_sizes:
        # rustbpe first (it is the ratio's base), then ours-fast, then HF.
        (t_rust, tr), (t_fast, ranks), (t_hf, hf) = timed_round_robin(
            [lambda: train_rustbpe(docs, v), lambda: train_bpe_fast(docs, v), lambda: train_hf(docs, v)],
            args.repeats)
        rust_s[(v, "full")] = min(t_rust)
        ours_fast_ranks[v] = ranks
        if v == 4096:
            rust_4096, hf_4096 = tr, hf
            hf_vocab_bytes = hf_token_bytes(hf)
        anchor_rust = ANCHOR_TRAIN_S.get(("rustbpe", v)) if abs(mb - 20) < 0.5 else None
        anchor_hf = ANCHOR_TRAIN_S.get(("hf-tokenizers", v)) if abs(mb - 20) < 0.5 else None
        add_row("ours-fast", v, "full", t_fast)
        add_row("rustbpe", v, "full", t_rust, f"{anchor_rust:.2f} s" if anchor_rust else "-")
        add_row("hf-tokenizers", v, "full", t_hf, f"{anchor_hf:.2f} s" if anchor_hf else "-")

    same_ranks = None
    python_full_note = None
    if not args.skip_python:
        (t_rust2, _), (t_fast2, fast2) = timed_round_robin(
            [lambda: train_rustbpe(sample, 4096), lambda: train_bpe_fast(sample, 4096)], args.repeats)
        rust_s[(4096, "2mb")] = min(t_rust2)
        t_py2, py2 = timed(lambda: train_bpe(sample, 4096), 1)
        same_ranks = fast2 == py2
        add_row("ours-fast", 4096, "2mb", t_fast2)
        add_row("rustbpe", 4096, "2mb", t_rust2)
        add_row("ours-python", 4096, "2mb", t_py2, ANCHOR_PYTHON_2MB)
        t_pyf = py_full = None
        if len(sample) < len(docs):
            t_pyf, py_full = timed_with_limit(lambda: train_bpe(docs, 4096), PYTHON_FULL_LIMIT_S)
        if len(sample) == len(docs):
            python_full_note = "ours-python on the full text: no separate row, the 2 MB sample is the whole text"
        elif t_pyf is None:
            python_full_note = (f"ours-python on the full {mb:.2f} MB: stopped after {PYTHON_FULL_LIMIT_S:.0f} s, "
                                f"no row")
        else:
            if (4096, "full") not in rust_s:  # 4096 not among --vocab-sizes: time rustbpe for the ratio
                t_r, _ = timed(lambda: train_rustbpe(docs, 4096), args.repeats)
                rust_s[(4096, "full")] = min(t_r)
                add_row("rustbpe", 4096, "full", t_r)
            add_row("ours-python", 4096, "full", [t_pyf])
            if 4096 in ours_fast_ranks:
                python_full_note = (f"ours-python == ours-fast ranks on the full {mb:.2f} MB at vocab 4096: "
                                    f"{'yes' if py_full == ours_fast_ranks[4096] else 'NO'}")
            del py_full
    print_table(["trainer", "vocab", "MB", "seconds", "median s", "MB/s", "vs rustbpe", "anchor"], rows,
                "lrrrrrrl")
    print("(vs rustbpe = this row's time / rustbpe's time at the same vocab and MB; >1 is slower)")
    if python_full_note:
        print(python_full_note)
    if same_ranks is not None:
        print(f"ours-fast and ours-python give identical ranks on the 2 MB sample (vocab 4096): "
              f"{'yes' if same_ranks else 'NO'}")
    if hf_vocab_bytes is not None and 4096 in ours_fast_ranks:
        common = len(hf_vocab_bytes & set(ours_fast_ranks[4096]))
        print(f"hf-tokenizers vocab-4096 tokens that are also in ours-fast's: {common}/{len(hf_vocab_bytes)}")

    print()
    key = ("ours-fast", 32768, "full")
    if key in results and (32768, "full") in rust_s:
        r = results[key] / rust_s[(32768, "full")]
        cond = "" if abs(mb - 20) < 0.5 else f" (measured on {mb:.2f} MB, the target is stated for 20 MB)"
        print(f"TARGET ours-fast within 1.2x of rustbpe at vocab 32768 on 20 MB: {'PASS' if r <= 1.2 else 'FAIL'} "
              f"({r:.2f}x){cond}")
    else:
        print("TARGET ours-fast within 1.2x of rustbpe at vocab 32768 on 20 MB: n/a (32768 not in --vocab-sizes)")
    key = ("ours-python", 4096, "2mb")
    if key in results:
        t = results[key]
        cond = "" if abs(sample_mb - 2) < 0.1 else f" (sample is only {sample_mb:.2f} MB)"
        print(f"TARGET ours-python trains vocab 4096 on 2 MB in < 30 s: {'PASS' if t < 30 else 'FAIL'} "
              f"({t:.2f} s){cond}")
    else:
        print("TARGET ours-python trains vocab 4096 on 2 MB in < 30 s: n/a (--skip-python)")

    # ---- encoding ----------------------------------------------------------------------------------
    print()
    print("## Encoding: the same text -> token ids")
    if 4096 in ours_fast_ranks:
        ranks = ours_fast_ranks[4096]
    else:
        ranks = train_bpe_fast(docs, 4096)
        rust_4096 = train_rustbpe(docs, 4096)
        hf_4096 = train_hf(docs, 4096)
    specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
    ours = Tokenizer(ranks, specials)  # = Tokenizer.train(docs, 4096 + 9): 4096 learned + 9 specials
    cl100k = Tokenizer.from_tiktoken("cl100k_base")
    joined = "\n\n".join(docs)
    joined_mb = len(joined.encode("utf-8")) / 1e6

    def count_batch(out):
        return sum(len(x) for x in out)

    def hf_count_batch(out):
        return sum(len(e.ids) for e in out)

    # (name, vocab, mode, fn returning the ids, token counter, anchor key)
    cases = [
        ("ours (tiktoken)", "4096+9", "batch", lambda: ours.encode_batch(docs), count_batch, None),
        ("ours (tiktoken)", "4096+9", "single", lambda: ours.encode(joined), len, None),
        ("tiktoken direct", "4096+9", "batch", lambda: ours.enc.encode_ordinary_batch(docs), count_batch, None),
        ("tiktoken direct", "4096+9", "single", lambda: ours.enc.encode_ordinary(joined), len, None),
        ("tiktoken cl100k", "100277", "batch", lambda: cl100k.encode_batch(docs), count_batch, "tiktoken"),
        ("tiktoken cl100k", "100277", "single", lambda: cl100k.encode(joined), len, "tiktoken"),
        ("rustbpe", "4096", "batch", lambda: rust_4096.batch_encode(docs), count_batch, "rustbpe"),
        ("rustbpe", "4096", "single", lambda: rust_4096.encode(joined), len, "rustbpe"),
        ("hf-tokenizers", "4096", "batch", lambda: hf_4096.encode_batch(docs), hf_count_batch, "hf-tokenizers"),
        ("hf-tokenizers", "4096", "single", lambda: hf_4096.encode(joined).ids, len, "hf-tokenizers"),
    ]
    # Untimed warm-up of every encoder on a little text.
    ours.encode_batch(warm)
    cl100k.encode_batch(warm)
    rust_4096.batch_encode(warm)
    hf_4096.encode_batch(warm)

    def keep(i, out):  # keep the token count, plus the ids where they are compared below
        name, _, mode, _, counter, _ = cases[i]
        if mode == "single" and name in ("ours (tiktoken)", "rustbpe"):
            return counter(out), out
        return counter(out), None

    measured = {}
    ids_check = {}
    timings = timed_round_robin([c[3] for c in cases], args.repeats, keep)
    for (name, vocab, mode, _fn, _counter, anchor_key), (times, (n_tok, ids)) in zip(cases, timings):
        if ids is not None:
            ids_check[name] = ids
        row_mb = mb if mode == "batch" else joined_mb
        measured[(name, mode)] = (min(times), times, row_mb, n_tok, vocab, anchor_key)

    rows = []
    for (name, mode), (best, times, row_mb, n_tok, vocab, anchor_key) in measured.items():
        base = measured[("tiktoken cl100k", mode)][0]
        anchor = ANCHOR_ENCODE_MBS.get(anchor_key) if anchor_key else None
        rows.append([name, vocab, mode, f"{row_mb:.2f}", f"{best:.2f}",
                     f"{statistics.median(times):.2f}" if len(times) > 1 else "-", f"{row_mb / best:.2f}",
                     f"{n_tok:,}", f"{row_mb * 1e6 / n_tok:.2f}", fmt_ratio(best / base),
                     f"{anchor:.2f} MB/s" if anchor and abs(mb - 20) < 0.5 else "-"])
    print_table(["encoder", "vocab", "mode", "MB", "seconds", "median s", "MB/s", "tokens", "bytes/tok",
                 "vs cl100k", "anchor"], rows, "lllrrrrrrrl")
    print("(batch = one call over the document list, the library's own threads; single = one call on the "
          "documents joined by blank lines, one thread.")
    print(" vs cl100k = this row's time / tiktoken cl100k's time in the same mode; >1 is slower)")
    same = ids_check["ours (tiktoken)"] == ids_check["rustbpe"]
    print(f"rustbpe encode gives the same ids as ours on the joined text: {'yes' if same else 'NO'}")
    print(f"# load average at end: {_loadavg()}; total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
