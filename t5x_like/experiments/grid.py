"""Comparison grids: an Experiment's arms × seeds, each a normal training run, scored alike.

    t5x-like compare --gin_file=gin_configs/experiments/quick.gin --gin.OUTPUT_DIR=out/quick

An `Experiment` (bound by a file under gin_configs/experiments/, or built in
Python) lists its arms explicitly, or declares a grid that expands to arms
(`expand_grid`: e.g. layouts × position encodings, with per-arm overrides).
Each grid cell (arm × seed) is a normal training run — the arm's model gin file
+ gin_configs/runs/pretrain.gin — with its own MODEL_DIR under OUTPUT_DIR/runs/.
After training, the cell is scored on the shared metric and its record is
written to MODEL_DIR/result.json; a cell with a record is never re-run, and a
cell cut off mid-run resumes from its checkpoint. `report.py` turns the records
into report.md, results.json, results.csv, loss_curves.png and metrics/.

Nothing here reads gin: turning an arm's model file into a TransformerConfig,
and a cell's `t5x-like train` arguments into a TrainConfig, is the caller's
(`Loaders`; the command line's are in cli/compare.py).

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
FLOPs per example (model/sizing.py). `check_claims` verifies them (tests run
it on every shipped experiment) and the report prints the measured ratios.

Adaptation (Wang et al. 2022): an arm with `init_from` (another arm's name)
starts each seed from that arm's final checkpoint of the same seed, under its
own layout and objective (`TrainConfig.init_checkpoint`; what carries over is
model/adaptation.py's); `train_steps` gives it its own length. Source arms run
before the arms that start from them. An arm with `baseline` (a from-scratch
arm on the same task) gets a row in the report's adaptation table: how many
steps of the baseline its final loss is worth.

Speed: the cells of one `run_grid` share a `GridCache`: compiled train, eval
and scoring programs (training/programs.py: the seeds of an arm, and arms of
the same model and shapes, compile once) and the shared metric's validation
batches; `cells_at_once` trains several cells at a time in threads. The
records are the same with or without either. Since every cell runs in one
process, the data settings (data.tasks.configure: vocabulary, UL2 and MLM
rates) are the experiment's, not an arm's: `run_grid` refuses arms whose runs
would set them differently, before training.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable

import jax
import numpy as np

from t5x_like.data import pipeline, tasks
from t5x_like.data.objectives import matched_feature_lengths
from t5x_like.experiments import report, threaded
from t5x_like.inference import evaluation
from t5x_like.model import sizing
from t5x_like.model.config import TransformerConfig
from t5x_like.training import checkpoints, programs
from t5x_like.training import run as train_lib
from t5x_like.training.trainer import StopRequested

log = logging.getLogger(__name__)
PRETRAIN_GIN = "gin_configs/runs/pretrain.gin"
RESULT_FILE = "result.json"
_LOADERS_LOCK = threading.Lock()


@dataclasses.dataclass
class Experiment:
    """One comparison: arms × seeds on one task, with matched sizes and lengths.

    `arms` (dicts or Arm) and the arms `grid` expands to are joined, explicit
    ones first; after construction `arms` is a list of Arm with unique names.
    """

    name: str
    output_dir: str
    arms: list = dataclasses.field(default_factory=list)  # dicts: name, model, [bindings, task, claims, ...]
    grid: dict | None = None           # expands to more arms: see expand_grid
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
    # More shared-metric differences for the report, beside each arm's against its reference:
    # (arm, other) pairs of arms with the same eval task, e.g. one objective on two layouts.
    comparisons: tuple = ()
    description: str = ""
    # Another pretraining corpus for every arm: each <corpus>_<objective> task (and eval
    # task) becomes <this>_<objective>, e.g. 'bible' or a register_text_files_task name.
    corpus: str | None = None

    def __post_init__(self):
        specs = list(self.arms) + (expand_grid(self.grid) if self.grid else [])
        self.arms = [spec if isinstance(spec, Arm) else Arm.from_dict(spec) for spec in specs]
        self.grid = None  # expanded: `arms` is now the whole list
        if self.corpus:
            self._move_to_corpus(self.corpus)
        names = [arm.name for arm in self.arms]
        if not names:
            raise ValueError(f"experiment {self.name}: no arms (give `arms` or a `grid`)")
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name}: arm names must be unique, got {names}")
        for arm in self.arms:
            for field, other in (("init_from", arm.init_from), ("baseline", arm.baseline)):
                if other is not None and (other not in names or other == arm.name):
                    raise ValueError(f"experiment {self.name}: arm {arm.name}'s {field} {other!r} is not "
                                     f"another arm; arms: {names}")
        _in_dependency_order(self.arms)  # raises on a cycle of init_from
        self._check_comparisons()

    def _check_comparisons(self) -> None:
        eval_tasks = {arm.name: arm.eval_task or self.eval_task for arm in self.arms}
        for pair in self.comparisons:
            if len(pair) != 2 or pair[0] == pair[1] or any(name not in eval_tasks for name in pair):
                raise ValueError(f"experiment {self.name}: comparison {pair!r} is not a pair of arms; "
                                 f"arms: {list(eval_tasks)}")
            if eval_tasks[pair[0]] != eval_tasks[pair[1]]:
                raise ValueError(f"experiment {self.name}: comparison {pair!r} joins arms scored on different "
                                 f"eval tasks ({eval_tasks[pair[0]]}, {eval_tasks[pair[1]]})")

    def _move_to_corpus(self, corpus: str) -> None:
        move = lambda name: name and tasks.on_corpus(name, corpus)
        self.task, self.eval_task = move(self.task), move(self.eval_task)
        self.arms = [dataclasses.replace(arm, task=move(arm.task), eval_task=move(arm.eval_task))
                     for arm in self.arms]


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
    train_steps: int | None = None     # default: the experiment's
    init_from: str | None = None       # another arm: start from its final checkpoint (same seed)
    baseline: str | None = None        # a from-scratch arm on the same task (report: steps it is worth)

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


# --- arms from a declared grid -----------------------------------------------------
def expand_grid(grid: dict) -> list[dict]:
    """Arm specs for every combination of a grid's axes, in the order the axes are given.

    A grid is an arm spec whose strings may name axes in braces, plus:
      axes       {axis: values}; values are a list, or a dict value -> partial arm
                 spec merged in for that value (bindings are appended, claims merged)
      overrides  {arm name: partial spec} merged into that expanded arm last
    Example (two arms: causal_rope, causal_none):
      {'name': 'causal_{position}', 'model': 'gin_configs/models/decoder_only/tiny.gin',
       'bindings': ["TransformerConfig.position = '{position}'"],
       'axes': {'position': ['rope', 'none']}}
    """
    grid = dict(grid)
    axes = grid.pop("axes", None)
    overrides = dict(grid.pop("overrides", {}))
    if not isinstance(axes, dict) or not axes:
        raise ValueError(f"grid {grid!r}: needs 'axes': {{axis name: [values] or {{value: partial arm}}}}")
    choices = [[(name, value, parts.get(value, {}) if isinstance(parts, dict) else {}) for value in parts]
               for name, parts in axes.items()]
    specs = []
    for combination in itertools.product(*choices):
        values = {name: value for name, value, _ in combination}
        spec = dict(grid)
        for _, _, partial in combination:
            spec = _merge_spec(spec, partial)
        spec = _format_spec(spec, values)
        spec = _merge_spec(spec, overrides.pop(spec.get("name"), {}))
        specs.append(spec)
    if overrides:
        raise ValueError(f"grid overrides name arms the grid does not make: {sorted(overrides)}; "
                         f"it makes {[s.get('name') for s in specs]}")
    return specs


def _merge_spec(spec: dict, partial: dict) -> dict:
    merged = dict(spec)
    for key, value in partial.items():
        if key == "bindings":
            merged[key] = [*merged.get(key, ()), *value]
        elif key == "claims":
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def _format_spec(value, axis_values: dict):
    """Fills {axis} in every string of a spec (recursively); names no axis knows are an error."""
    if isinstance(value, str):
        try:
            return value.format(**axis_values)
        except KeyError as e:
            raise ValueError(f"grid string {value!r} names {e}, which is not an axis "
                             f"({sorted(axis_values)})") from None
    if isinstance(value, dict):
        return {k: _format_spec(v, axis_values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_format_spec(v, axis_values) for v in value)
    return value


# --- turning arms and cells into configs (the caller's) ---------------------------------
@dataclasses.dataclass(frozen=True)
class Loaders:
    """How an arm's model file becomes a TransformerConfig, and a cell's `t5x-like train`
    arguments a TrainConfig. The command line reads gin (cli/compare.py); tests may pass anything."""

    model_config: Callable[[Experiment, Arm], TransformerConfig]  # the arm's model as its runs train it
    train_config: Callable[[list[str]], train_lib.TrainConfig]


def arm_lengths(experiment: Experiment, arm: Arm) -> tuple[int, int]:
    return (arm.inputs_length or experiment.inputs_length, arm.targets_length or experiment.targets_length)


# --- matching claims ----------------------------------------------------------------
def parse_multiple(claim: str, unit: str) -> float:
    """'2P' -> 2.0, 'P/2' -> 0.5, 'M' -> 1.0, '1.5M' -> 1.5."""
    match = re.fullmatch(rf"\s*([0-9.]*)\s*{unit}\s*(?:/\s*([0-9.]+))?\s*", claim)
    if not match:
        raise ValueError(f"claim {claim!r}: expected e.g. '{unit}', '2{unit}' or '{unit}/2'")
    return float(match.group(1) or 1.0) / float(match.group(2) or 1.0)


def sizes(experiment: Experiment, loaders: Loaders) -> dict[str, dict]:
    """Per arm: config summary plus ratios to the reference arm's P and M."""
    rows = {}
    for arm in experiment.arms:
        config = loaders.model_config(experiment, arm)
        inputs_length, targets_length = arm_lengths(experiment, arm)
        rows[arm.name] = {**sizing.summary(config, inputs_length, targets_length),
                          "non_embedding_params": sizing.count_params(config).non_embedding,
                          "inputs_length": inputs_length, "targets_length": targets_length}
    reference = rows[experiment.reference_arm or experiment.arms[0].name]
    for row in rows.values():
        row["params_ratio"] = row["non_embedding_params"] / reference["non_embedding_params"]
        row["flops_ratio"] = row["train_flops_per_example"] / reference["train_flops_per_example"]
    return rows


