"""Fuzz the command line (issue #12): random flags, most of them wrong, given to the stages. Whatever the
input: the exit code is 0 or 2, stderr never holds a traceback, and no file outside the stage's own
artifact is removed (the corpus, the tokenizers, a sentinel in the base directory and one beside it)."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mini_nanochat import __main__ as cli

NUMBERS = st.sampled_from(["0", "-1", "-7", "1", "2", "3", "1e9", "nan", "inf", "-inf", "x", "", "99999999999999999999"])
# for step counts a huge value is a valid (if odd) request to train for ages: not fuzzed
STEPS = st.sampled_from(["0", "-1", "-7", "1", "2", "nan", "x", "", "1.5"])
NAMES = st.sampled_from(["..", ".", "/", "/tmp", "a/b", "../x", "ok-name", "", " ", "embedded", "default", "~"])
# a corpus can also be a folder to read: "/" or "." would be read whole (slow, and not a mistake as such)
CORPORA = st.sampled_from(["..", "a/b", "../x", "no-such-corpus", "", " ", "embedded", "/no/such/folder"])

FLAGS = {
    "base-train": {"--depth": NUMBERS, "--max-seq-len": NUMBERS, "--device-batch-size": NUMBERS,
                   "--num-iterations": STEPS, "--total-batch-size": NUMBERS, "--eval-tokens": NUMBERS,
                   "--warmdown-ratio": NUMBERS, "--matrix-lr": NUMBERS, "--dtype": st.sampled_from(["float8", "bf16", "x"]),
                   "--device": st.sampled_from(["cuda", "tpu", "cpu", "cuda:7"]), "--tokenizer": NAMES,
                   "--corpus": CORPORA, "--model-tag": NAMES, "--stop-at": NUMBERS, "--keep-last": NUMBERS},
    "data": {"--name": NAMES, "--rows-per-shard": NUMBERS, "--row-group-size": NUMBERS, "--corpus": CORPORA,
             "-n": NUMBERS, "--val-fraction": NUMBERS},
    "tok-train": {"--vocab-size": NUMBERS, "--max-chars": NUMBERS, "--name": NAMES, "--corpus": CORPORA,
                  "--backend": st.sampled_from(["fast", "python", "rust", ""])},
    "tok-eval": {"--name": NAMES, "--max-chars": NUMBERS, "--compare": st.sampled_from(["gpt2", "x", "", "gpt2,cl100k_base"]),
                 "--show": st.text(max_size=20)},
    "chat": {"--model-tag": NAMES, "--max-tokens": STEPS, "--temperature": NUMBERS, "--top-k": NUMBERS,
             "--top-p": NUMBERS, "-p": st.text(max_size=20)},
}

# flags that keep a valid combination small and fast (they come first, so a fuzzed value overrides them)
SAFE = {"base-train": ["--depth", "1", "--max-seq-len", "16", "--device-batch-size", "1", "--eval-tokens", "64",
                       "--num-iterations", "1", "--eval-every", "0", "--tokenizer", "fuzz-tok", "--model-tag", "fuzz"],
        "data": ["--name", "fuzz-data", "--corpus", "embedded"],
        "tok-train": ["--name", "fuzz-tok2", "--vocab-size", "300", "--max-chars", "20000"],
        "tok-eval": ["--name", "fuzz-tok", "--max-chars", "20000", "--compare", "gpt2"],
        "chat": ["--model-tag", "fuzz", "--max-tokens", "4", "-p", "hi"]}


@st.composite
def command(draw):
    stage = draw(st.sampled_from(sorted(FLAGS)))
    chosen = draw(st.lists(st.sampled_from(sorted(FLAGS[stage])), min_size=1, max_size=3, unique=True))
    argv = [stage, *SAFE[stage]]
    for flag in chosen:
        argv += [flag, draw(FLAGS[stage][flag])]
    return argv


def snapshot(paths: list[Path]) -> set[str]:
    out = set()
    for root in paths:
        for dirpath, _, files in os.walk(root):
            out.update(os.path.join(dirpath, f) for f in files)
    return out


@pytest.fixture(scope="module")
def world(base_dir, tmp_path_factory):
    """The base directory with the embedded corpus, a tiny tokenizer, sentinels in and beside it."""
    from mini_nanochat.stages import tok_train

    tok_train.main(["--name", "fuzz-tok", "--vocab-size", "300", "--max-chars", "50000"])
    (base_dir / "sentinel.txt").write_text("keep me")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "sentinel.txt").write_text("keep me too")
    protected = [base_dir / "data" / "embedded", base_dir / "tokenizer" / "fuzz-tok", outside]
    return base_dir, protected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(argv=command())
def test_cli_never_tracebacks_and_never_removes_foreign_files(world, argv):
    base, protected = world
    before = snapshot(protected) | {str(base / "sentinel.txt")}
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's own exit (it printed its usage line)
            code = e.code
    text = err.getvalue()
    assert code in (0, 2), (argv, code, text[-2000:])
    assert "Traceback" not in text, (argv, text[-2000:])
    after = snapshot(protected) | ({str(base / "sentinel.txt")} if (base / "sentinel.txt").exists() else set())
    assert before <= after, (argv, sorted(before - after)[:5])
