"""`t5x-like train` (and `python -m t5x_like.train`): a run from gin files.

    t5x-like train \\
      --gin_file=gin_configs/models/decoder_only/tiny.gin \\
      --gin_file=gin_configs/runs/pretrain.gin \\
      --gin.MODEL_DIR=/tmp/run --gin.MIXTURE_OR_TASK_NAME=shakespeare_causal_lm \\
      --gin.TASK_FEATURE_LENGTHS="{'targets': 128}" --gin.TRAIN_STEPS=1000

The run file's `run_mode.mode` picks the program: 'train' (training/run.train),
'eval' (training/run.eval_checkpoint_loss: teacher-forced loss) or 'infer'
(inference/evaluation.evaluate_checkpoint: generation + task metrics).

Multi-host: `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID variables, or `--multihost` for auto-detection on TPU pods
and SLURM).

Exit codes (each failure is one line on stderr):
  0    done
  2    bad configuration or input (a wrong-typed or out-of-range binding, named;
       a resume with another batch size or sequence length): nothing was
       written to MODEL_DIR
  3    the loss became NaN/inf, or training collapsed (training/guards.py):
       stopped before saving, earlier checkpoints kept
  4    MODEL_DIR unusable: not a writable directory, another run holds it,
       every checkpoint in it is damaged (left in place: every rerun refuses
       until --gin.TrainConfig.start_over_if_checkpoints_damaged=True), or a
       checkpoint could not be written (a full disk)
  143  stopped by SIGTERM after saving a checkpoint (130: SIGINT / Ctrl-C)
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

import gin
import jax

from t5x_like.cli import eval as eval_cli
from t5x_like.cli import gin_loading
from t5x_like.data.corpora import CorpusFormatError
from t5x_like.data.sources import check_task_name
from t5x_like.inference import evaluation
from t5x_like.training import partitioning
from t5x_like.training import run as train_lib
from t5x_like.training.checkpoints import CheckpointSaveError, CheckpointsDamagedError
from t5x_like.training.guards import TrainingDivergedError
from t5x_like.training.run_dir import RunDirLockedError, RunDirUnusableError

EXIT_BAD_CONFIG, EXIT_NON_FINITE, EXIT_RUN_DIR = 2, 3, 4


def _flags(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="t5x-like train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model from gin files.\n\n" + __doc__.split("\n\n")[1],
        epilog="gin: --gin_file=PATH (repeatable), --gin.NAME=VALUE (repeatable). Required macros: "
               + ", ".join(gin_loading.REQUIRED_TRAIN_MACROS) + ". See docs/training.md.")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--multihost", action="store_true", help="jax.distributed auto-detection (TPU pod, SLURM)")
    p.add_argument("--cpu_devices", type=int, default=None, help="fake CPU devices per process (testing)")
    p.add_argument("--compilation_cache_dir", default=None,
                   help="persistent XLA compilation cache (restarts skip recompiling)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def use_compilation_cache(directory: str | None) -> None:
    """Every program compiled from now on is stored in `directory` and reused from it (None or '': off).
    A second call with another directory in one process (two compares in one Python session) moves
    the cache there: jax opens its cache once per process, so it is reset when the directory changes."""
    if directory:
        changed = jax.config.jax_compilation_cache_dir not in (None, directory)
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        if changed:
            from jax._src import compilation_cache  # private: the one way to re-open it elsewhere
            compilation_cache.reset_cache()


def _set_up_jax(flags: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if flags.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not flags.verbose:  # orbax logs a failed save at length; our one line says what and where
        logging.getLogger("absl").setLevel(logging.CRITICAL)
    drop_closed_event_loop_noise()
    use_compilation_cache(flags.compilation_cache_dir)
    if flags.cpu_devices:
        jax.config.update("jax_num_cpu_devices", flags.cpu_devices)
    partitioning.initialize_distributed(flags.coordinator_address, flags.num_processes, flags.process_id,
                                        auto=flags.multihost)


def _silence_stderr_until_exit() -> None:
    """After a failed save, tensorstore still completes the failed writes of other chunks, and
    each completion prints a traceback into orbax's closed event loop (about 100 of them, after
    the one line that says what failed): the process is ending, so its stderr goes to /dev/null."""
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stderr.fileno())
    os.close(devnull)


def drop_closed_event_loop_noise() -> None:
    """A checkpoint read that fails part-way (a zero-byte manifest: the previous step is then used)
    leaves tensorstore reads in flight whose completions call into orbax's closed event loop; each
    raises "Event loop is closed" where nobody can catch it, and Python prints it as a traceback
    (dozens, after the one warning that says what happened). Those, and only those, are dropped."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_event_loop_noise", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)
    hook.drops_closed_event_loop_noise = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def infer(config: train_lib.TrainConfig) -> None:
    """Greedy generation and the task's metrics on the validation split (as `t5x-like eval`), with
    the model saved with the checkpoint (MODEL_DIR/model_config.json), like `t5x-like eval`."""
    loaded = gin_loading.load_checkpoint_with_overrides(config.model_dir)
    done = evaluation.evaluate_checkpoint(loaded, config.mixture_or_task_name, "validation",
                                          dict(config.task_feature_lengths))
    eval_cli.print_and_write(done, config.mixture_or_task_name, "validation", loaded, "t5x-like train", "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _flags(["--help"])  # prints usage and exits
    try:
        config, mode, rest = gin_loading.train_config_from_args(argv)
        flags = _flags(rest)
    except gin_loading.GinConfigError as e:
        print(f"t5x-like train: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    _set_up_jax(flags)
    try:
        config.validate()
        check_task_name(config.mixture_or_task_name)
    except (ValueError, TypeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"t5x-like train: {message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        if mode == "eval":
            train_lib.eval_checkpoint_loss(config)
            return 0
        if mode == "infer":
            infer(config)
            return 0
        result = train_lib.train(config)
    except TrainingDivergedError as e:
        print(f"t5x-like train: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    except (evaluation.CheckpointError, FileNotFoundError, CorpusFormatError) as e:
        print(f"t5x-like train: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (RunDirLockedError, RunDirUnusableError, CheckpointsDamagedError) as e:
        print(f"t5x-like train: {e}", file=sys.stderr)
        return EXIT_RUN_DIR
    except CheckpointSaveError as e:
        print(f"t5x-like train: {e}", file=sys.stderr)
        _silence_stderr_until_exit()
        return EXIT_RUN_DIR
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"t5x-like train: writing to {config.model_dir} failed: {e.strerror} ({e.filename or ''})",
              file=sys.stderr)
        return EXIT_RUN_DIR
    if jax.process_index() == 0:
        with open(os.path.join(config.model_dir, "operative_config.gin"), "w") as f:
            f.write(gin.operative_config_str())
    return 128 + result.signal_number if result.stopped_by_signal and result.signal_number else 0


if __name__ == "__main__":
    sys.exit(main())
