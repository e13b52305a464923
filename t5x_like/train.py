"""`python -m t5x_like.train` / `t5x-like train`: train a model from gin files.

    python -m t5x_like.train \\
      --gin_file=gin_configs/models/decoder_only/tiny.gin \\
      --gin_file=gin_configs/runs/pretrain.gin \\
      --gin.MODEL_DIR=/tmp/run --gin.MIXTURE_OR_TASK_NAME=shakespeare_causal_lm \\
      --gin.TASK_FEATURE_LENGTHS="{'targets': 128}" --gin.TRAIN_STEPS=1000

Owns: reading gin into a typed `TrainConfig`, and `train(config)`, which wires
the named set-up steps together: validate -> mesh -> trainer (shardings,
jitted steps) -> checkpointer -> state (resume / finetune / fresh) -> data ->
loop. Each step is a function of its own, usable and testable alone.
`train()` itself never reads gin: the comparison runner builds TrainConfig
objects in Python and calls it directly.

Resume. The data pipeline is deterministic given (task, seed, shard); one
global batch is consumed per step, so a run resumed from the checkpoint of
step s skips s batches of the same stream (`start_batch`) and sees exactly
the batches the uninterrupted run saw. The number of batches consumed is
stored in each checkpoint's meta item.

Multi-host: `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID variables, or `--multihost` for auto-detection on TPU pods
and SLURM). Each process reads shard `process_index` of the data and feeds
its rows of the global batch.
"""
from __future__ import annotations

if __name__ == "__main__":
    # `python -m t5x_like.train`: run the importable copy of this module, so
    # gin registers its configurables once, under t5x_like.train.
    import sys

    from t5x_like.train import main as _main
    sys.exit(_main())

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gin
import jax
import numpy as np

from t5x_like import gin_utils, optimizers, partitioning
from t5x_like.checkpoints import CHECKPOINT_SUBDIR, Checkpointer, restore_params
from t5x_like.metrics_log import MetricsLogger
from t5x_like.trainer import (
    LoopOptions,
    LossOptions,
    NonFiniteLossError,
    StopRequested,
    Trainer,
    TrainState,
    evaluate,
    train_loop,
)

log = logging.getLogger("t5x_like.train")

REQUIRED_MACROS = ("MODEL", "MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")
SYNTHETIC_PREFIX = "synthetic"


# -- data ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DataRequest:
    """What the loop asks a data source for. batch_size is per process."""

    task: str
    task_feature_lengths: dict[str, int]
    split: str
    batch_size: int
    shuffle: bool
    seed: int
    pack: bool
    shard_id: int = 0
    num_shards: int = 1
    start_batch: int = 0  # batches of this stream already consumed (resume)
    repeat: bool = True


# A data source: (request, model) -> iterator over dicts of numpy arrays with
# the model's feature-converted keys, `batch_size` rows each.
DatasetFn = Callable[[DataRequest, Any], Iterator[dict[str, np.ndarray]]]


