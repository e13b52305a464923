"""The comparison runner: matching claims, and quick.gin end to end."""
import glob
import json
import os
import re

import pytest

from t5x_like import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, "gin_configs/experiments/*.gin")))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_satisfies_its_matching_claims(path):
    experiment = compare.load_experiment([path], ["OUTPUT_DIR = '/tmp/unused'"])
    assert compare.check_claims(experiment) == []


def test_a_false_claim_is_caught():
    experiment = compare.load_experiment([os.path.join(REPO, "gin_configs/experiments/quick.gin")], [])
    encdec = next(a for a in experiment.arms if a.name == "encoder_decoder")
    experiment.arms = [a if a is not encdec else compare.Arm(**{**encdec.__dict__, "claims": {"params": "P"}})
                       for a in experiment.arms]
    failures = compare.check_claims(experiment)
    assert len(failures) == 1 and "encoder_decoder: claims params = P" in failures[0]


@pytest.mark.parametrize("claim,unit,value", [("P", "P", 1.0), ("2P", "P", 2.0), ("P/2", "P", 0.5), ("M/2", "M", 0.5), ("1.5M", "M", 1.5)])
def test_claim_multiples(claim, unit, value):
    assert compare.parse_multiple(claim, unit) == value


def test_bad_claim_is_a_clear_error():
    with pytest.raises(ValueError, match="expected e.g."):
        compare.parse_multiple("two P", "P")


@pytest.mark.slow
def test_quick_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "quick"
    argv = ["--gin_file=gin_configs/experiments/quick.gin", f"--gin.OUTPUT_DIR={out}", "--gin.TRAIN_STEPS=6",
            "--gin.compare.Experiment.eval_period=3", "--gin.compare.Experiment.eval_examples=16",
            "--gin.compare.Experiment.downstream_tasks=('probe_copy',)", "--gin.compare.Experiment.downstream_steps=2"]
    assert compare.main(argv) == 0
    for name in ("report.md", "results.json", "results.csv", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "metrics").glob("*.jsonl"))) == 6
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
    assert compare.main(argv) == 0
    assert len(re.findall(r"done earlier, kept", capsys.readouterr().out)) == 6
    assert stamps == {p: p.stat().st_mtime for p in out.glob("runs/*/result.json")}
