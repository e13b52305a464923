"""Seeds stacked in one train step vs the same seeds' lone steps, on whatever device JAX has.

    python benchmarks/stacked_step.py                                  # quick.gin's tiny arms, S = 2, 4
    python benchmarks/stacked_step.py --seeds 2,4,8 --layouts decoder_only --out /tmp/stacked.json

For each layout (gin_configs/models/<layout>/tiny.gin, quick.gin's shapes: batch 16,
96 input + 32 target positions, Adafactor as quick.gin's runs) and each number of
seeds S, one process times, interleaved twice:
  lone      S seeds' states, each stepped by the lone `Trainer.train_step` in turn
            (what the sequential grid does, one cell at a time);
  threads   the same S lone steps from S Python threads at once (the grid's cells in
            threads, `--cells_at_once`);
  unrolled  the stacked step's CPU form: the lone step once per seed in one program;
  vmap      the stacked step's accelerator form: `jax.vmap` of the lone step.
Reported: seed-steps per second of each, each one's ratio to `lone`, and whether
`unrolled` left every seed's parameters bitwise equal to its lone steps' after the
timed steps. Only ratios from one invocation mean much on a shared machine; the
JSON records the machine (training/machine.py). The same script is the device check
of issue 29 (on a GPU the tiny model leaves the chip idle, which `vmap` should fill).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"inputs": 96, "targets": 32}  # quick.gin's


def build_trainer(layout: str, batch_size: int):
    import jax

    from t5x_like.cli import gin_loading
    from t5x_like.model import model as models
    from t5x_like.model.features import matched_feature_lengths
    from t5x_like.training import optimizers, partitioning
    from t5x_like.training.trainer import Trainer
    model = models.Model(gin_loading.model_config_from_file(f"gin_configs/models/{layout}/tiny.gin", []))
    schedule = optimizers.inverse_sqrt_schedule(peak_learning_rate=0.01, warmup_steps=100)
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    lengths = matched_feature_lengths(layout, LENGTHS["inputs"], LENGTHS["targets"])
    return Trainer(model, optimizers.adafactor(learning_rate=schedule), mesh, partitioning.logical_axis_rules(),
                   batch_size=batch_size, task_feature_lengths=lengths)


def random_batch(trainer, seed: int) -> dict:
    import numpy as np
    rng = np.random.default_rng(seed)
    batch = {}
    for name, value in trainer.dummy_batch.items():
        value = np.asarray(value)
        tokens = "token" in name and value.dtype.kind in "iu"
        batch[name] = (rng.integers(1, trainer.model.config.vocab_size, value.shape) if tokens
                       else np.ones(value.shape)).astype(value.dtype)
    return batch


def time_sides(trainer, seeds: int, steps: int) -> dict:
    import jax
    import numpy as np

    from t5x_like.training import stacked
    batches = [random_batch(trainer, seed) for seed in range(seeds)]
    stacked_batch = stacked.stack(batches)

    def fresh_states():
        return [trainer.init_state(trainer.init_params(seed)) for seed in range(seeds)]

    def lone(states):
        for _ in range(steps):
            states = [trainer.train_step(state, batch)[0] for state, batch in zip(states, batches)]
        return jax.block_until_ready(states)

    def threads(states):
        def run(index):
            for _ in range(steps):
                states[index] = trainer.train_step(states[index], batches[index])[0]
            jax.block_until_ready(states[index])
        workers = [threading.Thread(target=run, args=(index,)) for index in range(seeds)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return states

    def stacked_side(step):
        def side(states):
            state = stacked.stack(states)
            for _ in range(steps):
                state, _ = step(state, stacked_batch)
            return [stacked.seed_slice(jax.block_until_ready(state), index) for index in range(seeds)]
        return side

    forms = {}
    for form in ("unrolled", "vmap"):
        trainer._stacked = {}  # noqa: SLF001  (a fresh stacked step in each form)
        trainer.stacked_form = lambda form=form: form
        forms[form] = trainer.stacked_train_step()
    sides = {"lone": lone, "threads": threads, "unrolled": stacked_side(forms["unrolled"]),
             "vmap": stacked_side(forms["vmap"])}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    final = {}
    for name, side in sides.items():  # compile and warm up
        side(fresh_states())
    for _ in range(2):
        for name, side in sides.items():
            states = fresh_states()
            start = time.perf_counter()
            final[name] = side(states)
            seconds[name].append(time.perf_counter() - start)
    bitwise = all(np.array_equal(np.asarray(a), np.asarray(b))
                  for mine, lone_state in zip(final["unrolled"], final["lone"])
                  for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(lone_state.params)))
    rates = {name: seeds * steps / min(times) for name, times in seconds.items()}
    return {"seeds": seeds, "steps": steps, "seed_steps_per_sec": rates,
            "ratio_to_lone": {name: rate / rates["lone"] for name, rate in rates.items()},
            "unrolled_bitwise_equal_to_lone": bitwise}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default="decoder_only,encoder_decoder")
    p.add_argument("--seeds", default="2,4", help="numbers of seeds stacked")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side and repeat")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "stacked_step.json"))
    args = p.parse_args(argv)
    os.chdir(REPO)
    sys.path.insert(0, REPO)
    import jax

    from t5x_like.training import machine
    results = {"device": jax.devices()[0].device_kind, "load_average_before": os.getloadavg(), "runs": []}
    for layout in args.layouts.split(","):
        trainer = build_trainer(layout, args.batch_size)
        for seeds in (int(s) for s in args.seeds.split(",")):
            row = {"layout": layout, **time_sides(trainer, seeds, args.steps)}
            results["runs"].append(row)
            print(f"{layout:16s} S={seeds}  seed-steps/s: "
                  + "  ".join(f"{name} {rate:7.2f} ({row['ratio_to_lone'][name]:.2f}x)"
                              for name, rate in row["seed_steps_per_sec"].items())
                  + f"  unrolled bitwise = lone: {row['unrolled_bitwise_equal_to_lone']}", flush=True)
    results["load_average_after"] = os.getloadavg()
    results["machine"] = machine.this_machine()
    print(f"{machine.machine_line(results['machine'])}; load average {results['load_average_before']} -> "
          f"{results['load_average_after']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
