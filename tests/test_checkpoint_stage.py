"""The `checkpoint` stage (stages/checkpoint_check.py, checkpoints_lab.py): every phase's checks pass on
this build, the table names each check, and a failing check makes the stage fail with one line.
Phases 2-3 (three base-train runs) and 4 (torchrun) take longer and are marked slow."""
from __future__ import annotations

import pytest

from mini_nanochat.checkpoints_lab import Check, Workdir, run_phase


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One temporary base directory for all phases (the corpus and the tokenizer are built once)."""
    return Workdir(tmp_path_factory.mktemp("ckpt"))


def _assert_all_pass(checks: list[Check]):
    assert checks, "a phase must check something"
    failed = [(c.name, c.measured, c.expected) for c in checks if not c.ok]
    assert not failed, failed


@pytest.mark.parametrize("phase", ["0", "1", "5", "6", "7", "8", "9"])
def test_fast_phases_pass(work, phase):
    _assert_all_pass(run_phase(phase, work))


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["2", "4"])
def test_slow_phases_pass(work, phase):
    _assert_all_pass(run_phase(phase, work))


def test_stage_prints_the_table_and_never_touches_the_base_dir(work, tmp_path, monkeypatch, capsys):
    from mini_nanochat.stages import checkpoint_check

    home = tmp_path / "home"
    monkeypatch.setenv("MINI_NANOCHAT_HOME", str(home))
    out = checkpoint_check.main(["9", "--workdir", str(work.root)])
    assert out["failed"] == [] and out["checks"] >= 3
    text = capsys.readouterr().out
    assert "check" in text and "measured" in text and "expected" in text and "PASS" in text
    assert "POST /v1/chat/completions" in text
    assert not home.exists()  # the user's base directory is never written


def test_a_failing_check_fails_the_stage_with_one_line(work, monkeypatch):
    from mini_nanochat import checkpoints_lab
    from mini_nanochat.common import UserError
    from mini_nanochat.stages import checkpoint_check

    monkeypatch.setitem(checkpoints_lab.PHASE_FUNCS, "5",
                        lambda w: [Check("good", "1", "1", True), Check("broken thing", "0", "1", False)])
    with pytest.raises(UserError, match="1 of 2 checks failed: phase 5: broken thing"):
        checkpoint_check.main(["5", "--workdir", str(work.root)])
    with pytest.raises(UserError, match="unknown phase"):
        checkpoint_check.main(["12"])
