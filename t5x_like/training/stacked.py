"""Seeds of one run trained as one program: `train_stacked(configs)`.

    results = stacked.train_stacked([dataclasses.replace(config, seed=s, model_dir=f"runs/seed{s}")
                                     for s in (0, 1)])

Owns `train_stacked` and `why_not_stacked` (when configs cannot share one
program). Each seed is still a whole run of its own (run.prepare_run: its
MODEL_DIR and lock, its checkpoints, resume, data stream, evaluation batches,
metrics log and run files), and a seed's state starts exactly where its lone run
would (its own init or checkpoint, its own stream position, its own rng). Only
the train step is shared: the seeds' states and batches are stacked on a leading
axis and stepped by `Trainer.stacked_train_step`, so each seed sees its own
batches and dropout keys. On one CPU device that step is the lone step once per
seed in one program, and each seed's numbers are its lone run's, bitwise; on an
accelerator or a mesh it is a `jax.vmap` of the lone step, and a seed's losses
equal its lone run's up to float rounding (a batched matmul adds in another
order). Either way a stacked run is bitwise reproducible. After each step every
seed's `trainer.LoopLane` checks, logs, evaluates (the lone eval step, on the
seed's slice of the params) and saves (its slice of the state, through its own
Checkpointer), so a kill and a rerun resume each seed from its own checkpoint.

Seeds restored at different steps (a kill between two seeds' saves) are not
stacked: each finishes as a lone run (run.train), logged as such.

Seeds on a mesh. On one device the stacked step's arguments are placed as
given. On a mesh of several devices the seed axis is a
data-parallel-like axis: `partitioning.stacked_mesh` splits the 'data' axis
into g = gcd(S, data) seed groups, and each group holds S / g seeds' params,
optimizer state and batches, each seed's batch split over the group's
remaining data x fsdp devices and its parameters by the logical rules (fsdp,
tensor) as in its lone run. So S seeds on a data axis of S devices put one
seed per device; S = 4 on data = 8 gives each seed 2 data-parallel devices;
S = 4 on data = 2 puts 2 seeds on each device. When S and the data axis
share no factor (3 seeds on data = 2; any S on a pure fsdp or tensor mesh,
data = 1) the seeds are not stacked but trained one after another, each on
the whole mesh, logged with the reason (`why_not_stacked`): stacking them
unsplit would hold S copies of the model on every device. Each seed's
evaluation and checkpoints run on its lone run's mesh and shardings (its
slice of the state is moved there), so checkpoints are the lone run's.
Multi-process runs are not stacked (each host would feed every seed).
`t5x-like compile --stack_seeds=S` (training/aot.py) compiles this step for
a TPU slice: will S seeds fit together?
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import signal
from collections.abc import Sequence

import jax
import numpy as np

from t5x_like.data.sources import check_task_name
from t5x_like.training import partitioning, program_cache
from t5x_like.training.run import (
    RunParts,
    TrainConfig,
    TrainResult,
    build_trainer,
    hold_run_dir,
    prepare_run,
    train,
    usable_eval_split,
)
from t5x_like.training.trainer import LoopLane, StopRequested, Trainer, TrainState, seed_slice, stack

log = logging.getLogger(__name__)

# Fields in which the runs of one stacked program may differ (each seed's own run).
PER_SEED_FIELDS = ("seed", "model_dir", "init_checkpoint", "config_text")


def why_not_stacked(configs: Sequence[TrainConfig]) -> str | None:
    """Why these runs cannot train as one stacked program, or None when they can: at least two,
    equal in every field but the per-seed ones, in one process, on one device or on a mesh whose
    'data' axis shares a factor with the number of seeds (`seeds_on_mesh_problem`)."""
    if len(configs) < 2:
        return "a single run"
    first = configs[0]
    for config in configs[1:]:
        differ = [f.name for f in dataclasses.fields(config)
                  if f.name not in PER_SEED_FIELDS and _by_value(config, f.name) != _by_value(first, f.name)]
        if differ:
            return f"runs {first.model_dir} and {config.model_dir} differ in {differ}"
    if len({config.model_dir for config in configs}) < len(configs):
        return "two runs share a MODEL_DIR"
    if jax.process_count() > 1:
        return f"{jax.process_count()} processes: seeds are stacked within one process only"
    return seeds_on_mesh_problem(len(configs), first.mesh_shape, jax.device_count())


def seeds_on_mesh_problem(num_seeds: int, mesh_shape: Sequence[int], num_devices: int) -> str | None:
    """Why `num_seeds` stacked seeds cannot be placed on this mesh (module docstring), or None:
    on several devices the seeds are split over gcd(seeds, data axis) groups, which must be > 1."""
    if num_devices == 1:
        return None
    try:
        shape = partitioning.resolve_mesh_shape(mesh_shape, num_devices)
    except ValueError as e:
        return str(e)
    data = shape[partitioning.MESH_AXES.index("data")]
    if partitioning.seed_groups(num_seeds, data) == 1:
        return (f"{num_seeds} seeds and the mesh's data axis of {data} (mesh {shape}) share no factor: the seed "
                f"axis cannot be split over devices (give MESH_SHAPE a data axis sharing a factor with {num_seeds})")
    return None


def placement(num_seeds: int, mesh_shape: Sequence[int]) -> str:
    """Where the seeds sit on a (data, fsdp, tensor) mesh, in words: the log line of a stacked run
    on several devices, and `t5x-like compile --stack_seeds`' report."""
    data, fsdp, tensor = mesh_shape
    groups = partitioning.seed_groups(num_seeds, data)
    return (f"{num_seeds} seeds stacked in one program, over {groups} device group(s) of the data axis ({data}): "
            f"{num_seeds // groups} seed(s) per group, each seed's batch over {data // groups} x {fsdp} "
            f"(data x fsdp) devices, {tensor}-way tensor parallel")


