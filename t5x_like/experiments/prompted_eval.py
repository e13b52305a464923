"""A grid's prompted evaluation phase: every run's final checkpoint on task-suite families, and its tables.

Owns, for `Experiment.zero_shot_families` (with `zero_shot_fewshot`,
`zero_shot_examples` and `zero_shot_calibration`; an arm may name its own
families, and an arm pretrained with a UL2 mixture gets `zero_shot_mode_token`
before its inputs): scoring each finished cell with `inference.prompted`
after pretraining, storing the per-example correctness in the cell's
`prompted.json` (keyed by the setting, so an evaluated cell is not evaluated
again and a new family only adds its own entry), and the report's table per
family: arms side by side, the median over templates of the accuracy with a
95% bootstrap interval over seeds and examples (`stats.median_accuracy_ci`),
the spread over templates and the family's chance level. Families whose data
is not installed are skipped with the reason, in the output and the report.
"""
from __future__ import annotations

import json
import os

import numpy as np

from t5x_like.data import task_suite
from t5x_like.experiments import spec, stats
from t5x_like.experiments.cells import ArmRun, cell_of, run_dir_of
from t5x_like.experiments.spec import Experiment
from t5x_like.inference import prompted
from t5x_like.training import checkpoints

PROMPTED_FILE = "prompted.json"
SPLIT = "validation"


def setting(experiment: Experiment) -> str:
    """The key of this experiment's prompted setting in a cell's prompted.json (uncalibrated
    settings keep the key they had before calibration existed)."""
    calibration = "" if experiment.zero_shot_calibration == "none" else f":{experiment.zero_shot_calibration}"
    return f"{SPLIT}:{experiment.zero_shot_fewshot}shot:{experiment.zero_shot_examples}{calibration}"


def arm_setting(experiment: Experiment, arm) -> str:
    """The setting key of one arm's scores: the experiment's, plus the UL2 mode token it is given."""
    mode = spec.zero_shot_mode_token(experiment, arm)
    return setting(experiment) + (f":{mode}" if mode else "")


def wanted(experiment: Experiment) -> bool:
    """Whether any arm is scored on any family (the experiment's families, or an arm's own)."""
    return any(spec.zero_shot_families(experiment, arm) for arm in experiment.arms)


