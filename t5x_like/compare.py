"""`t5x-like compare`: run a grid of training runs and report a fair comparison.

    t5x-like compare --gin_file=gin_configs/experiments/quick.gin --gin.OUTPUT_DIR=out/quick

An experiment file binds `compare.Experiment` (see the files under
gin_configs/experiments/). Each grid cell (arm × seed) is a normal training
run — the arm's model gin file + gin_configs/runs/pretrain.gin — with its own
MODEL_DIR under OUTPUT_DIR/runs/. After training, the cell is scored on the
shared metric and its record is written to MODEL_DIR/result.json; a cell with
a record is never re-run, and a cell cut off mid-run resumes from its
checkpoint. Then `report.py` turns the records into report.md, results.json,
results.csv, loss_curves.png and metrics/.

The shared metric: the negative log-likelihood per target token of the
`eval_task` validation examples (the same examples, in the same order, for
every arm with that eval task), given each example's inputs. Every layout
with a decoder can be scored on a prefix-LM task; encoder-only arms are
scored on an MLM task (NLL of the masked tokens). Arms are compared with the
reference arm of their eval task (the experiment's reference_arm, or the
first arm with that eval task).

Matching claims: an arm may claim its size and cost relative to the
reference arm, T5 Table 2 style: `'claims': {'params': 'P', 'flops': 'M'}`,
with P = the reference's non-embedding parameters and M = its training
FLOPs per example (sizing.py). `check_claims` verifies them (tests run it on
every shipped experiment) and the report prints the measured ratios.
"""
from __future__ import annotations

if __name__ == "__main__":
    # Run the importable copy, so gin registers Experiment under t5x_like.compare.
    import sys

    from t5x_like.compare import main as _main
    sys.exit(_main())

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time

import gin
import numpy as np

from t5x_like import gin_utils, sizing

log = logging.getLogger("t5x_like.compare")
PRETRAIN_GIN = "gin_configs/runs/pretrain.gin"
RESULT_FILE = "result.json"


@gin.configurable
@dataclasses.dataclass
class Experiment:
    """One comparison: arms × seeds on one task, with matched sizes and lengths."""

    name: str = gin.REQUIRED
    arms: list = gin.REQUIRED          # dicts: name, model, [bindings, task, claims, group, lengths]
    task: str = "shakespeare_prefix_lm"
    inputs_length: int = 96
    targets_length: int = 32
    seeds: tuple = (0, 1)
    train_steps: int = 200
    batch_size: int = 16
    eval_period: int = 50
    eval_task: str | None = "shakespeare_prefix_lm"
    eval_examples: int = 256
    reference_arm: str | None = None   # defines P and M; default: the first arm
    claim_tolerance: float = 0.01
    run_bindings: tuple = ()           # extra bindings for every run (learning rate, ...)
    scaling_fit: bool = False          # fit L(N) per arm group (needs >= 3 sizes per group)
    # Downstream evaluation of every run: each task is finetuned from the run's
    # checkpoint for downstream_steps steps (0: scored zero-shot) and scored
    # with its seqio metrics (evaluation.evaluate) on eval_examples examples.
    downstream_tasks: tuple = ()
    downstream_steps: int = 0
    description: str = ""
    output_dir: str = gin.REQUIRED


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    model: str
    bindings: tuple = ()
    task: str | None = None
    claims: dict = dataclasses.field(default_factory=dict)
    group: str | None = None
    eval_task: str | None = None  # default: the experiment's
    inputs_length: int | None = None
    targets_length: int | None = None

    @classmethod
    def from_dict(cls, spec: dict) -> "Arm":
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown or "name" not in spec or "model" not in spec:
            raise ValueError(f"arm {spec!r}: needs 'name' and 'model'; unknown keys {sorted(unknown)}")
        return cls(**{**spec, "bindings": tuple(spec.get("bindings", ())),
                      "claims": dict(spec.get("claims", {}))})


@dataclasses.dataclass(frozen=True)
class Cell:
    arm: Arm
    seed: int
    run_dir: str

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed {self.seed}"


# --- loading ----------------------------------------------------------------------
def load_experiment(gin_files: list[str], bindings: list[str]) -> Experiment:
    gin_utils.parse(gin_files, bindings, finalize=False)
    experiment = Experiment()
    arms = [Arm.from_dict(a) for a in experiment.arms]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment {experiment.name}: arm names must be unique, got {names}")
    experiment.arms = arms
    return experiment


def arm_config(arm: Arm):
    """The TransformerConfig of an arm (its model file plus its bindings)."""
    from t5x_like.size import load_model_config
    return load_model_config(arm.model, list(arm.bindings))


def arm_lengths(experiment: Experiment, arm: Arm) -> tuple[int, int]:
    return (arm.inputs_length or experiment.inputs_length, arm.targets_length or experiment.targets_length)