def synthetic_batches(request: DataRequest, model: Any) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic in-memory batches (tasks named 'synthetic*'), for tests and benchmarks.

    Row r of global batch i depends only on (seed, split, i, r): each row is an
    arithmetic progression mod the vocabulary with a random start and stride
    (learnable, so the loss falls). Every process computes the same global
    batch and keeps its own rows, so runs agree across process counts.
    """
    lengths = request.task_feature_lengths
    global_size = request.batch_size * request.num_shards
    template = model.dummy_batch(global_size, lengths)
    vocab = int(model.config.vocab_size)
    split_id = {"train": 0, "validation": 1, "test": 2}.get(request.split, 3)
    i = request.start_batch
    while True:
        rng = np.random.default_rng([request.seed, split_id, i])
        batch = {}
        for key, value in template.items():
            n, length = value.shape
            if key.endswith("_tokens"):
                start = rng.integers(2, vocab, size=(n, 1))
                stride = rng.integers(1, 5, size=(n, 1))
                seq = 2 + (start + stride * np.arange(length)[None]) % (vocab - 2)
                if key == "decoder_input_tokens":  # shifted-right targets
                    seq = np.concatenate([np.zeros((n, 1), seq.dtype), seq[:, :-1]], axis=1)
                batch[key] = seq.astype(value.dtype)
            elif key.endswith(("_loss_weights", "_segment_ids")):
                batch[key] = np.ones_like(value)
            elif key.endswith("_positions"):
                batch[key] = np.broadcast_to(np.arange(length, dtype=value.dtype), value.shape).copy()
            elif key == "decoder_causal_attention":  # bidirectional over the inputs part
                batch[key] = (np.arange(length)[None] <= lengths.get("inputs", 0)).astype(value.dtype)
                batch[key] = np.broadcast_to(batch[key], value.shape).copy()
            else:
                batch[key] = value
        if "decoder_target_tokens" in batch and "decoder_causal_attention" in batch:
            # loss on the targets part only, as the prefix-LM converter does
            batch["decoder_loss_weights"] = (1 - batch["decoder_causal_attention"]).astype(np.int32)
        lo = request.shard_id * request.batch_size
        yield {k: v[lo:lo + request.batch_size] for k, v in batch.items()}
        i += 1
        if not request.repeat and i >= 1000:
            return


def seqio_batches(request: DataRequest, model: Any) -> Iterator[dict[str, np.ndarray]]:
    """Batches from `t5x_like.data.get_dataset` (a deterministic tf.data pipeline)."""
    from t5x_like import data
    ds = data.get_dataset(request.task, request.task_feature_lengths, request.split,
                          layout=model.config.layout, batch_size=request.batch_size,
                          shuffle=request.shuffle, seed=request.seed, shard_id=request.shard_id,
                          num_shards=request.num_shards, pack=request.pack,
                          num_epochs=None if request.repeat else 1)
    return iter(ds.skip(request.start_batch).as_numpy_iterator())


def default_dataset_fn(request: DataRequest, model: Any) -> Iterator[dict[str, np.ndarray]]:
    if request.task.startswith(SYNTHETIC_PREFIX):
        return synthetic_batches(request, model)
    return seqio_batches(request, model)


def check_task_name(name: str) -> None:
    """Raises ValueError (one line, close matches) for an unregistered task/mixture."""
    if name.startswith(SYNTHETIC_PREFIX):
        return
    try:
        import seqio

        import t5x_like.data  # noqa: F401  (registers the tasks)
    except ImportError as e:
        raise ValueError(f"cannot check task {name!r}: t5x_like.data is not importable ({e})") from None
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:20]) or 'none'}"
        raise ValueError(f"unknown task or mixture {name!r}{hint}")


# -- configuration -------------------------------------------------------------------
@gin.configurable
@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs; gin-free (gin files only fill it in)."""

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
    async_checkpointing: bool = True
    init_checkpoint: str | None = None   # finetune: params from here, fresh optimizer
    optimizer: optimizers.Optimizer | None = None  # default: Adafactor, T5 defaults
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    loss_normalizing_factor: float | None = None
    mesh_shape: tuple[int, ...] = (-1, 1, 1)
    logical_axis_rules: tuple | None = None  # default partitioning.logical_axis_rules()
    tensorboard: bool = True
    peak_flops_per_device: float | None = None
    dataset_fn: DatasetFn | None = None  # default: default_dataset_fn

    def validate(self) -> None:
        """Raises ValueError naming the first missing/invalid field (before compiling)."""
        if self.model is None:
            raise ValueError("no model: bind MODEL in a model gin file (gin_configs/models/...)")
        for name in ("model_dir", "mixture_or_task_name"):
            if not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} is empty")
        if not isinstance(self.task_feature_lengths, dict) or "targets" not in self.task_feature_lengths:
            raise ValueError(f"task_feature_lengths must be a dict with 'targets', got {self.task_feature_lengths!r}")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0, got {self.train_steps}")
        if self.init_checkpoint and "://" not in self.init_checkpoint and not os.path.exists(self.init_checkpoint):
            raise ValueError(f"init_checkpoint {self.init_checkpoint!r} does not exist")
        if self.batch_size % (self.num_microbatches * jax.process_count()):
            raise ValueError(f"batch_size {self.batch_size} must divide by num_microbatches "
                             f"{self.num_microbatches} x processes {jax.process_count()}")


@dataclasses.dataclass
class TrainResult:
    model_dir: str
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    stopped_by_signal: bool = False


# -- named set-up steps ----------------------------------------------------------------
def build_trainer(config: TrainConfig, mesh: jax.sharding.Mesh) -> Trainer:
    rules = config.logical_axis_rules or partitioning.logical_axis_rules()
    optimizer = config.optimizer or optimizers.adafactor()
    loss = LossOptions(config.z_loss, config.label_smoothing, config.loss_normalizing_factor)
    return Trainer(config.model, optimizer, mesh, rules, config.batch_size, config.task_feature_lengths,
                   num_microbatches=config.num_microbatches, loss=loss, seed=config.seed)


