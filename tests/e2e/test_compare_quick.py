"""quick.gin end to end through `t5x-like compare`: report, downstream scores, and a resume that re-trains nothing."""
import json
import re

import pytest

from t5x_like.cli import compare as compare_cli


@pytest.mark.slow
def test_quick_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "quick"
    argv = ["--gin_file=gin_configs/experiments/quick.gin", f"--gin.OUTPUT_DIR={out}", "--gin.TRAIN_STEPS=6",
            "--gin.compare.Experiment.eval_period=3", "--gin.compare.Experiment.eval_examples=16",
            "--gin.compare.Experiment.downstream_tasks=('probe_copy',)", "--gin.compare.Experiment.downstream_steps=2"]
    assert compare_cli.main(argv) == 0
    for name in ("report.md", "results.json", "results.csv", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "metrics").glob("*.jsonl"))) == 6
    assert any((out / "jax_cache").iterdir()), "compiled programs are cached for the next seed and rerun"
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for arm in results["arms"]:
        shared = arm["shared_nll"]
        assert f"| {arm['arm']} | {arm['eval_task']} | {shared['estimate']:.4f} [{shared['low']:.4f}, {shared['high']:.4f}]" in report
        assert f"{arm['params']:,}" in report
    for difference in results["differences"]:
        assert difference["sentence"] in report
    for arm in results["arms"]:  # downstream: finetuned 2 steps from each run, scored with the task's metrics
        exact_match = arm["downstream"]["probe_copy"]["exact_match"]
        assert 0.0 <= exact_match <= 100.0
        assert f"| {arm['arm']} | probe_copy | " in report and f"exact_match {exact_match:.4g}" in report
    # A second invocation finds every run finished and re-trains nothing.
    stamps = {p: p.stat().st_mtime for p in out.glob("runs/*/result.json")}
    capsys.readouterr()
    assert compare_cli.main(argv) == 0
    assert len(re.findall(r"done earlier, kept", capsys.readouterr().out)) == 6
    assert stamps == {p: p.stat().st_mtime for p in out.glob("runs/*/result.json")}
    # A report states only what the runs did.
    changed = [a for a in argv if not a.startswith("--gin.TRAIN_STEPS")] + ["--gin.TRAIN_STEPS=8"]
    capsys.readouterr()
    assert compare_cli.main(changed) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another configuration" in err and "train_steps: 6 -> 8" in err
    record_path = out / "runs" / "prefix_lm_seed1" / "result.json"
    record_path.unlink()  # as if killed after its final checkpoint, before its record
    assert compare_cli.main(argv + ["--report_only"]) == 0
    assert "**Not finished (1 runs, left out of every number below)**: prefix_lm seed 1." in (out / "report.md").read_text()
    assert compare_cli.main(argv) == 0  # resumes at its final step: nothing to train, record rebuilt
    rebuilt = json.loads(record_path.read_text())
    assert rebuilt["steps"] == 6 and rebuilt["final_train_metrics"]["loss"] > 0
    assert "Not finished" not in (out / "report.md").read_text()
    empty = [a if not a.startswith("--gin.OUTPUT_DIR") else f"--gin.OUTPUT_DIR={tmp_path / 'empty'}" for a in argv]
    assert compare_cli.main(empty + ["--report_only"]) == 2
    assert "no finished runs" in capsys.readouterr().err