# --- matching claims ----------------------------------------------------------------
def parse_multiple(claim: str, unit: str) -> float:
    """'2P' -> 2.0, 'P/2' -> 0.5, 'M' -> 1.0, '1.5M' -> 1.5."""
    match = re.fullmatch(rf"\s*([0-9.]*)\s*{unit}\s*(?:/\s*([0-9.]+))?\s*", claim)
    if not match:
        raise ValueError(f"claim {claim!r}: expected e.g. '{unit}', '2{unit}' or '{unit}/2'")
    return float(match.group(1) or 1.0) / float(match.group(2) or 1.0)


def sizes(experiment: Experiment) -> dict[str, dict]:
    """Per arm: config summary plus ratios to the reference arm's P and M."""
    rows = {}
    for arm in experiment.arms:
        config = arm_config(arm)
        inputs_length, targets_length = arm_lengths(experiment, arm)
        rows[arm.name] = {**sizing.summary(config, inputs_length, targets_length),
                          "non_embedding_params": sizing.count_params(config).non_embedding,
                          "inputs_length": inputs_length, "targets_length": targets_length}
    reference = rows[experiment.reference_arm or experiment.arms[0].name]
    for row in rows.values():
        row["params_ratio"] = row["non_embedding_params"] / reference["non_embedding_params"]
        row["flops_ratio"] = row["train_flops_per_example"] / reference["train_flops_per_example"]
    return rows


def check_claims(experiment: Experiment, size_rows: dict | None = None) -> list[str]:
    """Claims that the configs do not satisfy within the tolerance (empty = all hold)."""
    size_rows = size_rows or sizes(experiment)
    failures = []
    for arm in experiment.arms:
        row = size_rows[arm.name]
        for kind, unit, measured in (("params", "P", row["params_ratio"]), ("flops", "M", row["flops_ratio"])):
            if kind in arm.claims:
                claimed = parse_multiple(arm.claims[kind], unit)
                if abs(measured - claimed) > experiment.claim_tolerance * claimed:
                    failures.append(f"{arm.name}: claims {kind} = {arm.claims[kind]} but measures "
                                    f"{measured:.4f}{unit} (tolerance {experiment.claim_tolerance:.0%})")
    return failures


# --- running ------------------------------------------------------------------------
def plan(experiment: Experiment) -> list[Cell]:
    root = os.path.join(experiment.output_dir, "runs")
    return [Cell(arm, seed, os.path.join(root, f"{arm.name}_seed{seed}"))
            for seed in experiment.seeds for arm in experiment.arms]


def train_argv(experiment: Experiment, cell: Cell) -> list[str]:
    """The `t5x-like train` command line of one cell (also printed in the report)."""
    from t5x_like.data import matched_feature_lengths, tasks
    task = cell.arm.task or experiment.task
    layout = arm_config(cell.arm).layout
    lengths = matched_feature_lengths(layout, *arm_lengths(experiment, cell.arm),
                                      task_has_inputs=tasks.task_has_inputs(task))
    bindings = [*experiment.run_bindings, *cell.arm.bindings,
                f"MODEL_DIR='{cell.run_dir}'", f"MIXTURE_OR_TASK_NAME='{task}'",
                f"TASK_FEATURE_LENGTHS={lengths!r}", f"TRAIN_STEPS={experiment.train_steps}",
                f"SEED={cell.seed}", f"BATCH_SIZE={experiment.batch_size}",
                f"EVAL_PERIOD={experiment.eval_period}",
                f"CHECKPOINT_PERIOD={experiment.eval_period}"]
    return [f"--gin_file={cell.arm.model}", f"--gin_file={PRETRAIN_GIN}"] + [f"--gin.{b}" for b in bindings]


def run_cell(experiment: Experiment, cell: Cell) -> dict:
    """Trains (or resumes) one cell, scores it, writes and returns its record."""
    from t5x_like import train as train_lib
    argv = train_argv(experiment, cell)
    train_lib.parse_gin(argv)
    config = train_lib.TrainConfig()
    start = time.time()
    result = train_lib.train(config)
    if result.stopped_by_signal:
        raise KeyboardInterrupt(f"{cell.label} stopped by a signal; rerun the same command to resume")
    eval_task = cell.arm.eval_task or experiment.eval_task
    inputs_length, targets_length = arm_lengths(experiment, cell.arm)
    shared = (score_shared_metric(config, eval_task, inputs_length, targets_length, experiment.eval_examples)
              if eval_task else None)
    record = {
        "arm": cell.arm.name, "seed": cell.seed, "group": cell.arm.group or cell.arm.name,
        "eval_task": eval_task,
        "layout": config.model.config.layout, "task": config.mixture_or_task_name,
        **{k: v for k, v in sizing.summary(config.model.config, inputs_length, targets_length).items()
           if k != "layout"},
        "steps": result.step, "batch_size": config.batch_size,
        "examples_seen": result.step * config.batch_size,
        "final_train_metrics": result.train_metrics, "final_eval_metrics": result.eval_metrics,
        "shared_nll_per_example": shared,
        "downstream": {task: evaluate_downstream(experiment, cell, config, task)
                       for task in experiment.downstream_tasks},
        "train_seconds_this_invocation": time.time() - start,
        "command": "t5x-like train " + " ".join(argv),
    }
    with open(os.path.join(cell.run_dir, RESULT_FILE + ".tmp"), "w") as f:
        json.dump(record, f)
    os.replace(os.path.join(cell.run_dir, RESULT_FILE + ".tmp"), os.path.join(cell.run_dir, RESULT_FILE))
    return record


