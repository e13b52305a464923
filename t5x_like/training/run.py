"""Training runs: the typed `TrainConfig` and `train(config)`, which wires named steps.

    from t5x_like.training import run
    result = run.train(run.TrainConfig(model=Model(config), model_dir="/tmp/run",
                                       mixture_or_task_name="shakespeare_causal_lm",
                                       task_feature_lengths={"targets": 128}, train_steps=1000))

Owns: `TrainConfig` (everything one run needs, as plain Python values) and
`train(config)`: validate -> mesh -> trainer (shardings, jitted steps) ->
checkpointer -> state (resume / finetune / fresh: resume.py) -> data -> loop. Each step
is a function of its own, usable and testable alone. Also
`eval_checkpoint_loss` (teacher-forced loss of the newest checkpoint). Nothing
here reads gin or argv: `t5x-like train` (cli/train.py) fills a TrainConfig
from gin files, the comparison grid builds them in Python.

Resume. The data pipeline is deterministic given (task, seed, shard), and
each checkpoint holds the input stream's position (the `data` item, one state
per process), so a resumed run continues the stream where the checkpoint left
it and sees exactly the batches the uninterrupted run saw, at a cost that does
not grow with the step. A checkpoint without a position (a custom dataset_fn
whose iterator cannot save one, or one written before positions were saved)
falls back to skipping the consumed batches (`start_batch`, stored in meta).
Each step's meta also records the batch size and sequence lengths: a resume
with others is refused by name (resume.same_batch_shape), since the saved
position cannot serve the new shape.

Multi-host: each process reads shard `process_index` of the data and feeds
its rows of the global batch (`jax.distributed` is started by the command
line, see cli/train.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from t5x_like.data import settings as data_settings
from t5x_like.data.sources import (
    DataRequest,
    DatasetFn,
    check_task_name,
    default_dataset_fn,
    release,
    task_has_split,
)
from t5x_like.data.task_vocab import check_model_vocab_size
from t5x_like.model import features, sizing
from t5x_like.training import optimizers, partitioning, profiling, program_cache, run_dir
from t5x_like.training.checkpoints import (
    CHECKPOINT_SUBDIR,
    Checkpointer,
    SavedModelConfig,
    load_params,
    write_model_config,
)
from t5x_like.training.guards import CollapsedRunError, NonFiniteLossError, TrainingDivergedError  # noqa: F401
from t5x_like.training.metrics_log import MetricsLogger
from t5x_like.training.resume import StartingPoint, batch_shape, restore_or_init_state  # noqa: F401
from t5x_like.training.trainer import (
    LoopOptions,
    LossOptions,
    StopRequested,
    Trainer,
    TrainState,
    evaluate_loss,
    train_loop,
)

log = logging.getLogger(__name__)


# -- configuration -------------------------------------------------------------------
@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs, as plain values (gin files only fill it in)."""

    model: Any = None
    model_dir: str = ""
    mixture_or_task_name: str = ""
    task_feature_lengths: dict[str, int] = dataclasses.field(default_factory=dict)
    train_steps: int = 0
    batch_size: int = 8                  # global, all processes together
    num_microbatches: int = 1
    seed: int = 0                        # params init, dropout and data order
    pack: bool = True
    shuffle: bool = True
    eval_split: str | None = "validation"  # None: no evaluation
    eval_period: int = 0                 # 0: only at the end
    eval_steps: int = 10                 # batches per evaluation
    log_period: int = 10
    checkpoint_period: int = 1000
    keep_checkpoints: int | None = 3
    keep_best_checkpoint: bool = False   # also keep the lowest validation loss
    start_over_if_checkpoints_damaged: bool = False  # else refuse when every checkpoint is damaged
    async_checkpointing: bool = True
    init_checkpoint: str | None = None   # params from here, fresh optimizer (another layout: model/adaptation.py)
    optimizer: optimizers.Optimizer | None = None  # default: Adafactor, T5 defaults
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    loss_normalizing_factor: float | None = None
    mesh_shape: tuple[int, ...] = (-1, 1, 1)
    logical_axis_rules: tuple = partitioning.DEFAULT_RULES
    tensorboard: bool = True
    peak_flops_per_device: float | None = None
    # A jax.profiler trace of steps START..END (inclusive; 1 = a fresh run's first step) under
    # MODEL_DIR/profile, and a device memory profile after one step (training/profiling.py).
    profile_steps: tuple[int, int] | None = None
    memory_profile_step: int | None = None
    dataset_fn: DatasetFn | None = None  # default: data.sources.default_dataset_fn
    config_text: str = ""                # the configuration it came from (gin), saved as MODEL_DIR/config.gin

    def validate(self) -> None:
        """Raises ValueError naming the first missing/invalid field (before compiling, before
        MODEL_DIR is touched)."""
        if self.model is None:
            raise ValueError("no model: bind MODEL in a model gin file (gin_configs/models/...)")
        for name in ("model_dir", "mixture_or_task_name"):
            if not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} is empty")
        if self.init_checkpoint and "://" not in self.init_checkpoint and not os.path.exists(self.init_checkpoint):
            raise ValueError(f"init_checkpoint {self.init_checkpoint!r} does not exist")
        self.validate_step(jax.device_count(), jax.process_count())

    def validate_step(self, num_devices: int, num_processes: int) -> None:
        """The part of `validate` that compiling the train step needs (model, lengths, batch over
        the mesh), for `num_devices` devices fed by `num_processes` processes: this run's, or a
        TPU slice's (aot.py compiles for one on any host)."""
        if self.model is None:
            raise ValueError("no model: bind MODEL in a model gin file (gin_configs/models/...)")
        self.check_fields()
        if self.batch_size % (self.num_microbatches * num_processes):
            raise ValueError(f"batch_size {self.batch_size} must divide by num_microbatches "
                             f"{self.num_microbatches} x processes {num_processes}")
        shape = partitioning.resolve_mesh_shape(self.mesh_shape, num_devices)
        data_parallel = shape[0] * shape[1]
        if self.batch_size % data_parallel:  # the global batch is split over data x fsdp
            raise ValueError(
                f"batch_size {self.batch_size} does not divide over the {data_parallel} data-parallel devices "
                f"of mesh {shape} (data x fsdp); use a batch size that is a multiple of {data_parallel}")
        check_model_vocab_size(self.mixture_or_task_name, self.model.config.vocab_size)


    def check_fields(self) -> None:
        """ConfigFieldError naming the first count of the wrong type or below its minimum (a batch
        size of 0, a sequence length of 0, a train_steps of 'ten')."""
        for name, minimum in _COUNT_FIELDS.items():
            _check_count(name, getattr(self, name), minimum)
        if self.keep_checkpoints is not None:
            _check_count("keep_checkpoints", self.keep_checkpoints, 1)
        lengths = self.task_feature_lengths
        if not isinstance(lengths, dict) or "targets" not in lengths:
            raise ConfigFieldError("task_feature_lengths",
                                   f"task_feature_lengths must be a dict with 'targets', got {lengths!r}")
        for feature, length in lengths.items():
            _check_count("task_feature_lengths", length, 1, f"task_feature_lengths[{feature!r}]")
        if self.profile_steps is not None:
            window = self.profile_steps
            if not isinstance(window, (tuple, list)) or len(window) != 2:
                raise ConfigFieldError("profile_steps", f"TrainConfig.profile_steps must be (START, END), got {window!r}")
            _check_count("profile_steps", window[0], 1, "TrainConfig.profile_steps' START")
            _check_count("profile_steps", window[1], window[0], "TrainConfig.profile_steps' END (>= START)")
        if self.memory_profile_step is not None:
            _check_count("memory_profile_step", self.memory_profile_step, 1)


