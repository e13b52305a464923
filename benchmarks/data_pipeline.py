"""Throughput of each pretraining input pipeline on this machine.

    python benchmarks/data_pipeline.py [--batches 40] [--out benchmarks/results/data_pipeline.json]

For each objective on the Shakespeare train split: the model length is 512,
batch 8, packed, the layout the objective is usually paired with. Reports
non-padding tokens per second (positions with a token in any model input
stream: encoder inputs plus decoder targets) after one warm-up batch, which
absorbs graph building and the shuffle buffer fill.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (task, layout, task_feature_lengths); every one gives the model 512 positions
# per stream (the encoder-decoder ones: 512 encoder, and 114 or 512 decoder).
PIPELINES = {
    "causal_lm": ("shakespeare_causal_lm", "decoder_only", {"targets": 512}),
    "prefix_lm": ("shakespeare_prefix_lm", "prefix_lm", {"inputs": 256, "targets": 256}),
    "span_corruption": ("shakespeare_span_corruption", "encoder_decoder", {"inputs": 512, "targets": 114}),
    "mlm": ("shakespeare_mlm", "encoder_only", {"inputs": 512, "targets": 512}),
    "ul2": ("shakespeare_ul2", "encoder_decoder", {"inputs": 512, "targets": 512}),
}
TOKEN_STREAMS = ("encoder_input_tokens", "decoder_target_tokens")


def measure(task: str, layout: str, lengths: dict[str, int], batch_size: int, batches: int) -> dict:
    from t5x_like.data import get_dataset

    start = time.perf_counter()
    iterator = get_dataset(task, lengths, "train", layout, batch_size=batch_size, shuffle=True,
                           seed=0, num_epochs=None).as_numpy_iterator()
    next(iterator)
    warmup = time.perf_counter() - start
    tokens = positions = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        for key in TOKEN_STREAMS:
            if key in batch:
                tokens += int((batch[key] > 0).sum())
                positions += batch[key].size
    seconds = time.perf_counter() - start
    return {"task": task, "layout": layout, "task_feature_lengths": lengths, "batch_size": batch_size,
            "batches": batches, "tokens_per_second": tokens / seconds,
            "examples_per_second": batches * batch_size / seconds,
            "non_padding_fraction": tokens / positions, "first_batch_seconds": warmup}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--only", nargs="*", choices=sorted(PIPELINES), default=None)
    parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = parser.parse_args(argv)
    results = {}
    for name in args.only or PIPELINES:
        task, layout, lengths = PIPELINES[name]
        results[name] = measure(task, layout, lengths, args.batch_size, args.batches)
        r = results[name]
        print(f"{name:16s} {r['tokens_per_second']:>10,.0f} tokens/s  {r['examples_per_second']:7.1f} rows/s  "
              f"non-padding {r['non_padding_fraction']:.0%}  first batch {r['first_batch_seconds']:.1f}s",
              flush=True)
    from t5x_like.training import machine
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **machine.this_machine()},
                   "results": results}, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
