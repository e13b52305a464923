"""The prompted phase's tables: built from the cells' prompted.json, bold only where the interval excludes chance."""
import json
import os

import numpy as np
import pytest

from t5x_like.data import task_suite
from t5x_like.experiments import prompted_eval
from t5x_like.experiments.cells import run_dir_of
from t5x_like.experiments.spec import Experiment


def _write_cell(experiment, arm, seed, accuracy):
    templates = [t.name for t in task_suite.family("word_order").templates]
    rng = np.random.default_rng(seed)
    correct = {t: (rng.random(200) < accuracy).tolist() for t in templates}
    run_dir = run_dir_of(experiment.output_dir, arm, seed)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, prompted_eval.PROMPTED_FILE), "w") as f:
        json.dump({prompted_eval.setting(experiment): {"word_order": {"correct": correct}}}, f)


def test_table_puts_arms_side_by_side_and_marks_only_intervals_that_exclude_chance(tmp_path):
    experiment = Experiment(name="t", output_dir=str(tmp_path), zero_shot_families=("word_order",),
                            arms=[{"name": "good", "model": "m"}, {"name": "blind", "model": "m"}])
    records = [{"arm": arm, "seed": seed} for arm in ("good", "blind") for seed in (0, 1)]
    for record in records:
        _write_cell(experiment, record["arm"], record["seed"], 0.8 if record["arm"] == "good" else 0.5)
    table = prompted_eval.results(experiment, records)["families"]["word_order"]
    good, blind = table["arms"]["good"], table["arms"]["blind"]
    assert good["seeds"] == 2 and good["examples"] == 200 and table["chance"] == 0.5
    assert good["median"]["low"] > 0.5 and blind["median"]["low"] < 0.5 < blind["median"]["high"]
    lines = prompted_eval.markdown_section(prompted_eval.results(experiment, records))
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| good") or line.startswith("| blind")}
    assert "**" in rows["good"] and "**" not in rows["blind"]


def test_a_calibrated_setting_is_stored_apart_from_the_raw_one_and_an_unknown_calibration_is_refused(tmp_path):
    arms = [{"name": "a", "model": "m"}]
    raw = Experiment(name="t", output_dir=str(tmp_path), zero_shot_families=("word_order",), arms=arms)
    calibrated = Experiment(name="t", output_dir=str(tmp_path), zero_shot_families=("word_order",), arms=arms,
                            zero_shot_calibration="content_free")
    assert prompted_eval.setting(raw) == "validation:0shot:200"  # the key cells stored before calibration existed
    assert prompted_eval.setting(calibrated) != prompted_eval.setting(raw)
    assert "calibrated" in prompted_eval.markdown_section(prompted_eval.results(calibrated, []))[1]
    with pytest.raises(ValueError, match="zero_shot_calibration"):
        Experiment(name="t", output_dir=str(tmp_path), arms=arms, zero_shot_calibration="pmi")
