"""Seeds trained as one stacked program (training/stacked.py) against the same seeds trained alone."""
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from t5x_like.training import optimizers, partitioning, program_cache, stacked
from t5x_like.training import run as train
from t5x_like.training.checkpoints import Checkpointer, load_params
from t5x_like.training.metrics_log import read_jsonl
from t5x_like.training.trainer import StopRequested, Trainer
from tests.training_fixtures import make_trainer, synthetic_batch, tiny_model, tiny_run

SEEDS = (0, 1)
STEPS = 10
COMPUTED = ("step", "split", "loss", "z_loss", "accuracy", "weight_sum", "grad_norm", "param_norm",
            "learning_rate", "perplexity")


def _configs(root, **overrides):
    # dropout on: each seed's dropout keys are its own run's
    return [tiny_run(root / f"seed{seed}", seed=seed, train_steps=STEPS, model=tiny_model(dropout_rate=0.1),
                     **overrides) for seed in SEEDS]


def _logged(model_dir) -> list[dict]:
    rows = read_jsonl(str(model_dir / "metrics.jsonl"))  # one row per step: the last written
    return [{k: row[k] for k in COMPUTED if k in row} for row in rows if row.get("split") in ("train", "eval")]


def _losses(model_dir) -> np.ndarray:
    return np.array([row["loss"] for row in _logged(model_dir) if row["split"] == "train"])


def _final_params(config) -> list[np.ndarray]:
    trainer = train.build_trainer(config, partitioning.make_mesh(config.mesh_shape))
    return [np.asarray(x) for x in jax.tree.leaves(load_params(config.model_dir, trainer.abstract_params).params)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, monkeypatch_module):
    """Each seed alone, the seeds stacked twice, and what the stacked program was first given."""
    root = tmp_path_factory.mktemp("stacked")
    cache = program_cache.ProgramCache()
    given = []
    original_stack = stacked.stack

    def recorded_stack(trees):
        tree = original_stack(trees)
        given.append(jax.tree.map(np.array, tree))  # a copy: the stacked state is donated to the step
        return tree
    monkeypatch_module.setattr(stacked, "stack", recorded_stack)
    alone = _configs(root / "alone")
    for config in alone:
        train.train(config, cache)
    first, second = _configs(root / "stacked"), _configs(root / "again")
    results = stacked.train_stacked(first, cache)
    stacked.train_stacked(second, cache)
    return {"alone": alone, "stacked": first, "again": second, "results": results, "given": given[:2],
            "cache": cache}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow  # the module's runs: ~80 s on 2 loaded cores
def test_each_seed_starts_from_its_lone_runs_parameters_and_first_batch_bitwise(runs):
    state, batch = runs["given"]
    for index, config in enumerate(runs["alone"]):
        trainer = train.build_trainer(config, partitioning.make_mesh(config.mesh_shape), runs["cache"])
        lone_params = trainer.init_params()
        for mine, lone in zip(jax.tree.leaves(stacked.seed_slice(state, index).params), jax.tree.leaves(lone_params)):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(lone))
        lone_batch = trainer.host_batch(next(train.make_batches(config, "train", 0, train=True)))
        for name, value in lone_batch.items():
            np.testing.assert_array_equal(np.asarray(batch[name])[index], value)
    assert not np.array_equal(np.asarray(batch["decoder_target_tokens"])[0],
                              np.asarray(batch["decoder_target_tokens"])[1])  # each seed its own stream


@pytest.mark.slow  # the module's runs: ~80 s on 2 loaded cores
def test_each_seeds_losses_follow_its_lone_run_and_the_runs_files_are_per_seed(runs):
    for alone, mine, result in zip(runs["alone"], runs["stacked"], runs["results"]):
        stacked_losses = _losses(_path(mine))
        assert len(stacked_losses) == STEPS
        # one CPU device: the unrolled form, each seed's numbers its lone run's to the last bit
        assert [{k: v for k, v in row.items() if k != "split"} for row in _logged(_path(mine))] == \
            [{k: v for k, v in row.items() if k != "split"} for row in _logged(_path(alone))]
        for a, b in zip(_final_params(mine), _final_params(alone)):
            np.testing.assert_array_equal(a, b)
        assert result.step == STEPS and result.model_dir == mine.model_dir
        assert sorted(int(s) for s in os.listdir(_path(mine) / "checkpoints")) == [6, 8, 10]
    first, second = (_losses(_path(c)) for c in runs["stacked"])
    assert not np.array_equal(first, second)


