"""wang_protocol.gin reduced (4 steps a phase, 1 seed, 2 families, 16 examples): every phase runs, a rerun adds nothing, the report has the phase tables and the ranking."""
import json
import re

import pytest

from t5x_like.cli import compare as compare_cli

PRETRAINED = ("cd_flm", "nd_plm", "nd_mlm", "ed_plm", "ed_mlm")
QUICK = ["--gin.TRAIN_STEPS=4", "--gin.MTF_STEPS=4", "--gin.compare.Experiment.seeds=(0,)",
         "--gin.compare.Experiment.eval_period=4", "--gin.compare.Experiment.eval_examples=16",
         "--gin.compare.Experiment.zero_shot_examples=16",
         "--gin.compare.Experiment.zero_shot_families=('sentiment', 'word_order')",
         "--gin.MTF_TASK='suite_mtf_sentiment'", "--gin.HELD_OUT=('word_order',)"]


@pytest.mark.slow
def test_wang_protocol_runs_every_phase_resumes_and_reports_phase_tables_and_rankings(tmp_path, capsys):
    out = tmp_path / "wang"
    argv = ["--gin_file=gin_configs/experiments/wang_protocol.gin", f"--gin.OUTPUT_DIR={out}", *QUICK]
    assert compare_cli.main(argv) == 0
    scored = re.findall(r"\[prompted\] (\w+) seed 0 (\w+)", capsys.readouterr().out)
    # phase 2: every pretrained arm on every family; phase 4: every finetuned arm on the held-out one
    assert sorted(scored) == sorted([(arm, f) for arm in PRETRAINED for f in ("sentiment", "word_order")]
                                    + [(arm + "_mtf", "word_order") for arm in PRETRAINED])
    results = json.loads((out / "results.json").read_text())
    phases = results["zero_shot_phases"]
    assert list(phases["phases"]) == ["pretrained", "finetuned"]
    assert phases["phases"]["finetuned"]["families"] == ["word_order"]
    assert set(phases["phases"]["pretrained"]["arms"]) == set(PRETRAINED)
    ranking = phases["ranking"]
    assert ranking["families"] == ["word_order"] and len(ranking["pairs"]) == 5
    assert min(row["after_rank"] for row in ranking["pairs"]) == 1
    assert all(1 <= row[side] <= 5 for row in ranking["pairs"] for side in ("before_rank", "after_rank"))
    report = (out / "report.md").read_text()
    for heading in ("### Phase: pretrained", "### Phase: finetuned", "### Ranking after pretrained vs after finetuned"):
        assert heading in report
    assert "published: cd_flm first" in report and "| arm | word_order | average |" in report
    # Rerun: nothing trained, nothing scored again, the same prompted files.
    stored = {p: p.read_text() for p in out.glob("runs/*/prompted.json")}
    assert len(stored) == 10
    assert compare_cli.main(argv) == 0
    assert "[prompted]" not in capsys.readouterr().out
    assert stored == {p: p.read_text() for p in out.glob("runs/*/prompted.json")}
    # A held-out family that the finetuning mixture holds: one line, exit 2, before anything runs.
    assert compare_cli.main([*argv, "--gin.HELD_OUT=('sentiment',)"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "which its finetuning mixture suite_mtf_sentiment holds" in err