def check_claims(experiment: Experiment, size_rows: dict) -> list[str]:
    """Claims that the configs (`sizes`) do not satisfy within the tolerance (empty = all hold)."""
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
@dataclasses.dataclass
class GridCache:
    """What the cells of one grid invocation share: compiled programs, and the shared metric's
    validation batches (the same for every arm with that eval task, lengths and layout)."""

    programs: programs.ProgramCache = dataclasses.field(default_factory=programs.ProgramCache)
    score_batches: dict = dataclasses.field(default_factory=dict)


def plan(experiment: Experiment) -> list[Cell]:
    """Every cell, seed by seed; within a seed, an arm after the arm it starts from."""
    return [cell_of(experiment, arm, seed)
            for seed in experiment.seeds for arm in _in_dependency_order(experiment.arms)]


def cell_of(experiment: Experiment, arm: Arm, seed: int) -> Cell:
    return Cell(arm, seed, os.path.join(experiment.output_dir, "runs", f"{arm.name}_seed{seed}"))


def source_cell(experiment: Experiment, cell: Cell) -> Cell | None:
    """The cell whose final checkpoint `cell` starts from (its arm's init_from, same seed), if any."""
    if not cell.arm.init_from:
        return None
    return cell_of(experiment, next(a for a in experiment.arms if a.name == cell.arm.init_from), cell.seed)