@pytest.mark.slow  # the module's runs: ~80 s on 2 loaded cores
def test_stacked_runs_are_bitwise_reproducible(runs):
    for first, again in zip(runs["stacked"], runs["again"]):
        assert _logged(_path(first)) == _logged(_path(again))
        for a, b in zip(_final_params(first), _final_params(again)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("form", ["unrolled", "vmap"])
def test_the_stacked_step_is_each_seeds_lone_step(form, monkeypatch):
    """Unrolled (one CPU device): bitwise the lone steps. vmap (accelerators, meshes): the lone
    steps up to float rounding, over 10 steps."""
    monkeypatch.setattr(Trainer, "stacked_form", lambda self: form)
    trainer = make_trainer(optimizers.adamw(learning_rate=3e-3), model=tiny_model(dropout_rate=0.1))
    assert trainer.stacked_form() == form
    lone_states = [trainer.init_state(trainer.init_params(seed)) for seed in SEEDS]
    state = stacked.stack([trainer.init_state(trainer.init_params(seed)) for seed in SEEDS])
    step = trainer.stacked_train_step()
    lone_losses, stacked_losses = [], []
    for index in range(STEPS):
        batches = [trainer.host_batch(synthetic_batch(trainer.model, index + 10 * seed)) for seed in SEEDS]
        stepped = [trainer.train_step(lone, batch) for lone, batch in zip(lone_states, batches)]
        lone_states = [s for s, _ in stepped]
        lone_losses.append([float(m["loss"]) for _, m in stepped])
        state, metrics = step(state, stacked.stack(batches))
        stacked_losses.append([float(x) for x in np.asarray(metrics["loss"])])
    assert lone_losses[-1][0] != lone_losses[-1][1]
    if form == "unrolled":
        assert stacked_losses == lone_losses
        for index, lone in enumerate(lone_states):
            for a, b in zip(jax.tree.leaves(stacked.seed_slice(state, index)), jax.tree.leaves(lone)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        np.testing.assert_allclose(stacked_losses, lone_losses, rtol=1e-4)


def test_one_cpu_device_stacks_seeds_unrolled():
    assert make_trainer(optimizers.adamw(learning_rate=3e-3)).stacked_form() == "unrolled"


class _StopAt(StopRequested):
    """A stop request that arrives after `steps` steps (what SIGTERM does), with no handlers."""

    def __init__(self, steps: int):
        super().__init__(signals=())
        self.calls, self.steps = 0, steps

    def agreed(self) -> bool:
        self.calls += 1
        return self.calls >= self.steps


@pytest.mark.slow
def test_a_stacked_run_stopped_or_killed_mid_run_resumes_every_seed_bitwise(runs, tmp_path, monkeypatch):
    cache = runs["cache"]
    stopped = _configs(tmp_path / "stopped")
    results = stacked.train_stacked(stopped, cache, _StopAt(5))
    assert [r.step for r in results] == [5, 5] and all(r.stopped_by_signal for r in results)
    stacked.train_stacked(stopped, cache)
    killed = _configs(tmp_path / "killed")
    calls = {"n": 0}
    original = Checkpointer.check_for_errors

    def crash_after_step_7(self):
        calls["n"] += 1
        if calls["n"] > 7 * len(SEEDS):
            raise RuntimeError("killed")
        return original(self)
    monkeypatch.setattr(Checkpointer, "check_for_errors", crash_after_step_7)
    with pytest.raises(RuntimeError, match="killed"):
        stacked.train_stacked(killed, cache)
    monkeypatch.setattr(Checkpointer, "check_for_errors", original)
    stacked.train_stacked(killed, cache)  # resumes each seed from its step-6 checkpoint
    for straight, *resumed in zip(runs["stacked"], stopped, killed):
        for other in resumed:
            assert _logged(_path(other))[-1] == _logged(_path(straight))[-1]
            assert [r for r in _logged(_path(other)) if r["step"] > 6] == \
                [r for r in _logged(_path(straight)) if r["step"] > 6]
            for a, b in zip(_final_params(other), _final_params(straight)):
                np.testing.assert_array_equal(a, b)


def test_runs_that_differ_in_more_than_their_seed_are_not_stacked(tmp_path):
    configs = _configs(tmp_path)
    assert stacked.why_not_stacked(configs) is None
    configs[1].batch_size = 4
    assert "batch_size" in stacked.why_not_stacked(configs)
    assert stacked.why_not_stacked(configs[:1]) == "a single run"


def test_seeds_go_on_a_mesh_when_they_share_a_factor_with_its_data_axis(tmp_path):
    assert [partitioning.seed_groups(seeds, 8) for seeds in (1, 2, 3, 4, 6, 16)] == [1, 2, 1, 4, 2, 8]
    assert stacked.seeds_on_mesh_problem(3, (-1, 1, 1), 1) is None  # one device: the plain vmap
    assert stacked.seeds_on_mesh_problem(2, (-1, 1, 1), 8) is None  # 2 groups of 4 data slices
    assert stacked.seeds_on_mesh_problem(8, (2, 1, 1), 2) is None  # 4 seeds per device
    assert "share no factor" in stacked.seeds_on_mesh_problem(3, (2, 1, 1), 2)
    assert "data axis of 1" in stacked.seeds_on_mesh_problem(2, (1, -1, 1), 4)  # pure fsdp
    assert "needs 3 devices" in stacked.seeds_on_mesh_problem(2, (3, 1, 1), 4)  # a bad mesh: train() says so


def _path(config) -> pathlib.Path:
    return pathlib.Path(config.model_dir)


# -- seeds on a mesh (fake CPU devices need XLA flags before JAX starts: subprocesses) -----------------
STACKED_RUN = """
    from t5x_like.training import stacked
    from t5x_like.training import trainer as trainer_lib
    seen = {}
    original = trainer_lib.Trainer.stacked_train_step

    def recording(self):  # the stacked step's first arguments' seed-axis shards, as placed
        step = original(self)

        def step_recorded(state, batch):
            if not seen:
                leaves = jax.tree.leaves((state, batch))
                seen["seeds"] = sorted({x.shape[0] for x in leaves})
                seen["seeds_per_device"] = sorted({x.sharding.shard_shape(x.shape)[0] for x in leaves})
                seen["devices"] = sorted({len(x.sharding.device_set) for x in leaves})
            return step(state, batch)
        return step_recorded
    trainer_lib.Trainer.stacked_train_step = recording
    configs = [tiny_run(os.path.join(ROOT, f"seed{s}"), steps=4, seed=s) for s in range(2)]
    stacked.train_stacked(configs)
    print("RESULT", json.dumps({"losses": [losses(c.model_dir) for c in configs], "seen": seen}))
"""


@pytest.mark.slow  # two subprocesses
def test_seeds_on_two_devices_sit_one_per_device_and_follow_the_one_device_stacked_run(tmp_path):
    from tests.training.test_distributed import env, run_python
    cache = tmp_path / "jax_cache"
    results = {devices: json.loads(run_python(STACKED_RUN.replace("ROOT", repr(str(tmp_path / str(devices)))),
                                              env(cache, devices=devices)).split("RESULT", 1)[1])
               for devices in (1, 2)}  # mesh (-1, 1, 1): the data axis is the 2 devices
    one, two = results[1], results[2]
    assert one["seen"]["seeds_per_device"] == [2] and one["seen"]["devices"] == [1]
    assert two["seen"] == {"seeds": [2], "seeds_per_device": [1], "devices": [2]}  # one seed on each device
    assert len(two["losses"][0]) == 4 and two["losses"][0] != two["losses"][1]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
