"""quick.gin with the prompted evaluation phase: one binding adds a table per task family; reruns re-score nothing."""
import json
import re

import pytest

from t5x_like.cli import compare as compare_cli


@pytest.mark.slow
def test_quick_with_zero_shot_families_reports_a_table_per_family_and_resumes(tmp_path, capsys):
    out = tmp_path / "quick"
    argv = ["--gin_file=gin_configs/experiments/quick.gin", f"--gin.OUTPUT_DIR={out}", "--gin.TRAIN_STEPS=4",
            "--gin.compare.Experiment.seeds=(0,)", "--gin.compare.Experiment.eval_period=4",
            "--gin.compare.Experiment.eval_examples=16", "--gin.compare.Experiment.zero_shot_examples=6",
            "--gin.compare.Experiment.zero_shot_families=('word_order',)"]
    assert compare_cli.main(argv) == 0
    assert len(re.findall(r"\[prompted\] \w+ seed 0 word_order", capsys.readouterr().out)) == 3
    results = json.loads((out / "results.json").read_text())
    table = results["prompted"]["families"]["word_order"]
    report = (out / "report.md").read_text()
    assert "### word_order (chance 0.500)" in report
    for arm in ("decoder_only", "prefix_lm", "encoder_decoder"):
        row = table["arms"][arm]
        median = row["median"]
        assert median["low"] <= median["estimate"] <= median["high"] and row["examples"] == 6
        assert row["spread"][0] <= median["estimate"] <= row["spread"][1]
        assert f"| {arm} | " in report and f"{median['estimate']:.3f} [{median['low']:.3f}, {median['high']:.3f}]" in report
    # Rerun: nothing re-trained or re-scored; a family added later is the only one scored.
    stored = {p: p.read_text() for p in out.glob("runs/*/prompted.json")}
    assert len(stored) == 3
    assert compare_cli.main(argv) == 0
    assert "[prompted]" not in capsys.readouterr().out
    assert stored == {p: p.read_text() for p in out.glob("runs/*/prompted.json")}
    more = [a for a in argv if "zero_shot_families" not in a] + [
        "--gin.compare.Experiment.zero_shot_families=('word_order', 'last_word')"]
    assert compare_cli.main(more) == 0
    scored = re.findall(r"\[prompted\] \w+ seed 0 (\w+)", capsys.readouterr().out)
    assert scored == ["last_word"] * 3
    assert "### last_word (chance 0.250)" in (out / "report.md").read_text()
    # An unknown family: one line, exit 2, before anything runs.
    bad = [a for a in argv if "zero_shot_families" not in a] + ["--gin.compare.Experiment.zero_shot_families=('sentimental',)"]
    assert compare_cli.main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown zero_shot_families ['sentimental']" in err
