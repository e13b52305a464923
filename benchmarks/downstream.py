"""Downstream quality of the three layouts at tiny size: pretrain, finetune, evaluate.

    python benchmarks/downstream.py                          # defaults: ~15 min on 2 CPU cores
    python benchmarks/downstream.py --layouts=prefix_lm --pretrain_steps=1000 --finetune_steps=1000

For each layout (gin_configs/models/<layout>/tiny.gin: d_model 64, 2 layers
per stack; the encoder-decoder has 2 + 2):

  1. pretrain on shakespeare_prefix_lm (inputs 96 / targets 32, as the quick
     comparison) for --pretrain_steps (Adafactor, inverse-sqrt, 0.01 peak);
  2. for each downstream task, finetune from that checkpoint (params only,
     fresh optimizer: `TrainConfig.init_checkpoint`, as gin_configs/runs/finetune.gin)
     for --finetune_steps at --finetune_lr (constant, or --finetune_schedule=cosine),
     then evaluate on --split (validation by default) with `evaluation.evaluate` (greedy decoding with the KV cache):
       probe_copy, probe_reverse   exact match (4-16 digits, the registered tasks)
       sentiment_finefood          accuracy of the generated label, next to the
                                   majority-class baseline of the same examples,
                                   and rank-classification accuracy
                                   (sentiment_finefood_rank, scored) of the same params
       translation_en_es_bible     BLEU (short lengths; tiny byte-level models score low)

--sentencepiece=N trains (once, under --work_dir) a SentencePiece model of N
pieces on the pretraining and downstream tasks' train text (`t5x-like vocab`)
and re-registers every task used here with it; lengths are then in pieces.
--sentiment_eval_every=K also evaluates sentiment every K finetuning steps (the
learning curve). The sentiment recipe of tests/test_downstream.py, for every layout
(docs/decoding.md has the figures):

    python benchmarks/downstream.py --tasks=sentiment_finefood --sentencepiece=1000 \
        --split=test --finetune_lr=0.003 --finetune_schedule=cosine --sentiment_steps=600 \
        --out=benchmarks/results/downstream_sentiment.json

Prints a table and writes benchmarks/results/downstream.json (--out). Each
run's checkpoints go under --work_dir (a temporary directory by default).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

LAYOUTS = ("decoder_only", "prefix_lm", "encoder_decoder")
PRETRAIN_OBJECTIVE = "prefix_lm"
PRETRAIN_TASK = f"shakespeare_{PRETRAIN_OBJECTIVE}"
PRETRAIN_LENGTHS = {"inputs": 96, "targets": 32}
TASKS = ("probe_copy", "probe_reverse", "sentiment_finefood", "translation_en_es_bible")


def task_lengths(task: str, args) -> dict[str, int]:
    if task.startswith("probe_"):
        from t5x_like.data import corpora
        kind = task[len("probe_"):]
        digits = max(len(t) for _, t in corpora.probe_examples(kind, "train"))
        return {"inputs": len(f"{kind}: ") + digits + 1, "targets": digits + 1}  # + EOS
    if task == "sentiment_finefood":
        return {"inputs": args.sentiment_inputs_length, "targets": 6}  # "great"/"other" + EOS (bytes)
    if task == "translation_en_es_bible":
        return {"inputs": args.translation_length, "targets": args.translation_length}
    raise ValueError(f"unknown task {task!r}")


def use_sentencepiece(size: int, work_dir: str) -> int:
    """Registers PRETRAIN_TASK and the downstream tasks with a SentencePiece vocabulary
    trained on their text; returns the model's vocab_size (rounded up to 128)."""
    from t5x_like.data import task_sources, tasks, vocab, vocab_training
    path = vocab_training.train_sentencepiece(",".join((PRETRAIN_TASK, "sentiment_finefood", "translation_en_es_bible")), size,
                           os.path.join(work_dir, "vocab"))
    sentencepiece = vocab.sentencepiece_vocabulary(path)
    tasks.register_pretraining_tasks("shakespeare", task_sources.shakespeare_source, sentencepiece, (PRETRAIN_OBJECTIVE,))
    tasks.register_downstream_tasks(sentencepiece)
    return vocab.embedding_rows(sentencepiece)


def model_for(layout: str, vocab_size: int | None = None):
    from t5x_like.cli import gin_loading
    from t5x_like.model import model as models
    config = gin_loading.model_config_from_file(os.path.join(REPO, f"gin_configs/models/{layout}/tiny.gin"), [])
    return models.Model(config.replace(vocab_size=vocab_size) if vocab_size else config)