def _read(run_dir: str) -> dict:
    path = os.path.join(run_dir, PROMPTED_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write(run_dir: str, stored: dict) -> None:
    path = os.path.join(run_dir, PROMPTED_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(stored, f)
    os.replace(path + ".tmp", path)


def run_phase(experiment: Experiment, arm_runs: dict[str, ArmRun], records: list[dict]) -> dict[str, str]:
    """Scores every finished run (its record) on the families it has not been scored on in this
    setting; returns {skipped family: why}. Encoder-only arms are left out (nothing to score
    choices with)."""
    available, skipped = task_suite.available(all_families(experiment))
    for family, why in skipped.items():
        print(f"prompted evaluation: family {family} skipped: {why}", flush=True)
    for record in records:
        arm = next(a for a in experiment.arms if a.name == record["arm"])
        model = arm_runs[arm.name].config.model
        if model.config.layout == "encoder_only":
            continue
        key, mode_token = arm_setting(experiment, arm), spec.zero_shot_mode_token(experiment, arm)
        families = [f for f in spec.zero_shot_families(experiment, arm) if f in available]
        cell = cell_of(experiment, arm, record["seed"])
        stored = _read(cell.run_dir)
        todo = [f for f in families if f not in stored.get(key, {})]
        if not todo:
            continue
        params = checkpoints.load_params(cell.run_dir, model.abstract_params()).params
        for family in todo:
            result = prompted.evaluate_family(model, params, family, SPLIT, experiment.zero_shot_fewshot,
                                              max_examples=experiment.zero_shot_examples,
                                              calibration=experiment.zero_shot_calibration, mode_token=mode_token)
            stored.setdefault(key, {})[family] = result.as_dict()
            _write(cell.run_dir, stored)
            print(f"[prompted] {cell.label} {family}: median over templates {result.median:.3f} "
                  f"(chance {result.chance:.3f})", flush=True)
    return skipped


def all_families(experiment: Experiment) -> list[str]:
    """Every family some arm is scored on, the experiment's first."""
    families = [f for arm in experiment.arms for f in spec.zero_shot_families(experiment, arm)]
    return list(dict.fromkeys([*experiment.zero_shot_families, *families]))


def correctness(experiment: Experiment, records: list[dict], arm, family: str) -> np.ndarray | None:
    """[seeds, templates, examples] of 0/1: the arm's scored runs (records) on `family` in its
    setting, templates in the family's order; None if the arm is not scored on it (yet)."""
    if family not in spec.zero_shot_families(experiment, arm):
        return None
    key, templates = arm_setting(experiment, arm), [t.name for t in task_suite.family(family).templates]
    runs = [_read(run_dir_of(experiment.output_dir, arm.name, r["seed"])).get(key, {}).get(family)
            for r in records if r["arm"] == arm.name]
    runs = [r for r in runs if r]
    if not runs:
        return None
    return np.array([[r["correct"][t] for t in templates] for r in runs], dtype=float)


def results(experiment: Experiment, records: list[dict]) -> dict:
    """{'setting', 'skipped', 'families': {family: {'chance', 'templates', 'arms': {arm: {'median':
    interval over seeds x examples, 'per_template', 'spread', 'seeds', 'examples'}}}}} from the
    cells' prompted.json files."""
    key = setting(experiment)
    families, skipped = task_suite.available(all_families(experiment))
    out = {"setting": key, "num_fewshot": experiment.zero_shot_fewshot,
           "calibration": experiment.zero_shot_calibration, "skipped": skipped, "families": {}}
    for family in families:
        templates = [t.name for t in task_suite.family(family).templates]
        arms = {}
        for arm in experiment.arms:
            cube = correctness(experiment, records, arm, family)
            if cube is None:
                continue
            per_template = cube.mean(axis=(0, 2))
            arms[arm.name] = {"median": stats.median_accuracy_ci(cube).as_dict(),
                              "per_template": dict(zip(templates, per_template.tolist())),
                              "spread": [float(per_template.min()), float(per_template.max())],
                              "seeds": cube.shape[0], "examples": cube.shape[2]}
        out["families"][family] = {"chance": task_suite.family(family).chance,
                                   "description": task_suite.family(family).description,
                                   "templates": templates, "arms": arms}
    return out


def markdown_section(prompted_results: dict) -> list[str]:
    """The report's section: one table per family."""
    shots = prompted_results["num_fewshot"]
    calibrated = prompted_results.get("calibration", "none") != "none"
    lines = ["", f"## Prompted evaluation ({shots}-shot; task suite, {SPLIT} split"
             + ("; calibrated: choice scores minus their scores after the content-free prompt" if calibrated else "")
             + ")", "",
             "Rank classification of each template's answer choices; accuracy: the median over templates, "
             "with a 95% bootstrap interval over seeds and examples (the same examples for every arm); "
             "**bold** where the interval excludes chance. Spread: the worst and best template."]
    for family, why in prompted_results["skipped"].items():
        lines += ["", f"- `{family}` skipped: {why}"]
    for family, table in prompted_results["families"].items():
        lines += ["", f"### {family} (chance {table['chance']:.3f})", "", table["description"] + ".", "",
                  "| arm | median accuracy [95% CI] | spread | " + " | ".join(table["templates"]) + " | seeds × examples |",
                  "|---|---|---|" + "---|" * len(table["templates"]) + "---|"]
        for arm, row in table["arms"].items():
            median = row["median"]
            shown = f"{median['estimate']:.3f} [{median['low']:.3f}, {median['high']:.3f}]"
            if median["low"] > table["chance"] or median["high"] < table["chance"]:
                shown = f"**{shown}**"
            lines.append(f"| {arm} | {shown} | {row['spread'][0]:.3f}–{row['spread'][1]:.3f} | "
                         + " | ".join(f"{row['per_template'][t]:.3f}" for t in table["templates"])
                         + f" | {row['seeds']} × {row['examples']} |")
    return lines
