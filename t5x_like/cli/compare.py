"""`t5x-like compare`: run an experiment's grid of training runs and write its report.

    t5x-like compare --gin_file=gin_configs/experiments/quick.gin --gin.OUTPUT_DIR=out/quick
    t5x-like compare --gin_file=... --check_only     # verify the matching claims, train nothing
    t5x-like compare --gin_file=... --report_only    # rebuild the report from finished runs

The experiment file binds `compare.Experiment` (experiments/spec.py). Each arm's
files and bindings are parsed here once (`load_arm`); its cells' TrainConfigs
are made from that one in Python (experiments/cells.py).
Rerunning the command resumes an interrupted grid; finished runs are kept.
Within one invocation the seeds of an arm (and arms of the same model and
shapes) share compiled train, eval and scoring programs (experiments.cells.GridCache).
Compiled programs are also cached on disk (OUTPUT_DIR/jax_cache unless
--compilation_cache_dir says otherwise; '' disables it) for a rerun.
A report states only what the runs did: finished runs made with another
configuration (a changed TRAIN_STEPS, say) are refused, not reused; runs not
finished yet are named in the report.
Exit codes: 0 done, 2 bad experiment file, a matching claim that does not
hold, finished runs of another configuration, or --report_only with no
finished run; 4 OUTPUT_DIR in use by another `t5x-like compare` (each grid
holds OUTPUT_DIR/.lock while it trains) or not writable; 130 / 143 stopped
by SIGINT / SIGTERM (every running cell saved a checkpoint).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys

import jax

from t5x_like.cli import configurables, gin_loading
from t5x_like.cli.train import use_compilation_cache
from t5x_like.data import settings as data_settings
from t5x_like.experiments import cells, claims, grid, prompted_eval, report, spec, threaded
from t5x_like.training import run as train_lib
from t5x_like.training import run_dir

EXIT_OUTPUT_DIR_UNUSABLE = 4


def load_experiment(gin_files: list[str], bindings: list[str]) -> spec.Experiment:
    """The Experiment an experiment gin file binds (plus --gin.X=V bindings)."""
    gin_loading.load_config(gin_files, bindings, finalize=False)
    try:
        return configurables.configured_experiment()
    except TypeError as e:  # a required field (name, output_dir) is not bound
        raise ValueError(f"compare.Experiment: {e}") from None
    except ValueError as e:  # the experiment's own checks; gin appends "In call to configurable ..."
        raise ValueError(str(e).strip().splitlines()[0]) from None


# Per-cell values (cells.cell_config sets them on each cell's TrainConfig): placeholders while
# an arm is parsed, so its required macros are bound.
PER_CELL_PLACEHOLDERS = ("MODEL_DIR = ''", "TASK_FEATURE_LENGTHS = {'targets': 1}", "SEED = 0")


def load_arm(experiment: spec.Experiment, arm: spec.Arm, settings: spec.RunSettings) -> cells.ArmRun:
    """An arm's runs as gin gives them, parsed once: its model file + the run file, the experiment's
    run bindings, the arm's, then the experiment's run settings as the run file's macros."""
    bindings = [*experiment.run_bindings, *arm.bindings, *_run_settings_bindings(settings), *PER_CELL_PLACEHOLDERS]
    argv = [f"--gin_file={arm.model}", f"--gin_file={grid.PRETRAIN_GIN}", *(f"--gin.{b}" for b in bindings)]
    try:
        config, _, _ = gin_loading.train_config_from_args(argv)
    except gin_loading.GinConfigError as e:
        raise ValueError(f"arm {arm.name}: {e}") from None
    return cells.ArmRun(config, data_settings.current(), functools.partial(cell_command, experiment, arm, settings))


def _run_settings_bindings(settings: spec.RunSettings) -> list[str]:
    return [f"MIXTURE_OR_TASK_NAME={settings.task!r}", f"TRAIN_STEPS={settings.train_steps}",
            f"BATCH_SIZE={settings.batch_size}", f"EVAL_PERIOD={settings.eval_period}",
            f"CHECKPOINT_PERIOD={settings.checkpoint_period}"]