def _in_dependency_order(arms: list[Arm]) -> list[Arm]:
    """The arms, each after its init_from arm (otherwise in the given order)."""
    by_name = {arm.name: arm for arm in arms}
    ordered: list[Arm] = []

    def visit(arm: Arm, chain: tuple[str, ...]) -> None:
        if arm in ordered:
            return
        if arm.name in chain:
            raise ValueError(f"arms start from each other in a cycle: {' -> '.join(chain + (arm.name,))}")
        if arm.init_from:
            visit(by_name[arm.init_from], chain + (arm.name,))
        ordered.append(arm)

    for arm in arms:
        visit(arm, ())
    return ordered


def train_argv(experiment: Experiment, cell: Cell, layout: str) -> list[str]:
    """The `t5x-like train` command line of one cell (also printed in the report)."""
    task = cell.arm.task or experiment.task
    lengths = matched_feature_lengths(layout, *arm_lengths(experiment, cell.arm),
                                      task_has_inputs=tasks.task_has_inputs(task))
    steps = cell.arm.train_steps or experiment.train_steps
    bindings = [*experiment.run_bindings, *cell.arm.bindings,
                f"MODEL_DIR='{cell.run_dir}'", f"MIXTURE_OR_TASK_NAME='{task}'",
                f"TASK_FEATURE_LENGTHS={lengths!r}", f"TRAIN_STEPS={steps}",
                f"SEED={cell.seed}", f"BATCH_SIZE={experiment.batch_size}",
                f"EVAL_PERIOD={experiment.eval_period}",
                f"CHECKPOINT_PERIOD={experiment.eval_period}"]
    source = source_cell(experiment, cell)
    if source is not None:
        bindings.append(f"TrainConfig.init_checkpoint='{source.run_dir}'")
    return [f"--gin_file={cell.arm.model}", f"--gin_file={PRETRAIN_GIN}"] + [f"--gin.{b}" for b in bindings]


