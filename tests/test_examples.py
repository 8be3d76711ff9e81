"""examples/: every mini_nanochat command in the example scripts (comments included) is accepted by its
stage's own argument parser, so the documented configurations cannot drift from the flags. Nothing runs."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from mini_nanochat.__main__ import STAGES

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.sh"))


def commands(path: Path) -> list[list[str]]:
    """The argument lists after `-m mini_nanochat` in a script, joined across backslash line ends."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.lstrip("# ").strip()
        if "-m mini_nanochat " not in line:
            continue
        words = shlex.split(line.replace('"$folder"', "/tmp/my-texts"))
        out.append(words[words.index("mini_nanochat") + 1:])
    return out


def test_there_are_examples():
    names = {p.stem for p in EXAMPLES}
    assert {"tiny-cpu", "laptop", "gpu", "gpu8", "own-data"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_command_parses(path):
    cmds = commands(path)
    assert cmds, f"{path.name} names no mini_nanochat command"
    for argv in cmds:
        stage, flags = argv[0], argv[1:]
        assert stage in STAGES, f"{path.name}: unknown stage {stage}"
        module = importlib.import_module(f"mini_nanochat.stages.{STAGES[stage][0]}")
        module.get_parser().parse_args(flags)  # SystemExit(2) on an unknown flag or a bad value