def run_training(model, model_dir: str, task: str, lengths: dict, steps: int, args, *,
                 learning_rate, init_checkpoint: str | None = None) -> dict:
    from t5x_like.training import optimizers
    from t5x_like.training import run as train
    config = train.TrainConfig(
        model=model, model_dir=model_dir, mixture_or_task_name=task, task_feature_lengths=lengths,
        train_steps=steps, batch_size=args.batch_size, seed=args.seed, pack=False, eval_split=None,
        log_period=max(steps, 1), checkpoint_period=10**9, keep_checkpoints=1, async_checkpointing=False,
        tensorboard=False, init_checkpoint=init_checkpoint,
        optimizer=optimizers.adafactor(learning_rate))
    start = time.perf_counter()
    result = train.train(config)
    return {"steps": result.step, "train_loss": result.train_metrics.get("loss"),
            "seconds": round(time.perf_counter() - start, 1)}


def evaluate_task(model, model_dir: str, task: str, lengths: dict, args) -> dict:
    from t5x_like.data import corpora
    from t5x_like.inference import evaluation
    params = evaluation.load_params(model, model_dir)
    start = time.perf_counter()
    max_examples = args.sentiment_eval_examples if task.startswith("sentiment") else args.eval_examples
    result = evaluation.evaluate(model, params, task, args.split, lengths, batch_size=args.eval_batch_size,
                                 max_examples=max_examples or None)
    metrics = dict(result.metrics[task])
    out = {k: metrics[k] for k in ("exact_match", "accuracy", "bleu", "token_accuracy", "loss", "examples")
           if k in metrics}
    out["shown"] = result.examples.get(task, [])[:2]
    if task == "sentiment_finefood":
        label, share = corpora.finefood_majority_baseline(args.split, max_examples or None)
        out["majority_label"], out["majority_accuracy"] = label, share
        rank = evaluation.evaluate(model, params, "sentiment_finefood_rank", args.split, lengths,
                                   batch_size=args.eval_batch_size, max_examples=2 * max_examples
                                   if max_examples else None)  # two rows (candidates) per example
        out["rank_accuracy"] = rank.metrics["sentiment_finefood_rank"]["accuracy"]
    out["eval_seconds"] = round(time.perf_counter() - start, 1)
    return out


def finetune_schedule(args, steps: int):
    from t5x_like.training import optimizers
    if args.finetune_schedule == "cosine":
        return optimizers.warmup_cosine_schedule(args.finetune_lr, args.finetune_warmup, steps)
    return optimizers.constant_schedule(args.finetune_lr)


def finetune_sentiment(model, task_dir: str, lengths: dict, steps: int, args, init: str | None) -> dict:
    """Finetunes in chunks of --sentiment_eval_every steps (resuming), evaluating after each."""
    every = args.sentiment_eval_every or steps
    curve, entry = [], {}
    for done in sorted({*range(every, steps, every), steps}):
        entry = run_training(model, task_dir, "sentiment_finefood", lengths, done, args,
                             learning_rate=finetune_schedule(args, steps), init_checkpoint=init)
        entry.update(evaluate_task(model, task_dir, "sentiment_finefood", lengths, args))
        curve.append({k: entry.get(k) for k in ("steps", "train_loss", "accuracy", "rank_accuracy")})
        print(f"  sentiment after {done} steps: {json.dumps(curve[-1])}", flush=True)
    entry["curve"] = curve
    return entry


def run_layout(layout: str, args, work_dir: str) -> dict:
    from t5x_like.training import optimizers
    model = model_for(layout, args.vocab_size)
    row: dict = {}
    pretrain_dir = os.path.join(work_dir, layout, "pretrain")
    init = None
    if args.pretrain_steps:
        schedule = optimizers.inverse_sqrt_schedule(args.pretrain_lr, args.pretrain_warmup)
        row["pretrain"] = run_training(model, pretrain_dir, PRETRAIN_TASK, PRETRAIN_LENGTHS,
                                       args.pretrain_steps, args, learning_rate=schedule)
        init = pretrain_dir
        print(f"[{layout}] pretrain {row['pretrain']}", flush=True)
    for task in args.tasks:
        lengths = task_lengths(task, args)
        task_dir = os.path.join(work_dir, layout, task)
        steps = args.sentiment_steps if task.startswith("sentiment") and args.sentiment_steps else \
            args.finetune_steps
        if task == "sentiment_finefood":
            entry = finetune_sentiment(model, task_dir, lengths, steps, args, init)
        else:
            entry = run_training(model, task_dir, task, lengths, steps, args,
                                 learning_rate=finetune_schedule(args, steps), init_checkpoint=init)
            entry.update(evaluate_task(model, task_dir, task, lengths, args))
        entry["lengths"] = lengths
        row[task] = entry
        print(f"[{layout}] {task}: " + json.dumps({k: v for k, v in entry.items() if k != "shown"}), flush=True)
    return row


def fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict) -> str:
    header = ("layout", "pretrain loss", "copy EM", "reverse EM", "sentiment acc", "majority",
              "rank acc", "BLEU", "minutes")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for layout, row in results.items():
        get = lambda task, key: row.get(task, {}).get(key)
        seconds = sum(v.get("seconds", 0) + v.get("eval_seconds", 0) for v in row.values())
        lines.append(" | ".join([
            layout, fmt(get("pretrain", "train_loss"), 3), fmt(get("probe_copy", "exact_match")),
            fmt(get("probe_reverse", "exact_match")), fmt(get("sentiment_finefood", "accuracy")),
            fmt(get("sentiment_finefood", "majority_accuracy")), fmt(get("sentiment_finefood", "rank_accuracy")),
            fmt(get("translation_en_es_bible", "bleu"), 2), fmt(seconds / 60)]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated downstream tasks")
    p.add_argument("--pretrain_steps", type=int, default=300, help="0: finetune from a random init")
    p.add_argument("--pretrain_lr", type=float, default=0.01)
    p.add_argument("--pretrain_warmup", type=int, default=100)
    p.add_argument("--finetune_steps", type=int, default=300)
    p.add_argument("--sentiment_steps", type=int, default=0, help="0: --finetune_steps")
    p.add_argument("--finetune_lr", type=float, default=0.01,
                   help="Adafactor lr (finetune.gin's T5 value 1e-3 is too slow for a few hundred steps)")
    p.add_argument("--finetune_schedule", default="constant", choices=("constant", "cosine"),
                   help="cosine: --finetune_warmup steps up to --finetune_lr, then down to a tenth of it")
    p.add_argument("--finetune_warmup", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="validation")
    p.add_argument("--eval_examples", type=int, default=200, help="per probe / translation; 0: all")
    p.add_argument("--sentiment_eval_examples", type=int, default=0, help="0: all (406 validation reviews)")
    p.add_argument("--eval_batch_size", type=int, default=64)
    p.add_argument("--sentiment_inputs_length", type=int, default=128)
    p.add_argument("--sentiment_eval_every", type=int, default=0, help="0: evaluate sentiment once, at the end")
    p.add_argument("--sentencepiece", type=int, default=0,
                   help="pieces of a SentencePiece vocabulary for every task here; 0: the byte vocabulary")
    p.add_argument("--translation_length", type=int, default=64, help="inputs and targets (bytes)")
    p.add_argument("--work_dir", default=None)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "downstream.json"))
    args = p.parse_args(argv)
    args.layouts = [x for x in args.layouts.split(",") if x]
    args.tasks = [x for x in args.tasks.split(",") if x]
    for name in args.layouts:
        if name not in LAYOUTS:
            p.error(f"unknown layout {name!r}; expected some of {LAYOUTS}")
    for name in args.tasks:
        if name not in TASKS:
            p.error(f"unknown task {name!r}; expected some of {TASKS}")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)
    import t5x_like.data.tasks  # noqa: F401  (registers the tasks)

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="downstream-")
    args.vocab_size = use_sentencepiece(args.sentencepiece, work_dir) if args.sentencepiece else None
    start = time.perf_counter()
    results = {layout: run_layout(layout, args, work_dir) for layout in args.layouts}
    total = time.perf_counter() - start
    print()
    print(table(results))
    print(f"\ntotal {total / 60:.1f} min; checkpoints under {work_dir}")
    from t5x_like.training import machine
    report = {"config": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir", "vocab_size")},
              "pretrain_task": PRETRAIN_TASK, "pretrain_lengths": PRETRAIN_LENGTHS,
              "model": "gin_configs/models/<layout>/tiny.gin", "total_seconds": round(total, 1),
              "machine": machine.this_machine(), "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
