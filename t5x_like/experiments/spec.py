"""What an experiment is: its arms (explicit, or a declared grid that expands to arms) and settings.

    Experiment(name="quick", output_dir="out/quick", task="shakespeare_prefix_lm",
               arms=[{"name": "decoder_only", "model": "gin_configs/models/decoder_only/small.gin"},
                     {"name": "prefix_lm", "model": "gin_configs/models/prefix_lm/small.gin"}])

Owns `Experiment` (bound by a file under gin_configs/experiments/ as
`compare.Experiment`, or built in Python), `Arm`, `expand_grid` (axes of
values -> arms, with per-arm overrides), and the per-arm settings every cell
of an arm shares (`arm_lengths`, `run_settings`). An arm's `model` and
`bindings` are gin, which only the command line reads (cli/compare.py);
nothing here parses them. Does not own running cells (grid.py, cells.py),
matching claims (claims.py) or scoring (scoring.py).
"""
from __future__ import annotations

import dataclasses
import itertools

from t5x_like.data import task_suite, tasks, vocab
from t5x_like.inference import prompted

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
    # Train each arm's seeds as one program (stacked on a leading axis, training/stacked.py): every
    # seed keeps its own run, records and checkpoints; numbers equal to the lone runs' up to rounding.
    stack_seeds: bool = False
    # Prompted evaluation after pretraining (experiments/prompted_eval.py): every run's final
    # checkpoint is scored on these task-suite families (data/task_suite.py: every template, rank
    # classification), with zero_shot_fewshot training demonstrations (0: zero-shot), on the
    # first zero_shot_examples validation examples of each family; zero_shot_calibration
    # 'content_free' subtracts each choice's score after the template without the example
    # (inference/prompted.py), 'none' ranks raw scores.
    zero_shot_families: tuple = ()
    zero_shot_fewshot: int = 0
    zero_shot_examples: int = 200
    zero_shot_calibration: str = "none"
    # UL2's mode token (vocab.MODE_TOKENS) put before the prompted inputs of every arm whose own
    # task is a UL2 mixture (<corpus>_ul2), as UL2 does downstream; None: never.
    zero_shot_mode_token: str | None = "[S2S]"
    # Per phase (an Arm's `phase`), what a published study found, shown beside the report's
    # ranking of the arms after each phase, e.g. {'pretrained': 'CD:FLM first (Wang et al. 2022)'}.
    published_rankings: dict = dataclasses.field(default_factory=dict)

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
        in_dependency_order(self.arms)  # raises on a cycle of init_from
        for arm in self.arms:
            self._check_finetuning_mixture(arm)
        self._check_comparisons()
        self._check_zero_shot()

    def _check_finetuning_mixture(self, arm: "Arm") -> None:
        """A suite_mtf_ task an arm names is registered, and its families' data is installed."""
        families = tasks.suite_multitask_families(arm.task or "")
        if not families:
            return
        _, skipped = task_suite.available(families)
        if skipped:
            raise ValueError(f"experiment {self.name}: arm {arm.name}'s finetuning mixture {arm.task}: "
                             + next(iter(skipped.values())))
        tasks.register_on_request(arm.task)

    def _check_comparisons(self) -> None:
        eval_tasks = {arm.name: arm.eval_task or self.eval_task for arm in self.arms}
        for pair in self.comparisons:
            if len(pair) != 2 or pair[0] == pair[1] or any(name not in eval_tasks for name in pair):
                raise ValueError(f"experiment {self.name}: comparison {pair!r} is not a pair of arms; "
                                 f"arms: {list(eval_tasks)}")
            if eval_tasks[pair[0]] != eval_tasks[pair[1]]:
                raise ValueError(f"experiment {self.name}: comparison {pair!r} joins arms scored on different "
                                 f"eval tasks ({eval_tasks[pair[0]]}, {eval_tasks[pair[1]]})")

    def _check_zero_shot(self) -> None:
        self.zero_shot_families = tuple(self.zero_shot_families)
        unknown = [f for f in self.zero_shot_families if f not in task_suite.FAMILIES]
        if unknown:
            raise ValueError(f"experiment {self.name}: unknown zero_shot_families {unknown}; the task suite has "
                             f"{sorted(task_suite.FAMILIES)}")
        if self.zero_shot_calibration not in prompted.CALIBRATIONS:
            raise ValueError(f"experiment {self.name}: unknown zero_shot_calibration {self.zero_shot_calibration!r}; "
                             f"expected one of {prompted.CALIBRATIONS}")
        if self.zero_shot_fewshot < 0 or self.zero_shot_examples < 1:
            raise ValueError(f"experiment {self.name}: zero_shot_fewshot must be >= 0 and zero_shot_examples "
                             f">= 1, got {self.zero_shot_fewshot} and {self.zero_shot_examples}")
        if self.zero_shot_mode_token is not None and self.zero_shot_mode_token not in vocab.MODE_TOKENS:
            raise ValueError(f"experiment {self.name}: zero_shot_mode_token {self.zero_shot_mode_token!r} is not "
                             f"one of UL2's {vocab.MODE_TOKENS} (or None)")
        for arm in self.arms:
            self._check_arm_zero_shot(arm)

    def _check_arm_zero_shot(self, arm: "Arm") -> None:
        """An arm's own families are suite families, and none it was finetuned on (held out)."""
        if arm.zero_shot_families is None:
            return
        unknown = [f for f in arm.zero_shot_families if f not in task_suite.FAMILIES]
        if unknown:
            raise ValueError(f"experiment {self.name}: arm {arm.name}'s zero_shot_families {unknown} are not "
                             f"task-suite families {sorted(task_suite.FAMILIES)}")
        finetuned_on = tasks.suite_multitask_families(arm.task or "") or ()
        seen = [f for f in arm.zero_shot_families if f in finetuned_on]
        if seen:
            raise ValueError(f"experiment {self.name}: arm {arm.name} is evaluated zero-shot on {seen}, which its "
                             f"finetuning mixture {arm.task} holds; hold them out of the mixture or drop them "
                             "from its zero_shot_families")

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
    # The prompted evaluation (Experiment.zero_shot_*): the families this arm is scored on (None:
    # the experiment's), and the phase its scores belong to in the report (a table per phase,
    # e.g. 'pretrained' / 'finetuned'; None: the experiment's tables per family only).
    zero_shot_families: tuple | None = None
    phase: str | None = None

    @classmethod
    def from_dict(cls, spec: dict) -> "Arm":
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown or "name" not in spec or "model" not in spec:
            raise ValueError(f"arm {spec!r}: needs 'name' and 'model'; unknown keys {sorted(unknown)}")
        families = spec.get("zero_shot_families")
        return cls(**{**spec, "bindings": tuple(spec.get("bindings", ())),
                      "claims": dict(spec.get("claims", {})),
                      "zero_shot_families": None if families is None else tuple(families)})


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


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every cell of an arm trains with, decided by the experiment (the command line binds
    them as the run file's macros: MIXTURE_OR_TASK_NAME, TRAIN_STEPS, BATCH_SIZE, EVAL_PERIOD,
    CHECKPOINT_PERIOD, so a schedule bound to %TRAIN_STEPS follows the arm's length)."""

    task: str
    train_steps: int
    batch_size: int
    eval_period: int
    checkpoint_period: int


def run_settings(experiment: Experiment, arm: Arm) -> RunSettings:
    return RunSettings(task=arm.task or experiment.task, train_steps=arm.train_steps or experiment.train_steps,
                       batch_size=experiment.batch_size, eval_period=experiment.eval_period,
                       checkpoint_period=experiment.eval_period)


def zero_shot_families(experiment: Experiment, arm: Arm) -> tuple[str, ...]:
    """The task-suite families an arm's prompted evaluation scores: its own, else the experiment's."""
    return experiment.zero_shot_families if arm.zero_shot_families is None else arm.zero_shot_families


def zero_shot_mode_token(experiment: Experiment, arm: Arm) -> str | None:
    """The UL2 mode token before an arm's prompted inputs: the experiment's, for an arm whose own
    task is a UL2 mixture; None otherwise."""
    task = arm.task or experiment.task
    return experiment.zero_shot_mode_token if task.endswith("_ul2") else None


def arm_lengths(experiment: Experiment, arm: Arm) -> tuple[int, int]:
    return (arm.inputs_length or experiment.inputs_length, arm.targets_length or experiment.targets_length)


def in_dependency_order(arms: list[Arm]) -> list[Arm]:
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