class ConfigFieldError(ValueError):
    """A TrainConfig field of the wrong type or out of range; `field` names it (the command line
    names the gin binding that set it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# Integer fields of TrainConfig and their smallest allowed value (None: any integer).
_COUNT_FIELDS = {"train_steps": 0, "batch_size": 1, "num_microbatches": 1, "seed": None, "eval_period": 0,
                 "eval_steps": 0, "log_period": 1, "checkpoint_period": 1}


def _check_count(field: str, value: Any, minimum: int | None, shown: str | None = None) -> None:
    shown = shown or f"TrainConfig.{field}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigFieldError(field, f"{shown} must be an integer, got {value!r} (a {type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigFieldError(field, f"{shown} must be >= {minimum}, got {value}")


@dataclasses.dataclass
class TrainResult:
    model_dir: str
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    stopped_by_signal: bool = False
    signal_number: int | None = None  # SIGTERM or SIGINT, when stopped by one


# -- named set-up steps ----------------------------------------------------------------
def build_trainer(config: TrainConfig, mesh: jax.sharding.Mesh,
                  cache: program_cache.ProgramCache | None = None) -> Trainer:
    """The run's Trainer; from `cache` (its compiled steps shared) when an earlier run had the same programs."""
    rules = config.logical_axis_rules
    optimizer = config.optimizer or optimizers.adafactor()
    loss = LossOptions(config.z_loss, config.label_smoothing, config.loss_normalizing_factor)

    def build() -> Trainer:
        return Trainer(config.model, optimizer, mesh, rules, config.batch_size, config.task_feature_lengths,
                       num_microbatches=config.num_microbatches, loss=loss, seed=config.seed)
    if cache is None:
        return build()
    key = program_cache.trainer_key(config.model, optimizer, mesh, rules, config.batch_size,
                               config.task_feature_lengths, config.num_microbatches, loss)
    return cache.trainer(key, config.seed, build)


