"""Grid cells: an arm × a seed, each a TrainConfig made in Python from its arm's, and whether a
finished cell is still the run the experiment gives it.

    arm_runs = {arm.name: load_arm(experiment, arm) for arm in experiment.arms}   # gin: the caller's
    for cell in plan(experiment):
        config = cell_config(experiment, cell, arm_runs[cell.arm.name])

An arm's files and bindings are parsed once, by the caller (the command line:
cli/compare.py), into an `ArmRun`: a TrainConfig with every field its cells
share, and the data settings its files apply. A cell's config is that one
with `dataclasses.replace`: its MODEL_DIR, seed, feature lengths (matched to
the arm's layout) and, for an adapted arm, the source cell's run as
`init_checkpoint`. No gin string is built or parsed here, so paths never pass
through gin quoting.

A finished cell's record stores its config's fields as JSON (`run_fields`);
`stale_cells` compares them with what the experiment gives the cell now and
names the fields that changed (records written before fields were stored are
compared by their command).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable

from t5x_like.data import tasks
from t5x_like.data.settings import DataSettings
from t5x_like.experiments.spec import Arm, Experiment, arm_lengths, in_dependency_order
from t5x_like.model.config import TransformerConfig
from t5x_like.model.features import matched_feature_lengths
from t5x_like.training import partitioning, program_cache
from t5x_like.training.run import TrainConfig

RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class Cell:
    arm: Arm
    seed: int
    run_dir: str

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class ArmRun:
    """One arm's runs, parsed once: every TrainConfig field its cells share (model_dir, seed,
    task_feature_lengths and init_checkpoint are set per cell), the data settings its files
    apply, and how to write a cell's config as the equivalent `t5x-like train` command (for
    the report and the record; it is never parsed back)."""

    config: TrainConfig
    data: DataSettings
    command: Callable[[TrainConfig], str]


@dataclasses.dataclass
class GridCache:
    """What the cells of one grid invocation share: compiled programs, and the shared metric's
    validation batches (the same for every arm with that eval task, lengths and layout)."""

    programs: program_cache.ProgramCache = dataclasses.field(default_factory=program_cache.ProgramCache)
    score_batches: dict = dataclasses.field(default_factory=dict)


def plan(experiment: Experiment) -> list[Cell]:
    """Every cell, seed by seed; within a seed, an arm after the arm it starts from."""
    return [cell_of(experiment, arm, seed)
            for seed in experiment.seeds for arm in in_dependency_order(experiment.arms)]


def cell_of(experiment: Experiment, arm: Arm, seed: int) -> Cell:
    return Cell(arm, seed, run_dir_of(experiment.output_dir, arm.name, seed))


def run_dir_of(output_dir: str, arm_name: str, seed: int) -> str:
    """The MODEL_DIR of an arm's run with one seed: OUTPUT_DIR/runs/<arm>_seed<seed>."""
    return os.path.join(output_dir, "runs", f"{arm_name}_seed{seed}")


def source_cell(experiment: Experiment, cell: Cell) -> Cell | None:
    """The cell whose final checkpoint `cell` starts from (its arm's init_from, same seed), if any."""
    if not cell.arm.init_from:
        return None
    return cell_of(experiment, next(a for a in experiment.arms if a.name == cell.arm.init_from), cell.seed)


def cell_config(experiment: Experiment, cell: Cell, arm_run: ArmRun) -> TrainConfig:
    """The TrainConfig of one cell: its arm's, with the cell's run directory, seed, feature lengths
    and (for an adapted arm) starting checkpoint."""
    shared = arm_run.config
    task = shared.mixture_or_task_name
    lengths = matched_feature_lengths(shared.model.config.layout, *arm_lengths(experiment, cell.arm),
                                      task_has_inputs=tasks.task_has_inputs(task))
    source = source_cell(experiment, cell)
    init_checkpoint = source.run_dir if source is not None else shared.init_checkpoint
    note = (f"\n# Cell '{cell.label}' of experiment '{experiment.name}': the grid set model_dir = {cell.run_dir!r}, "
            f"seed = {cell.seed}, task_feature_lengths = {lengths!r}, init_checkpoint = {init_checkpoint!r} "
            "on the TrainConfig (the macros above hold placeholders for them).\n")
    return dataclasses.replace(shared, model_dir=cell.run_dir, seed=cell.seed, task_feature_lengths=lengths,
                               init_checkpoint=init_checkpoint, config_text=shared.config_text + note)


