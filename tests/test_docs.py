"""The docs cannot drift: tools/check_docs.py over every doc, and proof that the checker catches each
kind of drift it claims to (a checker that finds nothing is only useful if it could)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def check_docs():
    spec = importlib.util.spec_from_file_location("check_docs", ROOT / "tools" / "check_docs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_docs"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def checker(check_docs):
    return check_docs.Checker()


def test_docs_match_the_code(check_docs, checker):
    problems = checker.run()
    assert not problems, "the docs drifted from the code (python tools/check_docs.py):\n" + "\n".join(map(str, problems))


BAD_DOC = """\
Run `python -m mini_nanochat base-train --depth 4 --no-such-flag 3` and `tok-train --bogus`.
See `mini_nanochat/no_such_module.py`, [a link](no_such_file.md), `gpt.no_such_function`, `GPT.no_such_method`.
Tests: `tests/test_gpt.py::test_no_such_test`, `test_no_such_test_either`, `mini_nanochat/gpt.py:no_such_fn`.
Facts in `../shared/anchors.md`, and a script at `/tmp/experiment.py`.
nanochat's `tests/test_not_ours.py` is nanochat's, and `gpt.apply_rope`, `GPT.forward`, `KVCache.update` are fine.
The new stage `python -m mini_nanochat teleport --now` (planned) is exempt.
```bash
python -m mini_nanochat sft --model-tag x \\
   --bad-flag 2
python tools/vocab_sweep.py --no-such-option
python tools/no_such_tool.py
python -m pytest -q tests/test_gpt.py -k no_such_test_name
python -m mini_nanochat no-such-stage
```
All 99 tests pass.

<!-- output: python -m mini_nanochat chat | 2026-12-01 | 0123456789abcdef | the-machine -->
```
text
```
<!-- output: python -m mini_nanochat chat | yesterday -->
`stages/chat.no_such_function` and `stages/no_such_stage.py`; `stages/chat.answer` is fine.
The helper `gpt.generate` was removed in issue #11 (a name the code had once: fine).
`GPT.state_dict()` (inherited from nn.Module) and the GGUF key `tokenizer.ggml.pre` are fine.
```bash
python tools/vocab_sweep.py --sizes 1024 -- base-train --depth 2 --no-such-flag-after 1
```
"""

EXPECTED = [
    (1, "`base-train` has no flag `--no-such-flag`"),
    (1, "`tok-train` has no flag `--bogus`"),
    (2, "`mini_nanochat/no_such_module.py` does not exist"),
    (2, "link `no_such_file.md` does not exist"),
    (2, "`gpt.no_such_function` does not resolve"),
    (2, "`GPT.no_such_method` does not resolve"),
    (3, "`tests/test_gpt.py` has no test `test_no_such_test`"),
    (3, "no test named `test_no_such_test_either`"),
    (3, "`mini_nanochat/gpt.py` has no `no_such_fn`"),
    (4, "`../shared/` is outside the repository"),
    (4, "`/tmp/experiment.py` is outside the repository"),
    (8, "`sft` has no flag `--bad-flag`"),
    (10, "`tools/vocab_sweep.py` has no flag `--no-such-option`"),
    (11, "`tools/no_such_tool.py` does not exist"),
    (12, "`pytest -k no_such_test_name` selects no test"),
    (13, "`no-such-stage` is not a stage"),
    (15, "a test count without the date"),
    (17, "`0123456789abcdef` is not a commit of this repository"),
    (21, "output marker needs"),
    (22, "`stages/chat.py` has no `no_such_function`"),
    (22, "there is no `mini_nanochat/stages/no_such_stage.py`"),
    (26, "`base-train` has no flag `--no-such-flag-after`"),
]


def test_checker_catches_each_kind_of_drift(check_docs, tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text(BAD_DOC, encoding="utf-8")
    found = check_docs.Checker().run([doc])
    lines = [(p.line, p.what) for p in found]
    for no, what in EXPECTED:
        assert any(n == no and what in w for n, w in lines), f"missed on line {no}: {what}\nfound: {lines}"
    assert len(found) == len(EXPECTED), "unexpected problems:\n" + "\n".join(map(str, found))


def test_adr_sections_are_checked(check_docs, tmp_path):
    adrs = tmp_path / "adrs"
    adrs.mkdir()
    good = (ROOT / "docs" / "adrs" / "0001-language-and-framework.md").read_text(encoding="utf-8")
    (adrs / "0001-good.md").write_text(good, encoding="utf-8")
    (adrs / "0002-bad.md").write_text(good.replace("## Alternatives", "## Other options"), encoding="utf-8")
    (adrs / "0000-template.md").write_text("# template\n", encoding="utf-8")
    found = check_docs.Checker().run(sorted(adrs.iterdir()))
    assert [p.what for p in found if "ADR" in p.what] == ["ADR lacks the section `## Alternatives`"]
    assert all(Path(p.path).name == "0002-bad.md" for p in found)


def test_command_line_prints_problems_and_exit_code(check_docs, tmp_path, capsys):
    doc = tmp_path / "one.md"
    doc.write_text("See `gpt.no_such_function`.\n", encoding="utf-8")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_docs.py"), str(doc)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 1 and f"{doc}:1: `gpt.no_such_function` does not resolve" in r.stdout
    doc.write_text("See `gpt.apply_rope`.\n", encoding="utf-8")
    assert check_docs.main([str(doc)]) == 0 and capsys.readouterr().out == ""