def build_checkpointer(config: TrainConfig) -> Checkpointer:
    return Checkpointer(os.path.join(config.model_dir, CHECKPOINT_SUBDIR), keep=config.keep_checkpoints,
                        keep_best=config.keep_best_checkpoint, async_save=config.async_checkpointing)


def make_batches(config: TrainConfig, split: str, start_batch: int, *, train: bool) -> Iterator[dict]:
    request = DataRequest(
        task=config.mixture_or_task_name, task_feature_lengths=dict(config.task_feature_lengths),
        split=split, batch_size=partitioning.local_batch_size(config.batch_size),
        shuffle=config.shuffle and train, seed=config.seed, pack=config.pack,
        shard_id=jax.process_index(), num_shards=jax.process_count(), start_batch=start_batch,
        repeat=train)
    return (config.dataset_fn or default_dataset_fn)(request, config.model)


def make_logger(config: TrainConfig) -> MetricsLogger:
    layout, lengths = config.model.config.layout, config.task_feature_lengths
    flops = sizing.train_flops_for_task(config.model.config, lengths)
    tokens = sum(features.stack_lengths(layout, lengths).values())  # an MLM's inputs and targets are one text
    return MetricsLogger(config.model_dir, config.train_steps, config.batch_size,
                         tokens_per_example=tokens, flops_per_example=float(flops),
                         tensorboard=config.tensorboard, peak_flops=config.peak_flops_per_device)