def build_checkpointer(config: TrainConfig) -> Checkpointer:
    return Checkpointer(os.path.join(config.model_dir, CHECKPOINT_SUBDIR), keep=config.keep_checkpoints,
                        keep_best=config.keep_best_checkpoint, async_save=config.async_checkpointing)


def restore_or_init_state(trainer: Trainer, checkpointer: Checkpointer,
                          init_checkpoint: str | None = None) -> tuple[TrainState, int]:
    """(state, batches consumed): resume from MODEL_DIR if it has a good checkpoint,
    else params from `init_checkpoint` with a fresh optimizer, else a fresh init."""
    restored = checkpointer.restore_latest(trainer.abstract_params, trainer.abstract_opt_state)
    if restored is not None:
        params, opt_state, meta = restored
        log.info("resuming from step %d", meta["step"])
        state = trainer.make_state(meta["step"], params, opt_state, meta.get("rng"))
        return state, int(meta.get("batches_consumed", meta["step"]))
    if init_checkpoint:
        return trainer.init_state(restore_params(init_checkpoint, trainer.abstract_params)), 0
    return trainer.init_state(), 0


def make_batches(config: TrainConfig, split: str, start_batch: int, *, train: bool) -> Iterator[dict]:
    request = DataRequest(
        task=config.mixture_or_task_name, task_feature_lengths=dict(config.task_feature_lengths),
        split=split, batch_size=partitioning.local_batch_size(config.batch_size),
        shuffle=config.shuffle and train, seed=config.seed, pack=config.pack,
        shard_id=jax.process_index(), num_shards=jax.process_count(), start_batch=start_batch,
        repeat=train)
    return (config.dataset_fn or default_dataset_fn)(request, config.model)


def make_logger(config: TrainConfig) -> MetricsLogger:
    lengths = config.task_feature_lengths
    from t5x_like.metrics_log import _train_flops_per_example
    return MetricsLogger(config.model_dir, config.train_steps, config.batch_size,
                         tokens_per_example=sum(lengths.values()),
                         flops_per_example=_train_flops_per_example(config.model.config, lengths),
                         tensorboard=config.tensorboard, peak_flops=config.peak_flops_per_device)


def write_run_files(config: TrainConfig) -> None:
    """MODEL_DIR/train_config.json (the typed config as text) and, when the run
    came from gin, MODEL_DIR/config.gin (what `t5x-like eval` reloads); process 0 only."""
    if jax.process_index() != 0:
        return
    os.makedirs(config.model_dir, exist_ok=True)
    fields = {f.name: repr(getattr(config, f.name)) for f in dataclasses.fields(config)}
    with open(os.path.join(config.model_dir, "train_config.json"), "w") as f:
        json.dump(fields, f, indent=1)
    gin_config = gin.config_str()
    if gin_config.strip():
        with open(os.path.join(config.model_dir, "config.gin"), "w") as f:
            f.write(gin_config)


# -- the run -------------------------------------------------------------------------
def train(config: TrainConfig) -> TrainResult:
    """Trains (or resumes) one run; returns the final train/eval metrics and MODEL_DIR."""
    config.validate()
    check_task_name(config.mixture_or_task_name)
    mesh = partitioning.make_mesh(config.mesh_shape)
    trainer = build_trainer(config, mesh)
    checkpointer = build_checkpointer(config)
    write_run_files(config)
    state, consumed = restore_or_init_state(trainer, checkpointer, config.init_checkpoint)
    start_step = int(jax.device_get(state.step))
    batches = make_batches(config, "train", consumed, train=True)
    eval_batches = None
    if config.eval_split:
        def eval_batches():
            return make_batches(config, config.eval_split, 0, train=False)
    logger = make_logger(config)

    def save(s: TrainState, metrics: dict | None) -> None:
        step = int(jax.device_get(s.step))
        meta = {"batches_consumed": consumed + (step - start_step), "seed": config.seed,
                "rng": np.asarray(jax.device_get(s.rng)).tolist()}
        checkpointer.save(step, s.params, s.opt_state, meta, metrics)

    stop = StopRequested()
    options = LoopOptions(config.train_steps, config.log_period, config.checkpoint_period,
                          config.eval_period, config.eval_steps)
    try:
        state, result = train_loop(trainer, state, batches, options, save=save,
                                   eval_batches=eval_batches, logger=logger, stop=stop)
    except NonFiniteLossError as e:
        logger.message(str(e))
        raise
    finally:
        stop.restore()
        checkpointer.close()
        logger.close()
    return TrainResult(config.model_dir, result.step, result.train_metrics, result.eval_metrics,
                       result.stopped_by_signal)


