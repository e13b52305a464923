"""Wang et al.'s protocol in the report: a table per phase, the ranking before and after, and the spec's checks."""
import json
import os

import numpy as np
import pytest

from t5x_like.data import task_suite
from t5x_like.experiments import prompted_eval, spec, stats, zero_shot_phases
from t5x_like.experiments.cells import run_dir_of
from t5x_like.experiments.spec import Experiment

HELD_OUT = ("word_order", "last_word")
MIXTURE = "suite_mtf_sentiment"
# accuracy per arm: the pretrained leader (cd) is overtaken after finetuning (ed_mtf)
ACCURACY = {"cd": 0.8, "ed": 0.4, "cd_mtf": 0.45, "ed_mtf": 0.9}


def _experiment(tmp_path, **changes):
    arms = [{"name": "cd", "model": "m", "phase": "pretrained"},
            {"name": "ed", "model": "m", "phase": "pretrained"},
            {"name": "cd_mtf", "model": "m", "phase": "finetuned", "init_from": "cd", "task": MIXTURE,
             "zero_shot_families": list(HELD_OUT)},
            {"name": "ed_mtf", "model": "m", "phase": "finetuned", "init_from": "ed", "task": MIXTURE,
             "zero_shot_families": list(HELD_OUT)}]
    return Experiment(**{"name": "t", "output_dir": str(tmp_path), "arms": arms,
                         "zero_shot_families": ("sentiment", *HELD_OUT),
                         "published_rankings": {"pretrained": "cd first", "finetuned": "ed_mtf first"}, **changes})


def _write_cells(experiment):
    records = []
    for arm in experiment.arms:
        for seed in (0, 1):
            rng = np.random.default_rng([seed, len(arm.name)])
            stored = {family: {"correct": {t.name: (rng.random(150) < ACCURACY[arm.name]).tolist()
                                           for t in task_suite.family(family).templates}}
                      for family in spec.zero_shot_families(experiment, arm)}
            run_dir = run_dir_of(experiment.output_dir, arm.name, seed)
            os.makedirs(run_dir)
            with open(os.path.join(run_dir, prompted_eval.PROMPTED_FILE), "w") as f:
                json.dump({prompted_eval.arm_setting(experiment, arm): stored}, f)
            records.append({"arm": arm.name, "seed": seed})
    return records


def test_a_table_per_phase_with_its_arms_families_and_the_average(tmp_path):
    experiment = _experiment(tmp_path)
    results = zero_shot_phases.phase_results(experiment, _write_cells(experiment))
    pretrained, finetuned = results["phases"]["pretrained"], results["phases"]["finetuned"]
    assert list(pretrained["arms"]) == ["cd", "ed"] and list(finetuned["arms"]) == ["cd_mtf", "ed_mtf"]
    assert [f for f in pretrained["families"] if f in HELD_OUT] == list(HELD_OUT)
    assert finetuned["families"] == list(HELD_OUT)  # held-in sentiment is not scored after finetuning
    for row in finetuned["arms"].values():
        medians = [row[f]["estimate"] for f in HELD_OUT]
        average = row[zero_shot_phases.AVERAGE]
        assert average["estimate"] == pytest.approx(np.mean(medians))
        assert average["low"] <= average["estimate"] <= average["high"]
    assert finetuned["chance"][zero_shot_phases.AVERAGE] == pytest.approx((0.5 + 0.25) / 2)
    lines = zero_shot_phases.phase_section(results)
    assert "### Phase: pretrained" in lines and "### Phase: finetuned" in lines
    header = next(line for line in lines if line.startswith("| arm | ") and "sentiment" not in line)
    assert header == "| arm | word_order | last_word | average |"


def test_ranking_is_on_the_held_out_families_for_both_phases_with_the_published_one_beside(tmp_path):
    experiment = _experiment(tmp_path)
    rank = zero_shot_phases.phase_results(experiment, _write_cells(experiment))["ranking"]
    assert (rank["before"], rank["after"], rank["families"]) == ("pretrained", "finetuned", list(HELD_OUT))
    ranks = {row["before"]: (row["before_rank"], row["after_rank"]) for row in rank["pairs"]}
    assert ranks == {"cd": (1, 2), "ed": (2, 1)}  # the ranking flips
    assert rank["verdicts"]["pretrained"].startswith("cd first: ahead of ed (+")
    assert rank["verdicts"]["finetuned"].startswith("ed_mtf first: ahead of cd_mtf (+")
    text = "\n".join(zero_shot_phases.phase_section({"phases": {}, "ranking": rank}))
    assert "published: cd first" in text and "published: ed_mtf first" in text


