"""`t5x-like eval`: metrics of a checkpoint on a task or mixture, as a table and JSON.

    t5x-like eval --checkpoint=/tmp/ft --task=probe_copy
    t5x-like eval --checkpoint=/tmp/ft/checkpoints/500 --task=sentiment_finefood_rank \\
        --split=test --max_examples=200
    t5x-like eval --checkpoint=/tmp/ft --task=translation_en_es_bible --beams=4

The model is rebuilt from the gin config that `t5x-like train` saved in the
model dir (`config.gin`; `--gin_file` / `--gin.NAME=VALUE` add to or override
it), the parameters come from the newest (or the named) checkpoint step.
Feature lengths default to the training run's (`TASK_FEATURE_LENGTHS`);
`--inputs_length/--targets_length` override them (targets = the most tokens
generated). Results go to stdout first, then to
`MODEL_DIR/eval-<task>-<split>-step<step>.json` (or `--output`). A report
that cannot be written (a read-only MODEL_DIR) costs nothing computed: the
metrics are already printed, one line on stderr says where the JSON could not
go (pass `--output=PATH` elsewhere), and the exit code stays 0.
Exit codes: 0 ok (metrics printed), 2 bad input (empty checkpoint dir,
mismatched checkpoint, unknown task or split).
"""
from __future__ import annotations

import argparse
import logging
import sys

from t5x_like.cli import gin_loading
from t5x_like.data.task_vocab import check_model_vocab_size
from t5x_like.inference import decoding, evaluation


def _flags(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="t5x-like eval", description=__doc__.split("\n\n")[0],
                                epilog="gin: --gin_file=PATH, --gin.NAME=VALUE add to the saved model config")
    p.add_argument("--checkpoint", required=True, help="MODEL_DIR, MODEL_DIR/checkpoints or a step folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="a registered seqio task")
    which.add_argument("--mixture", help="a registered seqio mixture (each subtask is reported)")
    p.add_argument("--split", default="validation")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_examples", type=int, default=None, help="first N examples of each task")
    p.add_argument("--inputs_length", type=int, default=None)
    p.add_argument("--targets_length", type=int, default=None)
    p.add_argument("--beams", type=int, default=1, help="1: greedy; >1: beam search")
    p.add_argument("--length_penalty", type=float, default=0.6)
    p.add_argument("--output", default=None, help="JSON path (default: in the model dir)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    rows = [(task, name, value) for task, values in sorted(metrics.items()) for name, value in values.items()]
    if not rows:
        return "(no metrics)"
    width_task = max(len("task"), *(len(r[0]) for r in rows))
    width_name = max(len("metric"), *(len(r[1]) for r in rows))
    lines = [f"{'task'.ljust(width_task)}  {'metric'.ljust(width_name)}  value",
             f"{'-' * width_task}  {'-' * width_name}  {'-' * 10}"]
    for task, name, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{task.ljust(width_task)}  {name.ljust(width_name)}  {shown}")
    return "\n".join(lines)


def print_and_write(done: evaluation.CheckpointEvaluation, name: str, split: str,
                    loaded: evaluation.LoadedCheckpoint, prog: str = "t5x-like eval",
                    elsewhere: str = " (--output=PATH writes it elsewhere)") -> None:
    """The metrics on stdout, then the JSON report written, or one line on stderr saying where it
    could not be (the metrics are kept either way)."""
    print(f"{name} [{split}] at step {loaded.step} of {loaded.model_dir} ({done.seconds:.1f} s)")
    print(metrics_table(done.result.metrics), flush=True)
    try:
        print(f"wrote {done.write()}")
    except OSError as e:
        print(f"{prog}: could not write the report to {done.output}: {e.strerror or e}; the metrics are "
              f"printed above{elsewhere}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        gin_files, gin_bindings, rest = gin_loading.split_gin_args(argv)
    except gin_loading.GinConfigError as e:
        print(f"t5x-like eval: {e}", file=sys.stderr)
        return 2
    flags = _flags(rest)
    logging.basicConfig(level=logging.INFO if flags.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = flags.task or flags.mixture
    try:
        evaluation.check_split(name, flags.split)
        loaded = gin_loading.load_checkpoint_with_overrides(flags.checkpoint, gin_files, gin_bindings)
        check_model_vocab_size(name, loaded.model.config.vocab_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"t5x-like eval: {e}", file=sys.stderr)
        return 2
    lengths = dict(loaded.task_feature_lengths) or None
    if flags.inputs_length or flags.targets_length:
        lengths = dict(lengths or {})
        if flags.inputs_length:
            lengths["inputs"] = flags.inputs_length
        if flags.targets_length:
            lengths["targets"] = flags.targets_length
    config = decoding.DecodeConfig(method="beam" if flags.beams > 1 else "greedy", num_beams=flags.beams,
                                   length_penalty=flags.length_penalty)
    try:
        done = evaluation.evaluate_checkpoint(
            loaded, name, flags.split, lengths, flags.batch_size, config, flags.max_examples, flags.output)
    except ValueError as e:
        print(f"t5x-like eval: {e}", file=sys.stderr)
        return 2
    print_and_write(done, name, flags.split, loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
