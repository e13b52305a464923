"""Comparison grids: an Experiment's arms × seeds, each a normal training run, scored alike.

    t5x-like compare --gin_file=gin_configs/experiments/quick.gin   # see cli/compare.py

The modules of a grid:
  spec.py     `Experiment` and `Arm` (explicit arms, or a declared grid that expands to arms)
  claims.py   matching claims (an arm's size and cost relative to the reference arm)
  cells.py    a cell (arm × seed) and its TrainConfig, made in Python from its arm's, parsed
              once by the caller (`ArmRun`); which finished cells are stale
  scoring.py  the shared metric and downstream tasks of a finished cell
  grid.py     running the cells (this module) and their records

Each grid cell is a normal training run — the arm's model gin file +
gin_configs/runs/pretrain.gin, with the experiment's run settings — in its own
MODEL_DIR under OUTPUT_DIR/runs/. After training, the cell is scored on the
shared metric and its record is written to MODEL_DIR/result.json; a cell with
a record is never re-run, and a cell cut off mid-run resumes from its
checkpoint. `report.py` turns the records into report.md, results.json,
results.csv, loss_curves.png and metrics/.

Nothing here reads gin: turning an arm's files and bindings into an `ArmRun`
is the caller's (`load_arm_runs` takes the loader; the command line's is in
cli/compare.py).

Adaptation (Wang et al. 2022): an arm with `init_from` (another arm's name)
starts each seed from that arm's final checkpoint of the same seed, under its
own layout and objective (`TrainConfig.init_checkpoint`; what carries over is
model/adaptation.py's); `train_steps` gives it its own length. Source arms run
before the arms that start from them. An arm with `baseline` (a from-scratch
arm on the same task) gets a row in the report's adaptation table: how many
steps of the baseline its final loss is worth.

Speed: the cells of one `run_grid` share a `GridCache`: compiled train, eval
and scoring programs (training/program_cache.py: the seeds of an arm, and arms of
the same model and shapes, compile once) and the shared metric's validation
batches; `cells_at_once` trains several cells at a time in threads. The
records are the same with or without either. `Experiment.stack_seeds` trains
an arm's seeds as one program (training/stacked.py): each seed's run dir,
checkpoints, metrics and record are its own as before, its numbers its lone
run's up to float rounding. Since every cell runs in one
process, the data settings (vocabulary, UL2 and MLM rates, TFDS dir) are the
experiment's, not an arm's: `load_arm_runs` refuses arms whose files set them
differently, before training.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from t5x_like.experiments import report, threaded
from t5x_like.experiments.cells import (
    RESULT_FILE,
    ArmRun,
    Cell,
    GridCache,
    cell_config,
    plan,
    read_record,
    run_fields,
    source_cell,
)
from t5x_like.experiments.scoring import evaluate_downstream, score_shared_metric
from t5x_like.experiments.spec import Arm, Experiment, RunSettings, arm_lengths, run_settings
from t5x_like.model import sizing
from t5x_like.training import machine
from t5x_like.training import run as train_lib
from t5x_like.training import stacked
from t5x_like.training.trainer import StopRequested

PRETRAIN_GIN = "gin_configs/runs/pretrain.gin"

# How the caller turns an arm (its model file and bindings, with the experiment's run
# settings for it) into an ArmRun; the command line's parses gin (cli/compare.py).
ArmLoader = Callable[[Experiment, Arm, RunSettings], ArmRun]


def load_arm_runs(experiment: Experiment, load_arm: ArmLoader) -> dict[str, ArmRun]:
    """Every arm's ArmRun, by name, each parsed once. ValueError if two arms' files set the data
    settings (vocabulary, UL2 and MLM rates, TFDS dir) differently: they are process-wide, and
    every cell of a grid runs in this process, so one arm's would reach the others' data and
    the shared metric's batches."""
    arm_runs = {arm.name: load_arm(experiment, arm, run_settings(experiment, arm)) for arm in experiment.arms}
    first = experiment.arms[0]
    for arm in experiment.arms[1:]:
        mine, theirs = arm_runs[arm.name].data, arm_runs[first.name].data
        if mine != theirs:
            differ = sorted(f.name for f in dataclasses.fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name))
            raise ValueError(f"experiment {experiment.name}: arms {first.name} and {arm.name} set the data "
                             f"settings {differ} differently; they are shared by every cell of a grid (one "
                             "process): bind them in run_bindings (every arm), or run another experiment")
    return arm_runs