def cell_command(experiment: Experiment, cell: Cell, loaders: Loaders) -> str:
    """The `t5x-like train` command of a cell, as its record stores it."""
    return as_command(train_argv(experiment, cell, loaders.model_config(experiment, cell.arm).layout))


def as_command(train_args: list[str]) -> str:
    return "t5x-like train " + " ".join(train_args)


def stale_cells(experiment: Experiment, loaders: Loaders) -> list[str]:
    """Finished cells whose recorded command is not what the experiment now gives them
    (a changed TRAIN_STEPS, learning rate, model...), each with what changed."""
    stale = []
    for cell in plan(experiment):
        path = os.path.join(cell.run_dir, RESULT_FILE)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            recorded = json.load(f).get("command", "")
        recorded, now = _comparable(recorded), _comparable(cell_command(experiment, cell, loaders))
        if recorded != now:
            changed = sorted(set(now) - set(recorded))
            stale.append(f"{cell.label} ({', '.join(changed[:3]) or 'order of flags'})")
    return stale


_RUN_DIR_FLAG = re.compile(r"^(--gin\.(?:MODEL_DIR|TrainConfig\.init_checkpoint)=)'(.*)'$")


def _comparable(command: str) -> list[str]:
    """A cell command's words, its run directories made absolute: an OUTPUT_DIR given once
    relative and once absolute names the same runs."""
    return [m.group(1) + repr(os.path.abspath(m.group(2))) if (m := _RUN_DIR_FLAG.match(word)) else word
            for word in command.split()]


def last_logged(model_dir: str, split: str) -> dict[str, float]:
    """The last row a run logged for `split` in its metrics.jsonl, without step and split."""
    rows = [row for row in report.read_metrics(model_dir) if row.get("split") == split]
    return {k: v for k, v in rows[-1].items() if k not in ("step", "split")} if rows else {}


