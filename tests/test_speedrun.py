"""The speedrun: presets, the time plan, --force, and a smoke run of the whole pipeline at tiny sizes.

The smoke run (`--preset tiny`, ~1-2 minutes on 2 cores) goes data -> tokenizer -> pretraining -> CORE ->
SFT -> RL -> chat-eval -> report with a probe-made plan, then checks that a re-run skips everything and that
`--force sft` redoes SFT and exactly what depends on it. It proves the plumbing, not the quality: a depth-2
model trained for seconds answers nothing right."""
from __future__ import annotations

import json

import pytest

from mini_nanochat.stages import speedrun


def test_force_reaches_everything_downstream():
    _, _, forced = speedrun.resolve(speedrun.get_parser().parse_args(["--force", "tok-train"]))
    assert forced == {"tok-train", "tok-eval", "base-train", "base-eval", "sft", "rl", "chat-eval"}
    _, _, forced = speedrun.resolve(speedrun.get_parser().parse_args(["--force", "sft", "--force", "base-eval"]))
    assert forced == {"sft", "rl", "chat-eval", "base-eval"}
    _, tag, forced = speedrun.resolve(speedrun.get_parser().parse_args(["--preset", "tiny"]))
    assert forced == set() and tag == "speedrun-tiny"


def test_flags_override_the_preset_and_bad_values_are_one_line():
    pre, tag, _ = speedrun.resolve(speedrun.get_parser().parse_args(["--depth", "6", "--iterations", "100"]))
    assert (pre.depth, pre.iterations, pre.pretrain_seconds, tag) == (6, 100, 0, "speedrun")
    assert speedrun.PRESETS["cpu"].pretrain_seconds > 0  # the cpu preset plans by time
    for bad in (["--depth", "0"], ["--sft-seconds", "-1"], ["--iterations", "0"]):
        with pytest.raises(SystemExit, match="must be"):
            speedrun.resolve(speedrun.get_parser().parse_args(bad))
    with pytest.raises(SystemExit):
        speedrun.get_parser().parse_args(["--force", "everything"])  # argparse lists the stages


def test_a_finished_run_is_recognised(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 300}))
    assert speedrun._finished(tmp_path, 300) and not speedrun._finished(tmp_path, 400)
    assert speedrun._finished(tmp_path, -1)  # gpu8: base-train derives the horizon; any finished run counts
    assert not speedrun._finished(tmp_path / "nothing", -1)


def test_a_run_without_a_plan_is_not_continued_blindly(base_dir, monkeypatch):
    """A checkpoint that no plan made (an older speedrun, base-train by hand) is refused in one line
    before any probe runs, and nothing is deleted."""
    run = base_dir / "runs" / "unplanned"
    (run / "checkpoints" / "step_000300").mkdir(parents=True)
    monkeypatch.setattr(speedrun, "latest_checkpoint", lambda d: run / "checkpoints" / "step_000300")
    monkeypatch.setattr(speedrun, "probe_speed", lambda *a: pytest.fail("probed"))
    pre, _, forced = speedrun.resolve(speedrun.get_parser().parse_args([]))
    with pytest.raises(SystemExit, match="no speedrun plan made; use --force base-train"):
        speedrun.make_plan(pre, "unplanned", forced)
    assert (run / "checkpoints" / "step_000300").is_dir()


def test_gpu_presets_are_exact_commands():
    """The GPU presets turn into stage flags that every stage's own parser accepts (nothing runs)."""
    from mini_nanochat.stages import base_train

    for name in ("gpu", "gpu8"):
        pre = speedrun.PRESETS[name]
        args = base_train.get_parser().parse_args(speedrun.model_flags(pre) + ["--num-iterations", "5"])
        assert args.depth == pre.depth and args.max_seq_len == pre.max_seq_len
    assert speedrun.PRESETS["gpu8"].nproc == 8 and speedrun.tokens_per_step(speedrun.PRESETS["gpu8"]) == 524288


@pytest.mark.slow
def test_tiny_preset_whole_pipeline(base_dir, capsys):
    runs = base_dir / "runs"
    flags = ["--preset", "tiny", "--pretrain-seconds", "3", "--sft-seconds", "2"]
    speedrun.main(flags)
    out = capsys.readouterr().out
    plan = json.loads((runs / "speedrun-tiny" / "speedrun_plan.json").read_text())
    assert plan["probe_tok_per_s"] > 0 and plan["iterations"] >= 20 and plan["sft_iterations"] >= 20
    assert not (runs / "speedrun-tiny-probe").exists()  # the probe's scratch run is gone
    for d in ("speedrun-tiny", "speedrun-tiny-sft", "speedrun-tiny-rl"):
        assert (runs / d / "summary.json").is_file()
    card = json.loads((runs / "speedrun-tiny-rl" / "eval" / "chat_card.json").read_text())
    assert card["identity"]["n"] == len(card["identity"]["replies"]) >= 3 and card["conversations"]
    md = (base_dir / "reports" / "speedrun-tiny.md").read_text()
    for section in ("## Evaluation (base model)", "## Chat evaluation", "## The chat model (SFT and RL)",
                    "Identity (speedrun-tiny-rl", "Sample replies", "The speedrun (preset `tiny`", "## Beside nanochat"):
        assert section in md, section
    assert "| run `speedrun-tiny` | value |" in out and "arithmetic with the tool" in out  # the headline
    times = json.loads((runs / "speedrun-tiny" / "speedrun_times.json").read_text())
    assert times["preset"] == "tiny" and len(times["stages_seconds"]) == 8

    speedrun.main(flags)  # everything complete: skipped, with the same plan
    again = capsys.readouterr().out
    assert "plan (from speedrun_plan.json)" in again and "probing" not in again
    for line in ("pretraining already done", "base-eval already done", "sft already done", "rl already done",
                 "chat-eval already done"):
        assert line in again, line

    sft_before = (runs / "speedrun-tiny-sft" / "summary.json").stat().st_mtime_ns
    speedrun.main(flags + ["--force", "sft"])  # SFT again, and what depends on it; pretraining kept
    forced = capsys.readouterr().out
    assert "pretraining already done" in forced and "base-eval already done" in forced
    assert "removing" in forced and "sft already done" not in forced and "rl already done" not in forced
    assert (runs / "speedrun-tiny-sft" / "summary.json").stat().st_mtime_ns != sft_before
