"""`t5x-like analyze-attention`: rank and entropy of every head of a trained model.

    t5x-like analyze-attention --checkpoint=MODEL_DIR [--checkpoint=OTHER_DIR ...] \
        --task=shakespeare_prefix_lm [--split=validation] [--examples=32] [--out=DIR]

Runs each checkpoint on the same validation examples of the task, collects
the attention matrix of every self-attention head and layer, and writes
attention_analysis.json (every head × example row and the per-mask-kind
summary) and attention_analysis.png into --out (default MODEL_DIR). It
prints whether bidirectional heads are lower-rank than causal ones, as
measured. Statistics and their tolerances: inference/attention_analysis.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from t5x_like.cli import gin_loading
from t5x_like.data.objectives import matched_feature_lengths
from t5x_like.data.pipeline import get_dataset
from t5x_like.inference import attention_analysis


def _batches(loaded, task: str, split: str, examples: int, batch_size: int = 8):
    layout = loaded.model.config.layout
    lengths = loaded.task_feature_lengths or matched_feature_lengths(layout, 96, 32)
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
    parser.add_argument("--task", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--out", help="output directory (default: the model dir)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    rows, steps = [], {}
    try:
        for checkpoint in args.checkpoint:
            loaded = gin_loading.load_checkpoint(checkpoint)
            steps[checkpoint] = loaded.step
            for row in attention_analysis.analyze(loaded.model, loaded.params,
                                                  _batches(loaded, args.task, args.split, args.examples)):
                rows.append({"checkpoint": checkpoint, **row})
    except (ValueError, FileNotFoundError) as e:
        print(f"t5x-like analyze-attention: {e}", file=sys.stderr)
        return 2
    summary = attention_analysis.summarize(rows)
    out = args.out or loaded.model_dir  # default: the last checkpoint's model dir
    os.makedirs(out, exist_ok=True)
    sentence = attention_analysis.verdict(summary)
    with open(os.path.join(out, "attention_analysis.json"), "w") as f:
        json.dump({"checkpoint_steps": steps, "task": args.task, "summary": summary,
                   "verdict": sentence, "rows": rows}, f, indent=1)
    plot(summary, os.path.join(out, "attention_analysis.png"))
    print(f"{'mask':<14} {'heads×ex':>8} {'rank/L':>7} {'eff.rank':>8} {'entropy':>8} {'L':>5}")
    for kind, s in summary.items():
        print(f"{kind:<14} {s['heads_x_examples']:>8} {s['relative_rank']:>7.3f} {s['effective_rank']:>8.2f} "
              f"{s['row_entropy']:>8.3f} {s['length']:>5.0f}")
    print(sentence)
    return 0


if __name__ == "__main__":
    sys.exit(main())