def last_logged(model_dir: str, split: str) -> dict[str, float]:
    """The last row a run logged for `split` in its metrics.jsonl, without step and split."""
    rows = [row for row in report.read_metrics(model_dir) if row.get("split") == split]
    return {k: v for k, v in rows[-1].items() if k not in ("step", "split")} if rows else {}


def run_cell(experiment: Experiment, cell: Cell, arm_run: ArmRun, cache: GridCache | None = None,
             stop: StopRequested | None = None) -> dict:
    """Trains (or resumes) one cell, scores it, writes and returns its record. `stop`: see
    run.train (cells trained in threads share the grid's)."""
    config = cell_config(experiment, cell, arm_run)
    start = time.time()
    result = train_lib.train(config, cache.programs if cache else None, stop)
    return finish_cell(experiment, cell, arm_run, config, result, time.time() - start, cache, stop)


def run_stacked_cells(experiment: Experiment, seed_cells: list[Cell], arm_run: ArmRun,
                      cache: GridCache | None = None, stop: StopRequested | None = None) -> list[dict]:
    """Trains (or resumes) the cells of one arm, its seeds stacked in one program
    (training/stacked.py: each seed still its own run dir, checkpoints and metrics), then scores
    each and writes its record as run_cell does; returns the records in the cells' order."""
    configs = [cell_config(experiment, cell, arm_run) for cell in seed_cells]
    start = time.time()
    results = stacked.train_stacked(configs, cache.programs if cache else None, stop)
    seconds = (time.time() - start) / len(seed_cells)
    return [finish_cell(experiment, cell, arm_run, config, result, seconds, cache, stop, stacked_seeds=len(seed_cells))
            for cell, config, result in zip(seed_cells, configs, results)]


def finish_cell(experiment: Experiment, cell: Cell, arm_run: ArmRun, config: train_lib.TrainConfig,
                result: train_lib.TrainResult, train_seconds: float, cache: GridCache | None,
                stop: StopRequested | None, stacked_seeds: int = 1) -> dict:
    """A trained cell's record (scored on the shared metric and downstream), written to its run dir."""
    if result.stopped_by_signal:
        raise threaded.GridStopped(f"{cell.label} stopped by a signal; rerun the same command to resume",
                          result.signal_number)
    start = time.time()
    eval_task = cell.arm.eval_task or experiment.eval_task
    inputs_length, targets_length = arm_lengths(experiment, cell.arm)
    shared = (score_shared_metric(config, eval_task, inputs_length, targets_length, experiment.eval_examples,
                                  cache) if eval_task else None)
    record = {
        "arm": cell.arm.name, "seed": cell.seed, "group": cell.arm.group or cell.arm.name,
        "eval_task": eval_task,
        "layout": config.model.config.layout, "task": config.mixture_or_task_name,
        **{k: v for k, v in sizing.summary(config.model.config, inputs_length, targets_length).items()
           if k != "layout"},
        "steps": result.step, "batch_size": config.batch_size,
        "examples_seen": result.step * config.batch_size,
        # A cell killed after its final checkpoint resumes with nothing left to train: its final
        # metrics are the last ones it logged.
        "final_train_metrics": result.train_metrics or last_logged(config.model_dir, "train"),
        "final_eval_metrics": result.eval_metrics or last_logged(config.model_dir, "eval"),
        "shared_nll_per_example": shared,
        "downstream": {task: evaluate_downstream(experiment, cell, config, task, cache, stop)
                       for task in experiment.downstream_tasks},
        # stacked: the stacked program's time over its seeds
        "train_seconds_this_invocation": train_seconds + time.time() - start,
        "seeds_stacked": stacked_seeds,
        "machine": machine.this_machine(),
        "config": run_fields(config),
        "command": arm_run.command(config),
    }
    with open(os.path.join(cell.run_dir, RESULT_FILE + ".tmp"), "w") as f:
        json.dump(record, f)
    os.replace(os.path.join(cell.run_dir, RESULT_FILE + ".tmp"), os.path.join(cell.run_dir, RESULT_FILE))
    return record


def load_records(experiment: Experiment) -> list[dict]:
    """The records of the cells that have finished (MODEL_DIR/result.json), in plan order."""
    return [record for record in map(read_record, plan(experiment)) if record is not None]