def run_cell(experiment: Experiment, cell: Cell, loaders: Loaders, cache: GridCache | None = None,
             stop: StopRequested | None = None) -> dict:
    """Trains (or resumes) one cell, scores it, writes and returns its record. `stop`: see
    run.train (cells trained in threads share the grid's)."""
    with _LOADERS_LOCK:  # the command line's loaders parse gin, which is global
        argv = train_argv(experiment, cell, loaders.model_config(experiment, cell.arm).layout)
        config = loaders.train_config(argv)
    start = time.time()
    result = train_lib.train(config, cache.programs if cache else None, stop)
    if result.stopped_by_signal:
        raise threaded.GridStopped(f"{cell.label} stopped by a signal; rerun the same command to resume",
                          result.signal_number)
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
        "train_seconds_this_invocation": time.time() - start,
        "command": as_command(argv),
    }
    with open(os.path.join(cell.run_dir, RESULT_FILE + ".tmp"), "w") as f:
        json.dump(record, f)
    os.replace(os.path.join(cell.run_dir, RESULT_FILE + ".tmp"), os.path.join(cell.run_dir, RESULT_FILE))
    return record


def score_shared_metric(config, eval_task: str, inputs_length: int, targets_length: int,
                        num_examples: int, cache: GridCache | None = None) -> list[float]:
    """Per-example mean NLL of the eval task's target tokens, for the first eval_examples."""
    model = config.model
    lengths = matched_feature_lengths(model.config.layout, inputs_length, targets_length,
                                      task_has_inputs=tasks.task_has_inputs(eval_task))
    params = checkpoints.load_params(config.model_dir, model.abstract_params()).params
    score = cache.programs.score_fn(model) if cache else jax.jit(model.score)
    per_example: list[float] = []
    for batch in score_batches(eval_task, lengths, model.config.layout, num_examples, cache):
        log_likelihood = np.asarray(score(params, batch))
        _, weights = model.targets_and_weights(batch)
        tokens = np.maximum(np.asarray(weights).sum(-1), 1.0)
        per_example.extend((-log_likelihood / tokens).tolist())
    if len(per_example) < num_examples:
        log.warning("%s has only %d validation examples (asked %d)", eval_task, len(per_example), num_examples)
    return per_example[:num_examples]


SCORE_BATCH_SIZE = 16


def score_batches(eval_task: str, lengths: dict[str, int], layout: str, num_examples: int,
                  cache: GridCache | None = None) -> list[dict]:
    """The first validation batches of `eval_task` that hold `num_examples` examples (all of
    them if it has fewer), unshuffled: the same for every model of this layout and lengths."""
    key = (eval_task, tuple(sorted(lengths.items())), layout, num_examples)
    if cache is not None and key in cache.score_batches:
        return cache.score_batches[key]
    dataset = pipeline.get_dataset(eval_task, lengths, split="validation", layout=layout,
                                   batch_size=SCORE_BATCH_SIZE, shuffle=False, seed=0, pack=False, num_epochs=1)
    # Read to its end (take): deleting an iterator cut off mid-stream waits for its prefetching (sources.release).
    batches = list(dataset.take(math.ceil(num_examples / SCORE_BATCH_SIZE)).as_numpy_iterator())
    if cache is not None:
        cache.score_batches[key] = batches
    return batches


def evaluate_downstream(experiment: Experiment, cell: Cell, config, task: str,
                        cache: GridCache | None = None, stop: StopRequested | None = None) -> dict[str, float]:
    """The task's metrics for one run: finetuned (params from the run) or zero-shot."""
    model = config.model
    lengths = matched_feature_lengths(model.config.layout, *arm_lengths(experiment, cell.arm),
                                      task_has_inputs=tasks.task_has_inputs(task))
    source = config.model_dir
    if experiment.downstream_steps:
        finetune = dataclasses.replace(
            config, model_dir=os.path.join(cell.run_dir, "downstream", task), mixture_or_task_name=task,
            task_feature_lengths=lengths, train_steps=experiment.downstream_steps,
            init_checkpoint=config.model_dir, eval_split=None, checkpoint_period=experiment.downstream_steps)
        train_lib.train(finetune, cache.programs if cache else None, stop)
        source = finetune.model_dir
    params = checkpoints.load_params(source, model.abstract_params()).params
    result = evaluation.evaluate(model, params, task, "validation", lengths, batch_size=16,
                                 max_examples=experiment.eval_examples)
    return result.metrics.get(task, {})