def test_equal_estimates_share_a_rank():
    interval = lambda estimate: {"estimate": estimate, "low": estimate - 0.1, "high": estimate + 0.1}
    assert zero_shot_phases._ranks({"a": interval(0.5), "b": interval(0.6), "c": interval(0.5), "d": None}) == \
        {"b": 1, "a": 2, "c": 2}


def test_a_small_lead_on_the_same_examples_is_ahead_though_the_arms_intervals_overlap():
    """Paired: arm b is arm a with 4% of its correct answers turned wrong (the same examples, the
    same seeds), so a leads on every replicate; their own intervals overlap. An arm equal to a
    is within noise (its paired difference is exactly 0)."""
    rng = np.random.default_rng(0)
    a = [(rng.random((2, 3, 200)) < 0.6).astype(float) for _ in range(2)]
    b = [cube * (rng.random(cube.shape) > 0.04) for cube in a]
    scores = {name: stats.mean_median_accuracy_ci(cubes).as_dict() for name, cubes in
              (("a", a), ("b", b), ("same", [c.copy() for c in a]))}
    assert scores["b"]["high"] > scores["a"]["low"]  # the intervals overlap
    difference = stats.mean_median_difference_ci(a, b)
    assert difference.low > 0 and difference.estimate == pytest.approx(scores["a"]["estimate"] - scores["b"]["estimate"])
    assert stats.mean_median_difference_ci(a, a).as_dict() == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    verdict = zero_shot_phases.leader_verdict({"b": scores["b"], "a": scores["a"]}, {"a": a, "b": b})
    assert verdict.startswith("a first: ahead of b (+") and "within noise" not in verdict
    del scores["b"]
    verdict = zero_shot_phases.leader_verdict(scores, {"a": a, "same": [c.copy() for c in a]})
    assert "within noise of" in verdict and "ahead" not in verdict


def test_no_phases_no_section(tmp_path):
    experiment = Experiment(name="t", output_dir=str(tmp_path), zero_shot_families=HELD_OUT,
                            arms=[{"name": "a", "model": "m"}])
    assert zero_shot_phases.phase_results(experiment, []) is None


def test_a_held_out_family_in_the_arms_finetuning_mixture_is_refused(tmp_path):
    arms = [{"name": "a", "model": "m"},
            {"name": "a_mtf", "model": "m", "init_from": "a", "task": "suite_mtf_sentiment_word_order",
             "zero_shot_families": ["word_order", "last_word"]}]
    with pytest.raises(ValueError, match=r"a_mtf is evaluated zero-shot on \['word_order'\], which its finetuning"):
        Experiment(name="t", output_dir=str(tmp_path), arms=arms)
    with pytest.raises(ValueError, match="not task-suite families"):
        Experiment(name="t", output_dir=str(tmp_path), arms=[{"name": "a", "model": "m", "zero_shot_families": ["x"]}])


def test_only_arms_pretrained_with_ul2_get_the_mode_token_and_their_own_setting(tmp_path):
    experiment = Experiment(name="t", output_dir=str(tmp_path), zero_shot_families=HELD_OUT,
                            arms=[{"name": "ul2", "model": "m", "task": "shakespeare_ul2"},
                                  {"name": "lm", "model": "m", "task": "shakespeare_causal_lm"}])
    ul2, lm = experiment.arms
    assert spec.zero_shot_mode_token(experiment, ul2) == "[S2S]" and spec.zero_shot_mode_token(experiment, lm) is None
    assert prompted_eval.arm_setting(experiment, ul2) == prompted_eval.setting(experiment) + ":[S2S]"
    assert prompted_eval.arm_setting(experiment, lm) == prompted_eval.setting(experiment)
    off = Experiment(name="t", output_dir=str(tmp_path), arms=[{"name": "ul2", "model": "m", "task": "shakespeare_ul2"}],
                     zero_shot_mode_token=None)
    assert spec.zero_shot_mode_token(off, off.arms[0]) is None
    with pytest.raises(ValueError, match="zero_shot_mode_token '\\[R\\]' is not one of UL2's"):
        Experiment(name="t", output_dir=str(tmp_path), arms=[{"name": "a", "model": "m"}], zero_shot_mode_token="[R]")


def test_the_average_over_one_family_is_that_familys_interval():
    cube = (np.random.default_rng(0).random((2, 3, 80)) < 0.6).astype(float)
    assert stats.mean_median_accuracy_ci([cube]) == stats.median_accuracy_ci(cube)
    with pytest.raises(ValueError, match="same seeds"):
        stats.mean_median_accuracy_ci([cube, cube[:1]])
