"""Resume cost: time from process start to the first new step, at step 20 and at step 20,000.

    python benchmarks/resume.py [--repeats 3] [--out benchmarks/results/resume.json]

One tiny decoder-only run (d_model 32, 2 layers) on packed Shakespeare
(shakespeare_causal_lm, 128 targets, batch 8). Its step-20 checkpoint is made by
training; the step-20,000 checkpoint holds the same parameters with the input
stream advanced by 20,000 batches (drawn once here, outside the timings). Each
measurement copies the checkpoint to a fresh MODEL_DIR and times a new process
that resumes and trains one step (process start to exit, so interpreter start,
imports, compilation and the final save are included, the same in every row).

Rows: resume at 20 and at 20,000 with the saved stream position (what runs do),
and at 20,000 replaying the stream from its start (what they did before the
position was saved; the same as a stream that cannot save its position).
The ratio 20,000 / 20 is the figure of merit (target <= 1.5).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TASK = "shakespeare_causal_lm"
LENGTHS = {"targets": 128}
BATCH = 8
STEPS = (20, 20_000)


def run_config(model_dir: str, train_steps: int, **overrides):
    from t5x_like.model import model as models
    from t5x_like.model.config import TransformerConfig
    from t5x_like.training import optimizers
    from t5x_like.training import run as train
    model = models.Model(TransformerConfig(layout="decoder_only", vocab_size=384, d_model=32, num_heads=4,
                                           head_dim=8, d_ff=64, num_decoder_layers=2))
    base = dict(model=model, model_dir=model_dir, mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                train_steps=train_steps, batch_size=BATCH, log_period=1, checkpoint_period=10**9,
                eval_split=None, tensorboard=False, async_checkpointing=False,
                optimizer=optimizers.adamw(learning_rate=1e-3))
    return train.TrainConfig(**{**base, **overrides})


def replaying_dataset_fn(request, model):
    """The stream as a plain generator: it cannot save its position, so a resume replays it."""
    from t5x_like.data import sources
    return (batch for batch in sources.default_dataset_fn(request, model))


def child(model_dir: str, train_steps: int, replay: bool) -> None:
    from t5x_like.training import run as train
    config = run_config(model_dir, train_steps, dataset_fn=replaying_dataset_fn if replay else None)
    train.train(config)


def prepare(workdir: str) -> dict[int, str]:
    """Checkpoint directories at each step of STEPS; returns step -> MODEL_DIR."""
    import jax
    import numpy as np

    from t5x_like.training import partitioning
    from t5x_like.training import run as train
    first = os.path.join(workdir, f"step{STEPS[0]}")
    train.train(run_config(first, STEPS[0]))
    dirs = {STEPS[0]: first}
    config = run_config(first, STEPS[0])
    trainer = train.build_trainer(config, partitioning.make_mesh((1, 1, 1)))
    checkpointer = train.build_checkpointer(config)
    params, opt_state, meta = checkpointer.restore_latest(trainer.abstract_params, trainer.abstract_opt_state)
    checkpointer.close()
    for step in STEPS[1:]:
        later = run_config(os.path.join(workdir, f"step{step}"), step)
        stream = train.make_batches(later, "train", 0, train=True)
        start = time.perf_counter()
        for _ in range(step):
            next(stream)
        print(f"drew {step:,} batches to place the stream in {time.perf_counter() - start:.0f} s", flush=True)
        writer = train.build_checkpointer(later)
        writer.save(step, params, opt_state, {"batches_consumed": step, "seed": later.seed,
                                             "rng": np.asarray(jax.device_get(meta["rng"])).tolist()},
                    batches=stream)
        writer.close()
        shutil.copy(os.path.join(first, "metrics.jsonl"), later.model_dir)
        dirs[step] = later.model_dir
    return dirs


def time_resume(source_dir: str, step: int, replay: bool, workdir: str) -> float:
    target = tempfile.mkdtemp(dir=workdir)
    shutil.copytree(source_dir, target, dirs_exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, os.path.abspath(__file__), "--child", target, str(step + 1)]
    if replay:
        command.append("--replay")
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "resume.json"))
    p.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "STEPS"), help=argparse.SUPPRESS)
    p.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.replay)
        return
    workdir = tempfile.mkdtemp(prefix="resume_bench_")
    try:
        dirs = prepare(workdir)
        rows = []
        for step, replay in [(STEPS[0], False), (STEPS[1], False), (STEPS[1], True)]:
            times = [time_resume(dirs[step], step, replay, workdir) for _ in range(args.repeats)]
            rows.append({"resume_step": step, "stream": "replayed" if replay else "restored",
                         "seconds": times, "median_s": statistics.median(times)})
            print(f"resume at step {step:>6,} ({rows[-1]['stream']:>8}): median {rows[-1]['median_s']:6.2f} s "
                  f"of {', '.join(f'{t:.2f}' for t in times)}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = rows[1]["median_s"] / rows[0]["median_s"]
    replay_ratio = rows[2]["median_s"] / rows[0]["median_s"]
    print(f"ratio step {STEPS[1]:,} / step {STEPS[0]}: {ratio:.2f} with the saved position (target <= 1.5); "
          f"{replay_ratio:.2f} replaying the stream")
    from t5x_like.training import machine
    result = {"task": TASK, "task_feature_lengths": LENGTHS, "batch_size": BATCH, "rows": rows,
              "ratio_restored": ratio, "ratio_replayed": replay_ratio, "machine": platform.machine(),
              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "host": machine.this_machine()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
