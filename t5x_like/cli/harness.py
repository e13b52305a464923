"""`t5x-like harness`: EleutherAI's lm-evaluation-harness on a checkpoint of any layout.

    t5x-like harness --model_dir=/tmp/run --tasks=my_task --include_path=tasks/ --limit=200
    t5x-like harness --model_dir=/tmp/gpt2 --tasks=lambada_openai,hellaswag --num_fewshot=0 \\
        --batch_size=16 --output_path=results/

Flags follow lm-eval's own names. The model is rebuilt from MODEL_DIR's saved
model_config.json (`--gin_file` / `--gin.NAME=VALUE` override it, as for
`t5x-like eval`); an imported Hugging Face model brings its tokenizer. How
each layout reads a request is inference/harness.py's table (docs/evaluation.md).
The results table goes to stdout, then lm-eval's results JSON (the same keys
`lm_eval` writes) to `--output_path` (a directory, or a FILE.json that gets the
date in its name, as lm-eval does). Everything is offline: tasks read local
files (`dataset_path: json`) or the Hugging Face datasets cache.
Exit codes: 0 ok, 2 bad input (unknown task, a YAML that does not parse, a
checkpoint the adapter cannot score, a request that cannot fit), 3 lm-eval is
not installed.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Any

from t5x_like.cli import gin_loading

EXIT_BAD_INPUT = 2
EXIT_NOT_INSTALLED = 3


def _flags(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="t5x-like harness", description=__doc__.split("\n\n")[0],
                                epilog="gin: --gin_file=PATH, --gin.NAME=VALUE add to the saved model config")
    p.add_argument("--model_dir", required=True, help="MODEL_DIR, MODEL_DIR/checkpoints or a step folder")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task or group names")
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--limit", type=float, default=None, help="examples per task (< 1: a fraction)")
    p.add_argument("--include_path", default=None, help="a directory of task YAMLs")
    p.add_argument("--output_path", default=None, help="results JSON: a directory or FILE.json")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_length", type=int, default=None,
                   help="positions per stack (default: the lengths the model was trained at)")
    p.add_argument("--prefix_context", choices=("bidirectional", "causal"), default="bidirectional",
                   help="prefix-LM: the context as the bidirectional prefix, or scored causally")
    p.add_argument("--truncation", choices=("left", "error"), default="left",
                   help="a request longer than the model: drop its context's first tokens, or refuse it")
    p.add_argument("--max_gen_toks", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="lm-eval's few-shot and sampling seed")
    p.add_argument("--log_samples", action="store_true", help="also write every request's output")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        gin_files, gin_bindings, rest = gin_loading.split_gin_args(argv)
    except gin_loading.GinConfigError as e:
        return _refuse(e)
    flags = _flags(rest)
    logging.basicConfig(level=logging.INFO if flags.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("t5x-like harness: lm-eval is not installed: bash launch/setup.sh (or pip install -e '.[eval]')",
              file=sys.stderr)
        return EXIT_NOT_INSTALLED
    from t5x_like.inference import evaluation, harness  # deferred: lm-eval, seqio and TensorFlow, after the flags parse
    try:
        task_manager = _task_manager(flags.include_path)
        names = _check_tasks([n for n in flags.tasks.split(",") if n], task_manager)
        loaded = gin_loading.load_checkpoint_with_overrides(flags.model_dir, gin_files, gin_bindings)
        vocabulary, start_token = harness.vocabulary_of(loaded)
        lm = harness.HarnessLM(
            loaded.model, loaded.params, vocabulary, batch_size=flags.batch_size, max_length=flags.max_length,
            task_feature_lengths=loaded.task_feature_lengths, start_token=start_token,
            prefix_context=flags.prefix_context, truncation=flags.truncation, max_gen_toks=flags.max_gen_toks,
            seed=flags.seed)
        results, tracker = _evaluate(lm, names, flags, task_manager)
    except (ValueError, FileNotFoundError, evaluation.CheckpointError) as e:
        return _refuse(e)
    _report(results, tracker, flags, loaded)
    return 0


def _refuse(error: Exception) -> int:
    print(f"t5x-like harness: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _task_manager(include_path: str | None):
    """lm-eval's TaskManager over its own tasks and `include_path`; ValueError naming a YAML
    there that does not parse (lm-eval would skip it without a word)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml
    if include_path is not None:
        if not os.path.isdir(include_path):
            raise ValueError(f"--include_path={include_path}: not a directory of task YAMLs")
        for root, _, files in os.walk(include_path):
            for name in sorted(f for f in files if f.endswith((".yaml", ".yml"))):
                path = os.path.join(root, name)
                try:
                    load_yaml(path, resolve_func=False)
                except Exception as e:  # yaml's errors span lines: keep the first
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ValueError(f"{path} does not parse as a task YAML ({first}): fix or remove it") from None
    return TaskManager(include_path=include_path)


def _check_tasks(names: list[str], task_manager) -> list[str]:
    if not names:
        raise ValueError("--tasks is empty: name one or more lm-eval tasks, comma-separated")
    known = set(task_manager.all_tasks)
    unknown = [n for n in names if n not in known and not task_manager.match_tasks([n])]
    if unknown:
        hints = {n: difflib.get_close_matches(n, known, n=3) for n in unknown}
        said = "; ".join(f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
        raise ValueError(f"unknown task {said}: `lm-eval ls tasks` lists lm-eval's, --include_path=DIR adds yours")
    return names


def _evaluate(lm, names: list[str], flags: argparse.Namespace, task_manager) -> tuple[dict, Any]:
    """lm-eval's results, and its tracker (None without --output_path), which writes them."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    limit = flags.limit if flags.limit is None or flags.limit < 1 else int(flags.limit)
    tracker = EvaluationTracker(output_path=flags.output_path) if flags.output_path else None
    results = simple_evaluate(model=lm, tasks=names, num_fewshot=flags.num_fewshot, limit=limit,
                              batch_size=flags.batch_size, task_manager=task_manager, log_samples=flags.log_samples,
                              evaluation_tracker=tracker, random_seed=flags.seed, numpy_random_seed=flags.seed,
                              torch_random_seed=flags.seed, fewshot_random_seed=flags.seed)
    return results, tracker


def _report(results: dict, tracker, flags: argparse.Namespace, loaded) -> None:
    """The table on stdout, then the JSON through lm-eval's own tracker (its file names and keys)."""
    from lm_eval.utils import make_table
    samples = results.pop("samples", None)
    print(f"t5x_like ({loaded.model.config.layout}, step {loaded.step} of {loaded.model_dir}), "
          f"limit: {flags.limit}, num_fewshot: {flags.num_fewshot}, batch_size: {flags.batch_size}")
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    sys.stdout.flush()
    if tracker is None:
        return
    try:
        tracker.save_results_aggregated(results=results, samples=samples if flags.log_samples else None)
        if flags.log_samples:
            for task_name in results["configs"]:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        print(f"wrote lm-eval's results JSON under {flags.output_path}")
    except OSError as e:
        print(f"t5x-like harness: could not write the results under {flags.output_path}: {e.strerror or e}; "
              "the table above has them", file=sys.stderr)