def cell_command(experiment: spec.Experiment, arm: spec.Arm, settings: spec.RunSettings,
                 config: train_lib.TrainConfig) -> str:
    """The `t5x-like train` command that trains the same run as a cell's config (for the report;
    never parsed back)."""
    bindings = [*experiment.run_bindings, *arm.bindings, f"MODEL_DIR={config.model_dir!r}",
                f"MIXTURE_OR_TASK_NAME={settings.task!r}", f"TASK_FEATURE_LENGTHS={config.task_feature_lengths!r}",
                f"TRAIN_STEPS={settings.train_steps}", f"SEED={config.seed}", f"BATCH_SIZE={settings.batch_size}",
                f"EVAL_PERIOD={settings.eval_period}", f"CHECKPOINT_PERIOD={settings.checkpoint_period}"]
    if arm.init_from:
        bindings.append(f"TrainConfig.init_checkpoint={config.init_checkpoint!r}")
    words = [f"--gin_file={arm.model}", f"--gin_file={grid.PRETRAIN_GIN}", *(f"--gin.{b}" for b in bindings)]
    return "t5x-like train " + " ".join(words)


def default_cells_at_once() -> int:
    """2 on a CPU host with 2 or more cores (what one cell does between its steps leaves a
    core idle), else 1: on an accelerator, cells at once would share its memory, and with
    several processes cells in threads could enter collectives in different orders."""
    single_cpu_process = jax.default_backend() == "cpu" and jax.process_count() == 1
    return 2 if single_cpu_process and (os.cpu_count() or 1) >= 2 else 1


def main(argv: list[str] | None = None) -> int:
    files, bindings, rest = gin_loading.split_gin_args(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="t5x-like compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from finished runs")
    parser.add_argument("--check_only", action="store_true", help="verify the matching claims and exit")
    parser.add_argument("--compilation_cache_dir", default=None,
                        help="persistent XLA compilation cache (default OUTPUT_DIR/jax_cache; '' disables)")
    parser.add_argument("--cells_at_once", type=int, default=None,
                        help="grid cells trained at a time, in threads (default: 2 on a CPU with 2 or more "
                             "cores, else 1); the records are the same for any value")
    args = parser.parse_args(rest)
    if not files:
        parser.error("give --gin_file=gin_configs/experiments/<name>.gin")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        experiment = load_experiment(files, bindings)
        arm_runs = grid.load_arm_runs(experiment, load_arm)
        size_rows = claims.sizes(experiment, {name: run.config.model.config for name, run in arm_runs.items()})
        failures = claims.check_claims(experiment, size_rows)
    except ValueError as e:
        print(f"t5x-like compare: {e}", file=sys.stderr)
        return 2
    if failures:
        print("t5x-like compare: matching claims do not hold:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 2
    if args.check_only:
        print(f"{experiment.name}: all matching claims hold within {experiment.claim_tolerance:.0%}")
        return 0
    stale = cells.stale_cells(experiment, arm_runs)
    if stale:
        print(f"t5x-like compare: {len(stale)} finished run(s) were made with another configuration than this "
              f"command gives: {'; '.join(stale)}. Delete them under {experiment.output_dir}/runs/ to rerun, "
              "or use another OUTPUT_DIR", file=sys.stderr)
        return 2
    if (args.cells_at_once or 1) > 1 and jax.process_count() > 1:
        print(f"t5x-like compare: --cells_at_once={args.cells_at_once} trains cells in threads of one process; "
              f"with {jax.process_count()} processes use --cells_at_once=1", file=sys.stderr)
        return 2
    if not args.report_only:
        use_compilation_cache(os.path.join(experiment.output_dir, "jax_cache")
                              if args.compilation_cache_dir is None else args.compilation_cache_dir)
    try:
        if args.report_only:
            records = grid.load_records(experiment)
        else:
            with run_dir.exclusive(experiment.output_dir, name="OUTPUT_DIR"):  # one grid at a time there
                records = grid.run_grid(experiment, arm_runs, args.cells_at_once or default_cells_at_once())
                if prompted_eval.wanted(experiment):
                    prompted_eval.run_phase(experiment, arm_runs, records)
    except threaded.GridStopped as e:
        print(f"t5x-like compare: {e}", file=sys.stderr)
        return 128 + (e.signal_number or signal.SIGINT)
    except (run_dir.RunDirLockedError, run_dir.RunDirUnusableError) as e:
        print(f"t5x-like compare: {e}", file=sys.stderr)
        return EXIT_OUTPUT_DIR_UNUSABLE
    if not records:
        print(f"t5x-like compare: no finished runs under {experiment.output_dir}/runs: run without "
              "--report_only first", file=sys.stderr)
        return 2
    outputs = report.write_report(experiment, size_rows, records)
    print("wrote " + ", ".join(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