def training_units(experiment: Experiment, todo: list[Cell]) -> list[list[Cell]]:
    """The cells to train, as what trains together: with `experiment.stack_seeds`, each arm's
    cells (its seeds in one stacked program); else each cell alone. In plan order of first cells,
    so an arm's unit comes after the unit of the arm it starts from."""
    if not experiment.stack_seeds:
        return [[cell] for cell in todo]
    by_arm: dict[str, list[Cell]] = {}
    for cell in todo:
        by_arm.setdefault(cell.arm.name, []).append(cell)
    return list(by_arm.values())


def unit_label(unit: list[Cell]) -> str:
    if len(unit) == 1:
        return unit[0].label
    return f"{unit[0].arm.name} seeds {','.join(str(cell.seed) for cell in unit)}"


def train_unit(experiment: Experiment, unit: list[Cell], arm_run: ArmRun, cache: GridCache,
               stop: StopRequested | None = None) -> dict[str, dict]:
    """Trains one unit (a cell, or an arm's seeds stacked); {cell label: record}."""
    if len(unit) == 1:
        return {unit[0].label: run_cell(experiment, unit[0], arm_run, cache, stop)}
    return {cell.label: record
            for cell, record in zip(unit, run_stacked_cells(experiment, unit, arm_run, cache, stop))}


def _unit_before(experiment: Experiment, unit: list[Cell], unit_of: dict[str, str]) -> str | None:
    """The label of the unit still to train that holds a cell this unit's cells start from."""
    sources = [source_cell(experiment, cell) for cell in unit]
    return next((unit_of[source.label] for source in sources if source is not None and source.label in unit_of),
                None)


def run_grid(experiment: Experiment, arm_runs: dict[str, ArmRun], cells_at_once: int = 1) -> list[dict]:
    """Runs every cell without a record (resuming any cut off); returns all records in plan order.

    cells_at_once > 1 trains that many cells at a time, each in a thread of this process (they
    share the GridCache; a cell starts after the cell it starts from has finished). Compiling,
    building input pipelines, scoring and saving keep one core busy; a second cell uses the
    other (quick.gin on 2 cores: 1.34x, docs/performance.md). threaded.run_jobs runs them: each
    cell's output lines start with its label, and a SIGTERM/SIGINT saves every running cell. The
    records are the same as one at a time: XLA:CPU splits a program's work over its thread pool the
    same way however busy the pool is (a test compares them).

    With `experiment.stack_seeds`, what trains at a time is an arm's unfinished seeds, stacked in
    one program (`training_units`, training/stacked.py); each seed keeps its own run dir and record.
    """
    if cells_at_once > 1 and jax.process_count() > 1:
        raise ValueError(f"cells_at_once={cells_at_once} trains cells in threads of one process; with "
                         f"{jax.process_count()} processes use --cells_at_once=1")
    cells = plan(experiment)
    done = {cell.label: read_record(cell) for cell in cells}
    todo = [cell for cell in cells if done[cell.label] is None]
    for index, cell in enumerate(cells, 1):
        if done[cell.label] is not None:
            print(f"[run {index}/{len(cells)}] {cell.label}: done earlier, kept", flush=True)
    cache = GridCache()
    units = training_units(experiment, todo)
    heading = {unit_label(unit): f"[run {'+'.join(str(cells.index(c) + 1) for c in unit)}/{len(cells)}] "
                                 f"{unit_label(unit)}" for unit in units}
    if cells_at_once <= 1 or len(units) <= 1:
        durations: list[float] = []
        for unit in units:
            left = len(todo) - sum(map(len, units[:units.index(unit)]))
            eta = f", grid ETA {np.mean(durations) * left / 60:.1f} min" if durations else ""
            print(f"{heading[unit_label(unit)]}{eta}", flush=True)
            start = time.time()
            done.update(train_unit(experiment, unit, arm_runs[unit[0].arm.name], cache))
            durations += [(time.time() - start) / len(unit)] * len(unit)
    else:
        unit_of = {cell.label: unit_label(unit) for unit in units for cell in unit}
        jobs = [threaded.Job(unit_label(unit), heading[unit_label(unit)],
                             functools.partial(train_unit, experiment, unit, arm_runs[unit[0].arm.name], cache),
                             after=_unit_before(experiment, unit, unit_of))
                for unit in units]
        for records in threaded.run_jobs(jobs, cells_at_once).values():
            done.update(records)
    return [done[cell.label] for cell in cells]