def score_shared_metric(config, eval_task: str, inputs_length: int, targets_length: int,
                        num_examples: int) -> list[float]:
    """Per-example mean NLL of the eval task's target tokens, for the first eval_examples."""
    import jax

    from t5x_like import data, evaluation

    model = config.model
    lengths = data.matched_feature_lengths(model.config.layout, inputs_length, targets_length)
    params = evaluation.restore_params(model, config.model_dir)
    dataset = data.get_dataset(eval_task, lengths, split="validation", layout=model.config.layout,
                               batch_size=16, shuffle=False, seed=0, pack=False, num_epochs=1)
    score = jax.jit(model.score)
    per_example: list[float] = []
    for batch in dataset.as_numpy_iterator():
        log_likelihood = np.asarray(score(params, batch))
        _, weights = model.targets_and_weights(batch)
        tokens = np.maximum(np.asarray(weights).sum(-1), 1.0)
        per_example.extend((-log_likelihood / tokens).tolist())
        if len(per_example) >= num_examples:
            break
    if len(per_example) < num_examples:
        log.warning("%s has only %d validation examples (asked %d)", eval_task, len(per_example), num_examples)
    return per_example[:num_examples]


def evaluate_downstream(experiment: Experiment, cell: Cell, config, task: str) -> dict[str, float]:
    """The task's metrics for one run: finetuned (params from the run) or zero-shot."""
    from t5x_like import data, evaluation
    from t5x_like import train as train_lib

    model = config.model
    lengths = data.matched_feature_lengths(model.config.layout, *arm_lengths(experiment, cell.arm),
                                           task_has_inputs=data.tasks.task_has_inputs(task))
    source = config.model_dir
    if experiment.downstream_steps:
        finetune = dataclasses.replace(
            config, model_dir=os.path.join(cell.run_dir, "downstream", task), mixture_or_task_name=task,
            task_feature_lengths=lengths, train_steps=experiment.downstream_steps,
            init_checkpoint=config.model_dir, eval_split=None, checkpoint_period=experiment.downstream_steps)
        train_lib.train(finetune)
        source = finetune.model_dir
    params = evaluation.restore_params(model, source)
    result = evaluation.evaluate(model, params, task, "validation", lengths, batch_size=16,
                                 max_examples=experiment.eval_examples)
    return result.metrics.get(task, {})


def run_grid(experiment: Experiment) -> list[dict]:
    cells = plan(experiment)
    records, durations = [], []
    for index, cell in enumerate(cells, 1):
        path = os.path.join(cell.run_dir, RESULT_FILE)
        if os.path.exists(path):
            with open(path) as f:
                records.append(json.load(f))
            print(f"[run {index}/{len(cells)}] {cell.label}: done earlier, kept", flush=True)
            continue
        remaining = len(cells) - index + 1
        eta = f", grid ETA {np.mean(durations) * remaining / 60:.1f} min" if durations else ""
        print(f"[run {index}/{len(cells)}] {cell.label}{eta}", flush=True)
        start = time.time()
        records.append(run_cell(experiment, cell))
        durations.append(time.time() - start)
    return records


def main(argv: list[str] | None = None) -> int:
    files, bindings, rest = gin_utils.split_gin_args(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="t5x-like compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from finished runs")
    parser.add_argument("--check_only", action="store_true", help="verify the matching claims and exit")
    args = parser.parse_args(rest)
    if not files:
        parser.error("give --gin_file=gin_configs/experiments/<name>.gin")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        experiment = load_experiment(files, bindings)
        size_rows = sizes(experiment)
        failures = check_claims(experiment, size_rows)
    except (gin_utils.GinConfigError, ValueError) as e:
        print(f"t5x-like compare: {e}", file=sys.stderr)
        return 2
    if failures:
        print("t5x-like compare: matching claims do not hold:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 2
    if args.check_only:
        print(f"{experiment.name}: all matching claims hold within {experiment.claim_tolerance:.0%}")
        return 0
    from t5x_like import report
    records = report.load_records(experiment) if args.report_only else run_grid(experiment)
    outputs = report.write_report(experiment, size_rows, records)
    print("wrote " + ", ".join(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
