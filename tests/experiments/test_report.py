"""Report sections from planted records: ranking over time, comparisons, protocol agreement, scaling fits."""
import json
import os

import pytest

from t5x_like.experiments import report, spec
from t5x_like.training import machine


def _write_curve(run_dir: str, steps, losses):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step, loss in zip(steps, losses):
            f.write(json.dumps({"step": step, "split": "eval", "loss": loss}) + "\n")


def test_ranking_reports_when_the_order_settles_and_which_pairs_crossed(tmp_path):
    arms = [{"name": "fast_start", "model": "m.gin"}, {"name": "slow_start", "model": "m.gin"},
            {"name": "other_task", "model": "m.gin", "task": "elsewhere"},
            {"name": "adapted", "model": "m.gin", "init_from": "fast_start"}]
    experiment = spec.Experiment(name="e", output_dir=str(tmp_path), arms=arms, seeds=(0, 1, 2))
    steps = [100, 200, 300, 400]
    for seed in experiment.seeds:
        wobble = 0.01 * seed
        _write_curve(str(tmp_path / "runs" / f"fast_start_seed{seed}"), steps, [3.0 + wobble, 2.6, 2.4, 2.3 + wobble])
        _write_curve(str(tmp_path / "runs" / f"slow_start_seed{seed}"), steps, [3.5 + wobble, 2.7, 2.2, 2.0 + wobble])
        for name in ("other_task", "adapted"):
            _write_curve(str(tmp_path / "runs" / f"{name}_seed{seed}"), steps, [1.0, 1.0, 1.0, 1.0])
    records = [{"arm": arm.name, "seed": seed} for arm in experiment.arms for seed in experiment.seeds]

    (group,) = report._ranking(experiment, records)  # one task with two from-scratch arms
    assert group["final_ranking"] == ["slow_start", "fast_start"]
    assert group["settled_from"] == 300
    (pair,) = group["pairs"]
    assert (pair["arm"], pair["other"]) == ("slow_start", "fast_start")
    assert pair["crossings"] == [300]
    assert pair["resolved_from"] == 300
    rendered = "\n".join(report._render_ranking([group]))
    assert "holds from step 300 of 400" in rendered and "| slow_start vs fast_start |" in rendered


def test_comparisons_add_the_named_pairs_to_the_differences(tmp_path):
    arms = [{"name": name, "model": "m.gin"} for name in ("reference", "a", "b")]
    experiment = spec.Experiment(name="e", output_dir=str(tmp_path), arms=arms, seeds=(0, 1),
                                 comparisons=(("a", "b"),))
    shift = {"reference": 0.0, "a": 1.0, "b": 1.5}
    records = [{"arm": arm, "seed": seed, "shared_nll_per_example": [2.0 + shift[arm] + 0.01 * i for i in range(8)]}
               for arm in shift for seed in experiment.seeds]
    differences = {(d["arm"], d["reference"]): d for d in report._differences(experiment, records)}
    assert set(differences) == {("a", "reference"), ("b", "reference"), ("a", "b")}
    assert abs(differences[("a", "b")]["estimate"] + 0.5) < 1e-9
    assert differences[("a", "b")]["sentence"].startswith("a has lower loss than b by 0.5")


def test_a_comparison_of_arms_scored_on_different_tasks_is_one_clear_error(tmp_path):
    arms = [{"name": "a", "model": "m.gin"}, {"name": "b", "model": "m.gin", "eval_task": "elsewhere"}]
    with pytest.raises(ValueError, match="different eval tasks"):
        spec.Experiment(name="e", output_dir=str(tmp_path), arms=arms, comparisons=(("a", "b"),))
    with pytest.raises(ValueError, match="is not a pair of arms"):
        spec.Experiment(name="e", output_dir=str(tmp_path), arms=arms, comparisons=(("a", "c"),))