def evaluate_checkpoint(config: TrainConfig) -> dict[str, float]:
    """Validation metrics of the newest good checkpoint in MODEL_DIR (eval.gin)."""
    config.validate()
    check_task_name(config.mixture_or_task_name)
    trainer = build_trainer(config, partitioning.make_mesh(config.mesh_shape))
    checkpointer = build_checkpointer(config)
    restored = checkpointer.restore_latest(trainer.abstract_params, trainer.abstract_opt_state)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {config.model_dir}")
    params, _, meta = restored
    metrics = evaluate(trainer, params, make_batches(config, config.eval_split or "validation", 0,
                                                     train=False), config.eval_steps)
    logger = make_logger(config)
    logger.write("eval", meta["step"], metrics)
    logger.close()
    checkpointer.close()
    return metrics


@gin.configurable
def run_mode(mode: str = "train") -> str:
    """Which program a run gin file asks for: 'train' (pretrain, finetune), 'eval'
    (teacher-forced loss) or 'infer' (generation + task metrics, as `t5x-like eval`)."""
    if mode not in ("train", "eval", "infer"):
        raise ValueError(f"run_mode.mode={mode!r}: expected 'train', 'eval' or 'infer'")
    return mode


def infer_checkpoint(config: TrainConfig) -> int:
    """Greedy generation and the task's metrics on the validation split (t5x-like eval)."""
    from t5x_like import eval as eval_cli
    lengths = config.task_feature_lengths
    argv = [f"--checkpoint={config.model_dir}", f"--task={config.mixture_or_task_name}",
            f"--targets_length={lengths['targets']}"]
    if "inputs" in lengths:
        argv.append(f"--inputs_length={lengths['inputs']}")
    return eval_cli.main(argv)


# -- command line --------------------------------------------------------------------
def _flags(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="t5x-like train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model from gin files.\n\n" + __doc__.split("\n\n")[1],
        epilog="gin: --gin_file=PATH (repeatable), --gin.NAME=VALUE (repeatable). "
               "Required macros: " + ", ".join(REQUIRED_MACROS) + ". See docs/training.md.")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--multihost", action="store_true", help="jax.distributed auto-detection (TPU pod, SLURM)")
    p.add_argument("--cpu_devices", type=int, default=None, help="fake CPU devices per process (testing)")
    p.add_argument("--compilation_cache_dir", default=None,
                   help="persistent XLA compilation cache (restarts skip recompiling)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _import_configurables() -> None:
    """Registers every gin configurable a run file may bind, before parsing."""
    import t5x_like.checkpoints  # noqa: F401
    import t5x_like.config  # noqa: F401
    import t5x_like.data  # noqa: F401  (tasks register gin configurables)
    import t5x_like.decoding  # noqa: F401  (DecodeConfig, for infer runs)
    import t5x_like.metrics_log  # noqa: F401
    import t5x_like.models  # noqa: F401


def parse_gin(argv: list[str]) -> list[str]:
    """Parses gin flags; checks required macros. Returns the remaining arguments."""
    files, bindings, rest = gin_utils.split_gin_args(argv)
    _import_configurables()
    gin_utils.parse(files, bindings)
    for name in REQUIRED_MACROS:
        gin_utils.query_macro(name)
    return rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _flags(["--help"])  # prints usage and exits
    try:
        rest = parse_gin(argv)
        flags = _flags(rest)
    except gin_utils.GinConfigError as e:
        print(f"t5x-like train: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if flags.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if flags.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", flags.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    if flags.cpu_devices:
        jax.config.update("jax_num_cpu_devices", flags.cpu_devices)
    partitioning.initialize_distributed(flags.coordinator_address, flags.num_processes, flags.process_id,
                                        auto=flags.multihost)
    try:
        config = TrainConfig()
        mode = run_mode()
        config.validate()
        check_task_name(config.mixture_or_task_name)
    except (ValueError, TypeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"t5x-like train: {message}", file=sys.stderr)
        return 2
    try:
        if mode == "eval":
            evaluate_checkpoint(config)
            return 0
        if mode == "infer":
            return infer_checkpoint(config)
        result = train(config)
    except NonFiniteLossError:
        return 3
    if jax.process_index() == 0:
        with open(os.path.join(config.model_dir, "operative_config.gin"), "w") as f:
            f.write(gin.operative_config_str())
    return 143 if result.stopped_by_signal else 0

