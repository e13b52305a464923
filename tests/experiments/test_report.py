"""The report's ranking-over-time section, from planted eval curves."""
import json
import os

from t5x_like.experiments import grid, report


def _write_curve(run_dir: str, steps, losses):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step, loss in zip(steps, losses):
            f.write(json.dumps({"step": step, "split": "eval", "loss": loss}) + "\n")


def test_ranking_reports_when_the_order_settles_and_which_pairs_crossed(tmp_path):
    arms = [{"name": "fast_start", "model": "m.gin"}, {"name": "slow_start", "model": "m.gin"},
            {"name": "other_task", "model": "m.gin", "task": "elsewhere"},
            {"name": "adapted", "model": "m.gin", "init_from": "fast_start"}]
    experiment = grid.Experiment(name="e", output_dir=str(tmp_path), arms=arms, seeds=(0, 1, 2))
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