def test_protocol_agreement_is_kendall_tau_between_pretraining_loss_and_each_downstream_metric():
    # Four arms on one task: accuracy follows their pretraining loss exactly, the downstream
    # loss reverses it; two arms on another task are too few to rank.
    def arm(name, task, own, accuracy, loss):
        return {"arm": name, "task": task, "eval_task": "shared", "own_objective_eval_loss": own,
                "shared_nll": {"estimate": own}, "downstream": {"d": {"accuracy": accuracy, "loss": loss,
                                                                       "examples": 256}}}
    arms = [arm("a", "t", 2.0, 80.0, 3.0), arm("b", "t", 2.5, 70.0, 2.0), arm("c", "t", 3.0, 60.0, 1.0),
            arm("d", "t", 3.5, 50.0, 0.5), arm("x", "u", 1.0, 10.0, 9.0), arm("y", "u", 1.5, 20.0, 8.0)]
    rows = {(r["pretraining"], r["metric"]): r for r in report.protocol_agreement(arms)}
    assert set(rows) == {("own eval loss (t)", "accuracy"), ("own eval loss (t)", "loss"),
                         ("shared metric (shared)", "accuracy"), ("shared metric (shared)", "loss")}
    assert rows[("own eval loss (t)", "accuracy")]["kendall_tau"] == 1.0
    assert rows[("own eval loss (t)", "loss")]["kendall_tau"] == -1.0
    assert rows[("own eval loss (t)", "accuracy")]["arms"] == ["a", "b", "c", "d"]
    assert len(rows[("shared metric (shared)", "accuracy")]["arms"]) == 6
    for a in arms:
        a["downstream"]["d"]["accuracy"] = 0.0
    equal = {(r["pretraining"], r["metric"]): r for r in report.protocol_agreement(arms)}
    assert equal[("own eval loss (t)", "accuracy")]["kendall_tau"] is None
    arms[0]["downstream"]["d"]["loss"] = float("nan")  # a diverged finetune
    assert all(r["kendall_tau"] is None for r in report.protocol_agreement(arms) if r["metric"] == "loss")


def test_scaling_section_fits_each_group_both_ways_and_keeps_one_fit_when_the_other_fails(tmp_path):
    arms = [{"name": f"{group}_{n}", "model": "m.gin", "group": group} for group in ("a", "b") for n in (1, 2, 3, 4)]
    experiment = spec.Experiment(name="e", output_dir=str(tmp_path), arms=arms, seeds=(0, 1), scaling_fit=True)
    sizes = {1: 1e5, 2: 3e5, 3: 1e6, 4: 3e6}
    records = []
    for arm in experiment.arms:
        group, size = arm.name.split("_")
        loss = 20.0 * sizes[int(size)] ** -0.1 if group == "a" else 0.0  # b: no positive loss to take a log of
        records += [{"arm": arm.name, "group": group, "seed": seed, "non_embedding_params": sizes[int(size)],
                     "shared_nll_per_example": [loss * (1 + 0.001 * seed)] * 4} for seed in experiment.seeds]
    fits = report._scaling(experiment, experiment.arms, records)
    assert fits["a"]["kaplan"]["alpha"]["estimate"] == pytest.approx(0.1, abs=0.002)
    assert "alpha" in fits["a"] and "error" not in fits["a"]
    assert "positive, finite" in fits["b"]["kaplan"]["error"]
    rendered = report.render_markdown({"experiment": "e", "description": "", "task": "t", "train_steps": 1,
                                       "batch_size": 1, "seeds": [0, 1], "eval_task": "t", "reference_arm": "a_1",
                                       "arms": [], "differences": [], "scaling": fits})
    row_a = next(line for line in rendered.splitlines() if line.startswith("| a |"))
    assert row_a.count("[") == 2  # both intervals


def test_the_report_names_the_machine_it_was_written_on_and_each_one_its_runs_trained_on():
    here = machine.this_machine()
    elsewhere = {**here, "cpu_model": "Another CPU", "vector_extensions": ["avx512f"]}
    records = [{"machine": here}, {"machine": elsewhere}, {"machine": here}, {}]
    assert report.trained_on(records) == [machine.machine_line(here), machine.machine_line(elsewhere)]
    rendered = report.render_markdown({"experiment": "e", "description": "", "task": "t", "train_steps": 1,
                                       "batch_size": 1, "seeds": [0], "eval_task": "t", "reference_arm": "a",
                                       "arms": [], "differences": [], "machine": here,
                                       "trained_on": report.trained_on(records)})
    assert f"Report written on: {machine.machine_line(here)}." in rendered
    assert f"Runs trained on: {machine.machine_line(elsewhere)}." in rendered
