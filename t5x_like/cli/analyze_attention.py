"""`t5x-like analyze-attention`: rank and entropy of every head of a trained model.

    t5x-like analyze-attention --checkpoint=MODEL_DIR [--checkpoint=OTHER_DIR ...] \
        --task=shakespeare_prefix_lm [--split=validation] [--examples=32] [--input_lengths=64,128,256] [--out=DIR]

Runs each checkpoint on the same validation examples of the task, collects
the attention matrix of every self-attention head and layer, and writes
attention_analysis.json (every head × example row, the per-mask-kind
summary, and with --input_lengths one summary per input-block length) and attention_analysis.png into --out (default MODEL_DIR). It
prints whether bidirectional heads are lower-rank than causal ones, as
measured. Statistics and their tolerances: inference/attention_analysis.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from t5x_like.cli import gin_loading
from t5x_like.data import tasks
from t5x_like.model.features import matched_feature_lengths
from t5x_like.data.pipeline import get_dataset
from t5x_like.inference import attention_analysis


def _feature_lengths(loaded, task: str, input_length: int | None) -> dict[str, int]:
    """Lengths for analysing `task` with the loaded model. The analysed block is the input of a
    task with inputs (a prefix-LM's prefix), else the whole sequence (a causal LM's, an MLM
    encoder's); `input_length` sets its size, default the size the run trained with."""
    layout = loaded.model.config.layout
    trained = dict(loaded.task_feature_lengths or matched_feature_lengths(layout, 96, 32))
    whole_sequence = layout == "encoder_only" or not tasks.task_has_inputs(task)
    if whole_sequence:
        n = input_length or (trained["inputs"] if layout == "encoder_only" else sum(trained.values()))
        return matched_feature_lengths(layout, n, 0, task_has_inputs=tasks.task_has_inputs(task))
    return matched_feature_lengths(layout, input_length or trained.get("inputs", 96), trained.get("targets", 32))


def _batches(loaded, task: str, split: str, examples: int, input_length: int | None = None, batch_size: int = 8):
    layout = loaded.model.config.layout
    lengths = _feature_lengths(loaded, task, input_length)
    dataset = get_dataset(task, lengths, split=split, layout=layout, batch_size=batch_size,
                               shuffle=False, seed=0, pack=False, num_epochs=1)
    seen = 0
    for batch in dataset.as_numpy_iterator():
        yield batch
        seen += batch_size
        if seen >= examples:
            return


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = sorted(summary)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for axis, key, title in zip(axes, ("relative_rank", "effective_rank", "row_entropy"),
                                ("rank / length", "effective rank", "row entropy (nats)")):
        axis.bar(kinds, [summary[k][key] for k in kinds], color="tab:blue")
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="t5x-like analyze-attention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, action="append",
                        help="MODEL_DIR or a checkpoint step directory; repeat to pool several models "
                             "(e.g. a decoder-only and a prefix-LM run) into one comparison")
    parser.add_argument("--task", required=True, action="append",
                        help="the task whose validation text is analysed; once for every checkpoint, or once per "
                             "checkpoint in the same order (e.g. a causal LM's task and an MLM's)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--input_lengths", default=None,
                        help="comma-separated input-block lengths to analyse at (e.g. 64,128,256,512: how rank "
                             "changes with n); default: the run's training lengths")
    parser.add_argument("--out", help="output directory (default: the model dir)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        input_lengths = [int(n) for n in args.input_lengths.split(",")] if args.input_lengths else [None]
    except ValueError:
        print(f"t5x-like analyze-attention: --input_lengths={args.input_lengths!r} is not a comma-separated "
              "list of integers, e.g. --input_lengths=64,128,256", file=sys.stderr)
        return 2
    if len(args.task) not in (1, len(args.checkpoint)):
        print(f"t5x-like analyze-attention: {len(args.task)} --task flags for {len(args.checkpoint)} checkpoints; "
              "give one --task for all, or one per --checkpoint", file=sys.stderr)
        return 2
    task_per_checkpoint = args.task * len(args.checkpoint) if len(args.task) == 1 else args.task
    rows, steps, head_dims = [], {}, set()
    try:
        for checkpoint, task in zip(args.checkpoint, task_per_checkpoint):
            loaded = gin_loading.load_checkpoint_with_overrides(checkpoint)
            steps[checkpoint] = loaded.step
            head_dims.add(loaded.model.config.head_dim)
            for input_length in input_lengths:
                batches = _batches(loaded, task, args.split, args.examples, input_length)
                for row in attention_analysis.analyze(loaded.model, loaded.params, batches):
                    rows.append({"checkpoint": checkpoint, "input_length": input_length, **row})
    except (ValueError, FileNotFoundError) as e:
        print(f"t5x-like analyze-attention: {e}", file=sys.stderr)
        return 2
    by_length = {n: attention_analysis.summarize([r for r in rows if r["input_length"] == n]) for n in input_lengths}
    out = args.out or loaded.model_dir  # default: the last checkpoint's model dir
    os.makedirs(out, exist_ok=True)
    verdicts = {n: attention_analysis.verdict(summary) for n, summary in by_length.items()}
    with open(os.path.join(out, "attention_analysis.json"), "w") as f:
        json.dump({"checkpoint_steps": steps, "tasks": dict(zip(args.checkpoint, task_per_checkpoint)),
                   "head_dims": sorted(head_dims),
                   "summary": by_length[input_lengths[-1]], "verdict": verdicts[input_lengths[-1]],
                   "by_input_length": {str(n): {"summary": by_length[n], "verdict": verdicts[n]}
                                       for n in input_lengths},
                   "rows": rows}, f, indent=1)
    plot(by_length[input_lengths[-1]], os.path.join(out, "attention_analysis.png"))
    for n in input_lengths:
        print(f"input block: {'training lengths' if n is None else n} positions; head size {sorted(head_dims)}")
        print(f"{'mask':<14} {'heads×ex':>8} {'rank/L':>7} {'eff.rank':>8} {'eff/L':>6} {'entropy':>8} {'L':>5}")
        for kind, s in by_length[n].items():
            print(f"{kind:<14} {s['heads_x_examples']:>8} {s['relative_rank']:>7.3f} {s['effective_rank']:>8.2f} "
                  f"{s['relative_effective_rank']:>6.3f} {s['row_entropy']:>8.3f} {s['length']:>5.0f}")
        print(verdicts[n])
    return 0


if __name__ == "__main__":
    sys.exit(main())
