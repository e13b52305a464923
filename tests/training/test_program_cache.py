"""Compiled programs shared between runs (training/program_cache.py): same answers, complete keys."""
import concurrent.futures
import dataclasses
import json
import time

import jax
import numpy as np
import pytest

from t5x_like.model import model as models
from t5x_like.training import optimizers, partitioning, program_cache
from t5x_like.training import run as train
from t5x_like.training.checkpoints import load_params
from t5x_like.training.trainer import LossOptions
from tests.training_fixtures import LENGTHS, tiny_model, tiny_run

COMPUTED = ("step", "split", "loss", "z_loss", "accuracy", "weight_sum", "grad_norm", "param_norm",
            "learning_rate", "perplexity")


def _logged(model_dir) -> list[dict]:
    with open(model_dir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    # what the steps computed (not wall-clock time or throughput)
    return [{k: row[k] for k in COMPUTED if k in row} for row in rows if row.get("split") in ("train", "eval")]


def _final_params(config) -> list[np.ndarray]:
    trainer = train.build_trainer(config, partitioning.make_mesh(config.mesh_shape))
    return [np.asarray(x) for x in
            jax.tree.leaves(load_params(config.model_dir, trainer.abstract_params).params)]


def _runs(root, seeds):
    # eval every 2 steps: the replayed evaluation batches are used three times per run
    return [tiny_run(root / f"seed{seed}", seed=seed, eval_split="validation", eval_period=2, eval_steps=2,
                     optimizer=optimizers.adafactor(learning_rate=optimizers.inverse_sqrt_schedule(0.01, 4)),
                     model=tiny_model()) for seed in seeds]


def test_runs_sharing_compiled_steps_log_and_save_exactly_what_they_do_alone(tmp_path):
    cache = program_cache.ProgramCache()
    shared = _runs(tmp_path / "shared", (0, 1))
    alone = _runs(tmp_path / "alone", (0, 1))
    for config in shared:
        train.train(config, cache)
    assert cache.hits == 1  # the second seed trained with the first seed's compiled steps
    for config in alone:
        train.train(config)
    for with_cache, without in zip(shared, alone):
        rows = _logged(tmp_path / "shared" / f"seed{with_cache.seed}")
        assert rows == _logged(tmp_path / "alone" / f"seed{without.seed}")  # every step's loss, bitwise
        assert len([r for r in rows if r["split"] == "eval"]) == 3
        for a, b in zip(_final_params(with_cache), _final_params(without)):
            np.testing.assert_array_equal(a, b)
    seed0, seed1 = (_logged(tmp_path / "shared" / f"seed{s}") for s in (0, 1))
    assert seed0[0]["loss"] != seed1[0]["loss"]  # the seeds did differ: the shared trainer took each one's seed


def _key(**changes):
    arguments = dict(model=tiny_model(), optimizer=optimizers.adafactor(), mesh=partitioning.make_mesh((1, 1, 1)),
                     rules=partitioning.DEFAULT_RULES, batch_size=8, task_feature_lengths=dict(LENGTHS),
                     num_microbatches=1, loss=LossOptions())
    return program_cache.trainer_key(**{**arguments, **changes})


@pytest.mark.parametrize("change", [
    {"model": tiny_model(d_ff=128)},
    {"model": tiny_model(layout="prefix_lm")},
    {"optimizer": optimizers.adafactor(learning_rate=0.02)},
    {"optimizer": optimizers.adafactor(learning_rate=optimizers.inverse_sqrt_schedule(warmup_steps=5))},
    {"optimizer": optimizers.adafactor(decay_rate=0.9)},
    {"optimizer": optimizers.adamw()},
    {"batch_size": 16},
    {"task_feature_lengths": {"targets": 64}},
    {"num_microbatches": 2},
    {"loss": LossOptions(z_loss=0.0)},
    {"rules": partitioning.DEFAULT_RULES[1:]},
])
def test_anything_a_program_depends_on_changes_the_key(change):
    assert _key() is not None and _key(**change) != _key()


def test_equal_recipes_share_a_key_whatever_objects_built_them():
    assert _key() == _key(model=tiny_model(), optimizer=optimizers.adafactor())
    for factory in (optimizers.adafactor, optimizers.adamw, optimizers.sgd):
        assert factory().recipe is not None and factory().recipe == factory().recipe
    cosine = optimizers.adamw(learning_rate=optimizers.warmup_cosine_schedule(total_steps=300))
    assert cosine.recipe != optimizers.adamw(learning_rate=optimizers.warmup_cosine_schedule(total_steps=400)).recipe


def test_no_key_without_a_complete_description():
    custom = optimizers.adafactor(learning_rate=lambda step: 0.01)  # a schedule this package did not build
    assert custom.recipe is None and _key(optimizer=custom) is None

    class Special(models.Model):
        pass
    assert _key(model=Special(tiny_model().config)) is None
    tx_only = optimizers.Optimizer(optimizers.adafactor().tx, lambda step: 0.01)
    assert _key(optimizer=tx_only) is None


def test_a_cached_trainer_serves_another_seed_with_that_seeds_init():
    cache = program_cache.ProgramCache()
    config = tiny_run("/unused")
    mesh = partitioning.make_mesh((1, 1, 1))
    first = train.build_trainer(config, mesh, cache)
    second = train.build_trainer(dataclasses.replace(config, seed=1), mesh, cache)
    assert second.train_step is first.train_step and second.seed == 1 and first.seed == 0
    fresh = train.build_trainer(dataclasses.replace(config, seed=1), mesh)
    for a, b in zip(jax.tree.leaves(second.init_params()),
                    jax.tree.leaves(fresh.init_params())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_replayed_batches_are_the_first_ones_of_one_build():
    builds = []

    def build():
        builds.append(1)
        return iter([{"x": np.full(2, i)} for i in range(10)])
    source = train.replayed(build, 3)
    first, second = list(source()), list(source())
    assert [b["x"][0] for b in first] == [0, 1, 2] and first == second and len(builds) == 1


def test_a_key_asked_for_by_two_threads_at_once_is_built_once():
    cache, builds = program_cache.ProgramCache(), []

    def build():
        builds.append(1)
        time.sleep(0.2)  # the other thread asks while this one builds
        return object()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: cache.get("key", build), range(2))
    assert first is second and len(builds) == 1 and cache.hits == 1