def run_fields(config: TrainConfig) -> dict:
    """A run's TrainConfig as JSON values (what a record stores to tell later whether the
    experiment still gives the cell the same run): the model as its config's fields, the
    optimizer as its recipe, run directories made absolute."""
    fields = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "config_text":
            continue
        if field.name == "model":
            value = value.config.to_dict()
        elif field.name == "optimizer" and value is not None:
            value = repr(value.recipe) if value.recipe is not None else "a hand-made optimizer (no recipe)"
        elif field.name in ("model_dir", "init_checkpoint") and value:
            value = os.path.abspath(value)
        elif field.name == "dataset_fn" and value is not None:
            value = getattr(value, "__qualname__", type(value).__name__)
        fields[field.name] = json.loads(json.dumps(value, default=repr))
    return fields


def read_record(cell: Cell) -> dict | None:
    path = os.path.join(cell.run_dir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def stale_cells(experiment: Experiment, arm_runs: dict[str, ArmRun]) -> list[str]:
    """Finished cells whose recorded run is not what the experiment now gives them (a changed
    train_steps, learning rate, model...), each with what changed."""
    stale = []
    for cell in plan(experiment):
        record = read_record(cell)
        if record is None:
            continue
        arm_run = arm_runs[cell.arm.name]
        config = cell_config(experiment, cell, arm_run)
        changed = (_changed_fields(record["config"], run_fields(config)) if "config" in record
                   else _changed_words(record.get("command", ""), arm_run.command(config)))
        if changed is not None:
            stale.append(f"{cell.label} ({', '.join(changed[:3]) or 'order of flags'})")
    return stale


def _changed_fields(recorded: dict, now: dict) -> list[str] | None:
    """The fields that differ, as 'name: old -> new'; None if none does. Where a run lives is not
    what it is: run directories are compared relative to the run's own (a moved OUTPUT_DIR
    keeps its finished runs)."""
    recorded, now = _located_relative(_with_todays_defaults(recorded, set(now))), _located_relative(now)
    names = sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))
    if not names:
        return None
    return [f"{name}: {_short(recorded.get(name))} -> {_short(now.get(name))}" for name in names]


def _with_todays_defaults(fields: dict, names: set[str]) -> dict:
    """A record's fields with what it lacks at today's defaults: a model field or TrainConfig field
    added after the run (num_kv_heads, profile_steps, ...) is the default the run had in effect,
    not a change (TransformerConfig.from_dict's rule)."""
    fields = dict(fields)
    for field in dataclasses.fields(TrainConfig):
        if field.name in names and field.name not in fields and field.default is not dataclasses.MISSING:
            fields[field.name] = json.loads(json.dumps(field.default, default=repr))
    rules = fields.get("logical_axis_rules")
    if isinstance(rules, list) and all(isinstance(r, list) and len(r) == 2 for r in rules):
        # a logical axis name added since (kv_heads) maps as today's rules map it
        recorded_rules = dict(rules)
        today = json.loads(json.dumps(partitioning.DEFAULT_RULES))
        merged = [[name, recorded_rules.pop(name, axes)] for name, axes in today]
        fields["logical_axis_rules"] = merged + [[name, axes] for name, axes in recorded_rules.items()]
    if isinstance(fields.get("model"), dict):
        try:
            fields["model"] = json.loads(json.dumps(TransformerConfig.from_dict(fields["model"]).to_dict()))
        except (TypeError, ValueError):  # a model this version cannot read: compared as recorded
            pass
    return fields


def _located_relative(fields: dict) -> dict:
    fields = dict(fields)
    run_dir = fields.pop("model_dir", None) or ""
    if fields.get("init_checkpoint"):
        fields["init_checkpoint"] = os.path.relpath(fields["init_checkpoint"], run_dir)
    return fields


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The run-directory flags of a command recorded before records stored their fields.
_RUN_DIR_FLAG = re.compile(r"^(--gin\.(?:MODEL_DIR|TrainConfig\.init_checkpoint)=)'(.*)'$")


def _changed_words(recorded: str, now: str) -> list[str] | None:
    """The words of `now` not in `recorded` (a record from before fields were stored), with
    run directories made absolute: an OUTPUT_DIR given once relative and once absolute names
    the same runs. None when the commands agree."""
    recorded_words, now_words = _comparable(recorded), _comparable(now)
    if recorded_words == now_words:
        return None
    return sorted(set(now_words) - set(recorded_words))


def _comparable(command: str) -> list[str]:
    return [m.group(1) + repr(os.path.abspath(m.group(2))) if (m := _RUN_DIR_FLAG.match(word)) else word
            for word in command.split()]
