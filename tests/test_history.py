"""The history lab (stages/history.py, history_lab.py): a tiny lab writes its table, json and plot, the
verdicts follow the noise rule, and a re-run keeps finished runs instead of training them again."""
from __future__ import annotations

import json

import pytest

from mini_nanochat.history_lab import lab_runs, mean_std, summarise, verdict


def test_every_run_is_one_change_from_modern_and_builds():
    from mini_nanochat.history_lab import model_config

    runs = lab_runs()
    assert runs["modern"].preset == "modern" and runs["modern"].optimizer == "muon"
    assert (runs["gpt2"].preset, runs["llama"].preset) == ("gpt2", "llama")
    base = model_config(runs["modern"], 4096)
    for name, spec in runs.items():
        cfg = model_config(spec, spec.vocab_size)
        assert cfg.n_layer == base.n_layer and cfg.sequence_len == base.sequence_len, name
        if spec.group == "ablation":  # exactly one thing differs: a GPTConfig switch or the vocabulary
            changed = [k for k in vars(base) if getattr(cfg, k) != getattr(base, k)]
            assert len(changed) == 1, (name, changed)
        if spec.group == "optimizer":
            assert cfg == base and (spec.optimizer, spec.matrix_lr) != ("muon", 0.02), name


def test_noise_rule():
    assert verdict(-0.05, 0.01, 3, 0.01, 3) == "better"
    assert verdict(+0.05, 0.01, 3, 0.01, 3) == "worse"
    assert verdict(0.015, 0.01, 3, 0.01, 3) == "within noise"  # 2 x sqrt(2 x 0.01^2 / 3) = 0.0163
    assert verdict(0.017, 0.01, 3, 0.01, 3) == "worse"
    runs = lab_runs()
    results = [dict(run="modern", seed=s, val_bpb=v, steps=10, params=1) for s, v in enumerate([2.0, 2.01, 1.99])]
    results += [dict(run="gelu", seed=s, val_bpb=v, steps=10, params=1) for s, v in enumerate([2.1, 2.11, 2.09])]
    rows = {r["run"]: r for r in summarise(runs, results)}
    assert rows["modern"]["verdict"] == "baseline"
    assert rows["gelu"]["delta"] == pytest.approx(0.1) and rows["gelu"]["verdict"] == "worse"
    assert mean_std([2.1, 2.11, 2.09])[1] == pytest.approx(0.01)


def test_tiny_lab_writes_table_plot_json_and_skips_finished_runs(base_dir, tmp_path, capsys):
    from mini_nanochat.stages import history

    out = tmp_path / "lab"
    argv = ["--only", "gelu", "--seeds", "2", "--budget-s", "2", "--jobs", "1", "--out", str(out)]
    first = history.main(argv)
    assert first["trained"] == 4 and first["kept"] == 0
    table = (out / "history.md").read_text()
    assert "| modern |" in table and "| gelu |" in table and "within noise" in table  # the rule is stated
    data = json.loads((out / "history.json").read_text())
    assert {r["run"] for r in data["rows"]} == {"modern", "gelu"}
    for r in data["rows"]:
        assert r["n"] == 2 and len(r["bpb_by_seed"]) == 2 and r["std_bpb"] is not None
        assert 0.5 < r["mean_bpb"] < 12  # bits per byte of a barely trained model: about log2(V) / bytes per token
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = sorted(p.name for p in (out / "results").iterdir())
    assert results == ["gelu-s0-b0.5.json", "gelu-s1-b0.5.json", "modern-s0-b0.5.json", "modern-s1-b0.5.json"]
    r = json.loads((out / "results" / "modern-s0-b0.5.json").read_text())
    assert r["steps"] >= 1 and r["train_cpu_s"] >= 0.5  # it trained until its CPU budget was spent
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    second = history.main(argv)  # everything is on disk: nothing is trained again
    assert second["trained"] == 0 and second["kept"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == mtimes
    assert [r["mean_bpb"] for r in second["rows"]] == [r["mean_bpb"] for r in first["rows"]]


def test_user_mistakes_are_one_line(base_dir, tmp_path):
    from mini_nanochat.common import UserError
    from mini_nanochat.stages import history

    for argv, words in ((["--only", "nope"], "unknown run"), (["--budget-s", "0"], "--budget-s"),
                        (["--seeds", "0"], "--seeds")):
        with pytest.raises(UserError, match=words):
            history.main(argv + ["--out", str(tmp_path)])