def write_run_files(config: TrainConfig) -> None:
    """MODEL_DIR/model_config.json (what every reader rebuilds the model from), and as a human
    record MODEL_DIR/train_config.json (the typed config as text) and, when the run came from
    gin, MODEL_DIR/config.gin (`config_text`); process 0 only."""
    if jax.process_index() != 0:
        return
    write_model_config(config.model_dir, SavedModelConfig(
        config.model.config, dict(config.task_feature_lengths), data_settings.current(), "t5x-like train"))
    fields = {f.name: repr(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "config_text"}
    with open(os.path.join(config.model_dir, "train_config.json"), "w") as f:
        json.dump(fields, f, indent=1)
    if config.config_text.strip():
        with open(os.path.join(config.model_dir, "config.gin"), "w") as f:
            f.write(config.config_text)


def replayed(build: Callable[[], Iterator[dict]], count: int) -> Callable[[], Iterator[dict]]:
    """A source of the first `count` batches of `build()`: drawn once (one pipeline built), then
    replayed at every call. The evaluation stream is deterministic (unshuffled, seeded), so every
    evaluation sees the batches a freshly built pipeline would give, without building one each time."""
    drawn: list[list[dict]] = []

    def batches() -> Iterator[dict]:
        if not drawn:
            source = build()
            drawn.append(list(itertools.islice(source, count)))
            release(source)
        return iter(drawn[0])
    return batches


# -- the run -------------------------------------------------------------------------
def usable_eval_split(config: TrainConfig) -> str | None:
    """The eval split, or None with a warning when the task lacks it (e.g. a train-only corpus)."""
    if config.eval_split and not task_has_split(config.mixture_or_task_name, config.eval_split):
        log.warning("%s has no %r split: training without evaluation", config.mixture_or_task_name,
                    config.eval_split)
        return None
    return config.eval_split


def train(config: TrainConfig, cache: program_cache.ProgramCache | None = None,
          stop: StopRequested | None = None) -> TrainResult:
    """Trains (or resumes) one run; returns the final train/eval metrics and MODEL_DIR.

    `cache`: compiled steps shared with the other runs of this process that have the same
    model, shapes, optimizer recipe and loss (program_cache.py); the results are the same without it.
    `stop`: the stop request to obey, when the caller owns the signal handlers (runs trained in
    threads, which cannot install them); by default the run installs its own for SIGTERM and SIGINT."""
    config.validate()
    check_task_name(config.mixture_or_task_name)
    eval_split = usable_eval_split(config)
    with hold_run_dir(config.model_dir):
        return _train_in_run_dir(config, eval_split, cache, stop)


@contextlib.contextmanager
def hold_run_dir(model_dir: str) -> Iterator[None]:
    """MODEL_DIR's lock (run_dir.exclusive), taken by process 0 for all processes: if it is held
    elsewhere (or MODEL_DIR cannot be written) every process raises (none is left waiting in a collective).
    Remote MODEL_DIRs (gs://...) are not locked: flock needs a local or NFS path."""
    with contextlib.ExitStack() as stack:
        error = None
        if jax.process_index() == 0 and "://" not in model_dir:
            try:
                stack.enter_context(run_dir.exclusive(model_dir))
            except (run_dir.RunDirLockedError, run_dir.RunDirUnusableError) as e:
                error = e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # deferred: multi-process runs only
            if multihost_utils.broadcast_one_to_all(np.int32(error is not None)) and error is None:
                error = run_dir.RunDirLockedError(f"MODEL_DIR {model_dir} is in use by another run or unusable "
                                                  "(process 0 could not take its lock)")
        if error is not None:
            raise error
        yield


@dataclasses.dataclass
class RunParts:
    """What one run's loop needs once its start is known: its trainer, checkpointer, state (resumed,
    finetuned or fresh), training stream at the right position, evaluation batches, logger and
    `save(state, metrics)`; `close()` ends the checkpointer, the stream and the logger in that order."""

    config: TrainConfig
    trainer: Trainer
    checkpointer: Checkpointer
    state: TrainState
    batches: Iterator[dict]
    eval_batches: Callable[[], Iterator[dict]] | None
    logger: MetricsLogger
    batches_consumed: int
    start_step: int

    def save(self, s: TrainState, metrics: dict | None) -> None:
        step = int(jax.device_get(s.step))
        meta = {"batches_consumed": self.batches_consumed + (step - self.start_step), "seed": self.config.seed,
                "rng": np.asarray(jax.device_get(s.rng)).tolist(),
                **batch_shape(self.config.batch_size, self.config.task_feature_lengths)}
        self.checkpointer.save(step, s.params, s.opt_state, meta, metrics, batches=self.batches)

    def loop_options(self) -> LoopOptions:
        config = self.config
        return LoopOptions(config.train_steps, config.log_period, config.checkpoint_period,
                           config.eval_period, config.eval_steps)

    def close(self) -> None:
        self.checkpointer.close()
        release(self.batches)  # after close: a pending save may still write its position
        self.logger.close()


def prepare_run(config: TrainConfig, eval_split: str | None, mesh: jax.sharding.Mesh,
                cache: program_cache.ProgramCache | None) -> RunParts:
    """Trainer -> checkpointer -> state (resume / finetune / fresh) -> data -> run files -> logger."""
    trainer = build_trainer(config, mesh, cache)
    checkpointer = build_checkpointer(config)
    batches = make_batches(config, "train", 0, train=True)
    start = restore_or_init_state(trainer, checkpointer, config.init_checkpoint,
                                  config.start_over_if_checkpoints_damaged, batches)
    consumed = start.batches_consumed
    if start.stream_needs_rebuild():
        release(batches)
        batches = make_batches(config, "train", consumed, train=True)
    write_run_files(config)  # after the state and the data are known good: a failed start keeps the old ones
    eval_batches = None
    if eval_split:
        eval_batches = replayed(lambda: make_batches(config, eval_split, 0, train=False), config.eval_steps)
    return RunParts(config, trainer, checkpointer, start.state, batches, eval_batches, make_logger(config),
                    consumed, int(jax.device_get(start.state.step)))


def _train_in_run_dir(config: TrainConfig, eval_split: str | None,
                      cache: program_cache.ProgramCache | None, stop: StopRequested | None) -> TrainResult:
    parts = prepare_run(config, eval_split, partitioning.make_mesh(config.mesh_shape), cache)
    own_stop = stop is None
    if stop is None:
        stop = StopRequested(signals=(signal.SIGTERM, signal.SIGINT))
    profiler = profiling.StepProfiler(profiling.profile_dir(config.model_dir), config.profile_steps,
                                      config.memory_profile_step)
    try:
        _, result = train_loop(parts.trainer, parts.state, parts.batches, parts.loop_options(), save=parts.save,
                               eval_batches=parts.eval_batches, logger=parts.logger, stop=stop,
                               check_storage=parts.checkpointer.check_for_errors, profiler=profiler)
    finally:
        profiler.close()
        if own_stop:
            stop.restore()
        parts.close()
    return TrainResult(config.model_dir, result.step, result.train_metrics, result.eval_metrics,
                       result.stopped_by_signal, stop.signal_number)


def eval_checkpoint_loss(config: TrainConfig) -> dict[str, float]:
    """Validation metrics of the newest good checkpoint in MODEL_DIR (eval.gin)."""
    config.validate()
    check_task_name(config.mixture_or_task_name)
    directory = os.path.join(config.model_dir, CHECKPOINT_SUBDIR)
    if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
        raise FileNotFoundError(f"no checkpoint in {config.model_dir} to evaluate: train there first")
    trainer = build_trainer(config, partitioning.make_mesh(config.mesh_shape))
    loaded = load_params(config.model_dir, trainer.abstract_params)  # reads only: a run saving there is undisturbed
    metrics = evaluate_loss(trainer, loaded.params, make_batches(config, config.eval_split or "validation", 0,
                                                            train=False), config.eval_steps)
    logger = make_logger(config)
    logger.write("eval", loaded.step, metrics)
    logger.close()
    return metrics