def _by_value(config: TrainConfig, name: str):
    """A field as compared for stacking: the model by its config and the optimizer by its recipe
    (what their programs depend on, program_cache.py), when they have one; else the object."""
    value = getattr(config, name)
    if name == "model":
        return program_cache.model_key(value) or value
    if name == "optimizer" and getattr(value, "recipe", None) is not None:
        return value.recipe
    return value


def train_stacked(configs: Sequence[TrainConfig], cache: program_cache.ProgramCache | None = None,
                  stop: StopRequested | None = None) -> list[TrainResult]:
    """Trains (or resumes) each config's run, all seeds in one stacked step; one TrainResult per
    config, in order. Runs that cannot be stacked (why_not_stacked) train one after another."""
    reason = why_not_stacked(configs)
    if reason is not None:
        log.info("training %d runs one after another: %s", len(configs), reason)
        return [train(config, cache, stop) for config in configs]
    for config in configs:
        config.validate()
        check_task_name(config.mixture_or_task_name)
    eval_split = usable_eval_split(configs[0])
    mesh = partitioning.make_mesh(configs[0].mesh_shape)
    with contextlib.ExitStack() as held:
        for config in configs:
            held.enter_context(hold_run_dir(config.model_dir))
        runs: list[RunParts] = []
        try:
            for config in configs:
                runs.append(prepare_run(config, eval_split, mesh, cache))
            steps = [run.start_step for run in runs]
            if len(set(steps)) > 1:
                for run in runs:
                    run.close()
                runs = []
                log.warning("the seeds resume from different steps (%s): each finishes alone",
                            ", ".join(f"{c.model_dir} at {s}" for c, s in zip(configs, steps)))
                held.close()
                return [train(config, cache, stop) for config in configs]
            return _train_stacked_runs(runs, _seed_trainer(configs, mesh, cache), stop)
        finally:
            for run in runs:
                run.close()


def _seed_trainer(configs: Sequence[TrainConfig], mesh: jax.sharding.Mesh,
                  cache: program_cache.ProgramCache | None) -> Trainer | None:
    """The Trainer whose stacked step runs on several devices (on the seeds' `stacked_mesh`), or
    None on one device (the first run's own Trainer steps the seeds, unchanged)."""
    if mesh.size == 1:
        return None
    log.info("%s", placement(len(configs), mesh.devices.shape))
    return build_trainer(configs[0], partitioning.stacked_mesh(mesh, len(configs)), cache)


def _train_stacked_runs(runs: list[RunParts], seed_trainer: Trainer | None,
                        stop: StopRequested | None) -> list[TrainResult]:
    own_stop = stop is None
    if stop is None:
        stop = StopRequested(signals=(signal.SIGTERM, signal.SIGINT))
    try:
        results = _stacked_loop(runs, seed_trainer, stop)
    finally:
        if own_stop:
            stop.restore()
    return [TrainResult(run.config.model_dir, result.step, result.train_metrics, result.eval_metrics,
                        result.stopped_by_signal, stop.signal_number) for run, result in zip(runs, results)]


def _stacked_loop(runs: list[RunParts], seed_trainer: Trainer | None, stop: StopRequested):
    """trainer.train_loop for stacked seeds: one stacked step, then each seed's LoopLane.
    `seed_trainer`: the stacked step's Trainer on several devices (_seed_trainer), else None."""
    step_fn = (seed_trainer or runs[0].trainer).stacked_train_step()
    options = runs[0].loop_options()
    state = stack([run.state for run in runs])
    if seed_trainer is not None:
        state_shardings, batch_shardings = seed_trainer.stacked_shardings()
        state = jax.device_put(state, state_shardings)
    state_of = functools.partial(_lone_state, runs) if seed_trainer is not None else seed_slice
    lanes = [LoopLane(run.trainer, run.state.params, options, save=run.save, eval_batches=run.eval_batches,
                      logger=run.logger, pick=functools.partial(_row, index))
             for index, run in enumerate(runs)]
    step = runs[0].start_step
    timing_started = False
    while step < options.total_steps:
        batch = stack([run.trainer.host_batch(next(run.batches)) for run in runs])
        if seed_trainer is not None:
            batch = jax.device_put(batch, batch_shardings)
        state, metrics = step_fn(state, batch)
        step += 1
        for run in runs:
            run.checkpointer.check_for_errors()
        if not timing_started:  # exclude compilation (first step) from tokens/s
            jax.block_until_ready(metrics)
            for run in runs:
                run.logger.start(step)
            timing_started = True
        stopping = stop.agreed()
        for index, lane in enumerate(lanes):
            lane.after_step(step, metrics, functools.partial(state_of, state, index), stopping)
        if stopping and step < options.total_steps:
            return [lane.result(step, stopped_by_signal=True) for lane in lanes]
    return [lane.result(step) for lane in lanes]


def _lone_state(runs: list[RunParts], state: TrainState, index: int) -> TrainState:
    """Seed `index`'s state moved from the stacked mesh to its lone run's mesh and shardings
    (what its evaluation and its checkpoint expect)."""
    return jax.device_put(seed_slice(state, index), runs[index].trainer.state_shardings)


def _row(index: int, metrics: dict) -> dict:
    return {name: np.asarray(value)[index] for name, value in metrics.items()}