def load_records(experiment: Experiment) -> list[dict]:
    """The records of the cells that have finished (MODEL_DIR/result.json), in plan order."""
    return [record for record in map(_read_record, plan(experiment)) if record is not None]


def run_grid(experiment: Experiment, loaders: Loaders, cells_at_once: int = 1) -> list[dict]:
    """Runs every cell without a record (resuming any cut off); returns all records in plan order.

    cells_at_once > 1 trains that many cells at a time, each in a thread of this process (they
    share the GridCache; a cell starts after the cell it starts from has finished). Compiling,
    building input pipelines, scoring and saving keep one core busy; a second cell uses the
    other (quick.gin on 2 cores: 1.34x, docs/performance.md). threaded.run_jobs runs them: each
    cell's output lines start with its label, and a SIGTERM/SIGINT saves every running cell. The records are the same as one at a time: XLA:CPU splits a program's work
    over its thread pool the same way however busy the pool is (a test compares them).
    """
    if cells_at_once > 1 and jax.process_count() > 1:
        raise ValueError(f"cells_at_once={cells_at_once} trains cells in threads of one process; with "
                         f"{jax.process_count()} processes use --cells_at_once=1")
    cells = plan(experiment)
    _check_one_set_of_data_settings(experiment, loaders)
    done = {cell.label: _read_record(cell) for cell in cells}
    todo = [cell for cell in cells if done[cell.label] is None]
    for index, cell in enumerate(cells, 1):
        if done[cell.label] is not None:
            print(f"[run {index}/{len(cells)}] {cell.label}: done earlier, kept", flush=True)
    cache = GridCache()
    if cells_at_once <= 1 or len(todo) <= 1:
        durations: list[float] = []
        for cell in todo:
            index = cells.index(cell) + 1
            eta = f", grid ETA {np.mean(durations) * (len(cells) - index + 1) / 60:.1f} min" if durations else ""
            print(f"[run {index}/{len(cells)}] {cell.label}{eta}", flush=True)
            start = time.time()
            done[cell.label] = run_cell(experiment, cell, loaders, cache)
            durations.append(time.time() - start)
    else:
        jobs = [threaded.Job(cell.label, f"[run {cells.index(cell) + 1}/{len(cells)}] {cell.label}",
                             functools.partial(run_cell, experiment, cell, loaders, cache),
                             after=source.label if (source := source_cell(experiment, cell)) else None)
                for cell in todo]
        done.update(threaded.run_jobs(jobs, cells_at_once))
    return [done[cell.label] for cell in cells]


def _check_one_set_of_data_settings(experiment: Experiment, loaders: Loaders) -> None:
    """Raises ValueError if two arms' runs would set the data settings (data.tasks.configure:
    vocabulary, UL2 and MLM rates, TFDS dir) differently. They are process-wide, and every
    cell of a grid runs in this process: one arm's would reach the others' data and the
    shared metric's batches. Checked on what loading each arm's files and bindings (its
    runs' gin, less the per-cell flags) applies, however they are written."""
    first_arm, first = None, None
    for arm in experiment.arms:
        with _LOADERS_LOCK:
            loaders.model_config(experiment, arm)
            settings = tasks.settings()
        if first is None:
            first_arm, first = arm, settings
        elif settings != first:
            differ = sorted(key for key in settings if settings[key] != first[key])
            raise ValueError(f"experiment {experiment.name}: arms {first_arm.name} and {arm.name} set the data "
                             f"settings {differ} differently; they are shared by every cell of a grid (one "
                             "process): bind them in run_bindings (every arm), or run another experiment")


def _read_record(cell: Cell) -> dict | None:
    path = os.path.join(cell.run_dir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
