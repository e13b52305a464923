"""Comparison grids: every shipped experiment's matching claims, grids that expand to arms, cells in threads."""
import glob
import json
import os

import pytest

from t5x_like.cli.compare import GIN_LOADERS, load_experiment
from t5x_like.experiments import grid as compare
from tests import REPO_ROOT as REPO

EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, "gin_configs/experiments/*.gin")))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_satisfies_its_matching_claims(path):
    experiment = load_experiment([path], ["OUTPUT_DIR = '/tmp/unused'"])
    assert compare.check_claims(experiment, compare.sizes(experiment, GIN_LOADERS)) == []


def test_a_false_claim_is_caught():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/quick.gin")], [])
    encdec = next(a for a in experiment.arms if a.name == "encoder_decoder")
    experiment.arms = [a if a is not encdec else compare.Arm(**{**encdec.__dict__, "claims": {"params": "P"}})
                       for a in experiment.arms]
    failures = compare.check_claims(experiment, compare.sizes(experiment, GIN_LOADERS))
    assert len(failures) == 1 and "encoder_decoder: claims params = P" in failures[0]


@pytest.mark.parametrize("claim,unit,value", [("P", "P", 1.0), ("2P", "P", 2.0), ("P/2", "P", 0.5), ("M/2", "M", 0.5), ("1.5M", "M", 1.5)])
def test_claim_multiples(claim, unit, value):
    assert compare.parse_multiple(claim, unit) == value


def test_bad_claim_is_a_clear_error():
    with pytest.raises(ValueError, match="expected e.g."):
        compare.parse_multiple("two P", "P")


def test_position_encodings_grid_expands_to_both_families_times_six_encodings():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/position_encodings.gin")], [])
    positions = ["learned", "sinusoidal", "relative", "rope", "alibi", "none"]
    assert [arm.name for arm in experiment.arms] == [f"{family}_{p}" for family in ("causal", "mlm") for p in positions]
    families = {"causal": ("gin_configs/models/decoder_only/tiny.gin", "shakespeare_causal_lm", "shakespeare_prefix_lm"),
                "mlm": ("gin_configs/models/encoder_only/tiny.gin", "shakespeare_mlm", "shakespeare_mlm")}
    for arm in experiment.arms:
        family, position = arm.name.split("_", 1)
        assert (arm.model, arm.task, arm.eval_task) == families[family]
        assert arm.group == family and arm.claims == {"params": "P", "flops": "M"}
        assert arm.bindings == (f"TransformerConfig.position = '{position}'",)


def test_grid_values_merge_bindings_and_claims_and_overrides_apply_last():
    arms = compare.expand_grid({
        "name": "{layout}_{size}", "model": "models/{layout}.gin", "bindings": ["A = 1"], "claims": {"params": "P"},
        "axes": {"layout": ["dec", "enc"],
                 "size": {"s": {"bindings": ["D = 32"]}, "l": {"bindings": ["D = 64"], "claims": {"flops": "M"}}}},
        "overrides": {"enc_l": {"bindings": ["E = 2"], "task": "other"}},
    })
    assert [a["name"] for a in arms] == ["dec_s", "dec_l", "enc_s", "enc_l"]
    assert arms[0] == {"name": "dec_s", "model": "models/dec.gin", "bindings": ["A = 1", "D = 32"],
                       "claims": {"params": "P"}}
    assert arms[1]["claims"] == {"params": "P", "flops": "M"}
    assert arms[3]["bindings"] == ["A = 1", "D = 64", "E = 2"] and arms[3]["task"] == "other"
    assert "task" not in arms[2]


@pytest.mark.parametrize("grid,message", [
    ({"name": "x_{size}"}, "needs 'axes'"),
    ({"name": "x_{size}", "model": "m", "axes": {"layout": ["a"]}}, "not an axis"),
    ({"name": "x_{a}", "model": "m", "axes": {"a": ["1"]}, "overrides": {"x_2": {}}}, "does not make"),
])
def test_malformed_grid_is_one_clear_error(grid, message):
    with pytest.raises(ValueError, match=message):
        compare.expand_grid(grid)


def test_experiment_joins_explicit_arms_and_grid_and_rejects_duplicates():
    grid = {"name": "g_{a}", "model": "m.gin", "axes": {"a": ["1", "2"]}}
    experiment = compare.Experiment(name="e", output_dir="/tmp/e", arms=[{"name": "first", "model": "m.gin"}], grid=grid)
    assert [arm.name for arm in experiment.arms] == ["first", "g_1", "g_2"]
    with pytest.raises(ValueError, match="unique"):
        compare.Experiment(name="e", output_dir="/tmp/e", arms=[{"name": "g_1", "model": "m.gin"}], grid=grid)


def test_adaptation_arms_run_after_their_source_and_start_from_its_run_of_the_same_seed():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/adaptation.gin")],
                                 ["OUTPUT_DIR = '/tmp/out'"])
    cells = compare.plan(experiment)
    order = [(c.arm.name, c.seed) for c in cells]
    for cell in cells:
        if cell.arm.init_from:
            assert order.index((cell.arm.init_from, cell.seed)) < order.index((cell.arm.name, cell.seed))
            argv = compare.train_argv(experiment, cell, GIN_LOADERS.model_config(experiment, cell.arm).layout)
            assert f"--gin.TrainConfig.init_checkpoint='/tmp/out/runs/{cell.arm.init_from}_seed{cell.seed}'" in argv
            assert f"--gin.TRAIN_STEPS={cell.arm.train_steps}" in argv


@pytest.mark.parametrize("arms,message", [
    ([{"name": "a", "model": "m", "init_from": "b"}], "init_from 'b' is not another arm"),
    ([{"name": "a", "model": "m", "baseline": "a"}], "baseline 'a' is not another arm"),
    ([{"name": "a", "model": "m", "init_from": "b"}, {"name": "b", "model": "m", "init_from": "a"}], "cycle"),
])
def test_bad_adaptation_arms_are_one_clear_error(arms, message):
    with pytest.raises(ValueError, match=message):
        compare.Experiment(name="x", output_dir="/tmp/x", arms=arms)


@pytest.mark.parametrize("binding", ["t5x_like.data.tasks.mlm_rate.rate = 0.3", "tasks.mlm_rate.rate=0.3",
                                     "D_MODEL = 64\nmlm_rate.rate = 0.3"])
def test_arms_whose_runs_set_the_data_settings_differently_are_refused_before_training(tmp_path, binding):
    model = os.path.join(REPO, "gin_configs/models/encoder_only/tiny.gin")
    arms = [{"name": "a", "model": model}, {"name": "b", "model": model, "bindings": [binding]}]
    experiment = compare.Experiment(name="x", output_dir=str(tmp_path), arms=arms, task="shakespeare_mlm",
                                    eval_task="shakespeare_mlm", seeds=(0,))
    with pytest.raises(ValueError, match=r"arms a and b set the data settings \['mlm_rate'\] differently"):
        compare.run_grid(experiment, GIN_LOADERS)
    assert not os.path.exists(os.path.join(tmp_path, "runs"))  # refused before any run started


def test_arms_that_start_from_another_arm_pass_the_data_settings_check_before_any_checkpoint_exists(tmp_path):
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/adaptation.gin")],
                                 [f"OUTPUT_DIR = '{tmp_path}'"])
    assert any(arm.init_from for arm in experiment.arms)
    compare._check_one_set_of_data_settings(experiment, GIN_LOADERS)  # no run directory or checkpoint needed


def test_one_binding_moves_every_pretraining_task_to_another_corpus():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/adaptation.gin")],
                                 ["OUTPUT_DIR = '/tmp/out'", "compare.Experiment.corpus = 'bible'"])
    assert experiment.task == "bible_prefix_lm" and experiment.eval_task == "bible_prefix_lm"
    assert {arm.task for arm in experiment.arms} == {None, "bible_causal_lm", "bible_span_corruption"}
    assert {arm.eval_task for arm in experiment.arms} == {None, "bible_causal_lm", "bible_span_corruption"}


def test_mixed_attention_arms_differ_only_in_the_encoder_mask():
    """Every arm of the mixed-attention comparison trains on the same batches (same task, lengths,
    seed, batch size, objective) and is scored on the same examples: only the mask differs."""
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/mixed_attention.gin")],
                                 ["OUTPUT_DIR = '/tmp/out'"])
    seed = experiment.seeds[0]
    configs = {}
    for arm in experiment.arms:
        cell = compare.cell_of(experiment, arm, seed)
        configs[arm.name] = GIN_LOADERS.train_config(compare.train_argv(experiment, cell, "encoder_only"))
    assert len({arm.eval_task or experiment.eval_task for arm in experiment.arms}) == 1
    reference = configs[experiment.reference_arm]
    for name, config in configs.items():
        model_configs = (config.model.config, reference.model.config)
        assert model_configs[0].replace(encoder_mask="bidirectional") == model_configs[1], name
        for field in ("mixture_or_task_name", "task_feature_lengths", "train_steps", "batch_size", "seed", "pack",
                      "shuffle", "eval_steps", "z_loss", "label_smoothing"):
            assert getattr(config, field) == getattr(reference, field), (name, field)
        steps = (0, 50, 100, 599)
        assert ([float(config.optimizer.learning_rate(s)) for s in steps]
                == [float(reference.optimizer.learning_rate(s)) for s in steps]), name


def _small_grid(output_dir) -> compare.Experiment:
    """Two from-scratch arms and one adapted from the first: a cell that must wait for another."""
    tiny = "gin_configs/models/{}/tiny.gin"
    return compare.Experiment(
        name="threads", output_dir=str(output_dir), seeds=(0,), train_steps=3, eval_period=3, eval_examples=16,
        run_bindings=("PACK = False", "EVAL_STEPS = 1"),
        arms=[{"name": "causal", "model": tiny.format("decoder_only"), "task": "shakespeare_causal_lm"},
              {"name": "prefix", "model": tiny.format("prefix_lm")},
              {"name": "adapted", "model": tiny.format("prefix_lm"), "init_from": "causal", "train_steps": 2}])


def _what_the_cells_computed(records: list[dict]) -> list[dict]:
    skip = ("train_seconds_this_invocation", "command")
    return [{k: v for k, v in record.items() if k not in skip} for record in records]


@pytest.mark.slow
def test_cells_trained_at_once_in_threads_give_the_records_of_one_at_a_time(tmp_path, capsys):
    one_at_a_time = compare.run_grid(_small_grid(tmp_path / "one"), GIN_LOADERS, cells_at_once=1)
    capsys.readouterr()
    at_once = compare.run_grid(_small_grid(tmp_path / "two"), GIN_LOADERS, cells_at_once=2)
    assert [r["arm"] for r in at_once] == ["causal", "prefix", "adapted"]
    assert _what_the_cells_computed(at_once) == _what_the_cells_computed(one_at_a_time)
    out = capsys.readouterr().out
    finished = [line for line in out.splitlines() if " finished in " in line]
    assert len(finished) == 3 and all(line.startswith(("[causal seed 0] ", "[prefix seed 0] ", "[adapted seed 0] "))
                                      for line in finished)
    assert out.index("[causal seed 0] [run 1/3] causal seed 0 finished") < out.index("adapted seed 0 started")


def test_a_relative_and_an_absolute_output_dir_name_the_same_finished_runs(tmp_path):
    def experiment(output_dir, steps=3):
        return compare.Experiment(name="e", output_dir=output_dir, seeds=(0,), train_steps=steps,
                                  arms=[{"name": "causal", "model": "gin_configs/models/decoder_only/tiny.gin"}])

    finished = experiment(str(tmp_path))
    (cell,) = compare.plan(finished)
    os.makedirs(cell.run_dir)
    with open(os.path.join(cell.run_dir, compare.RESULT_FILE), "w") as f:
        json.dump({"arm": "causal", "seed": 0, "command": compare.cell_command(finished, cell, GIN_LOADERS)}, f)
    assert compare.stale_cells(experiment(os.path.relpath(tmp_path)), GIN_LOADERS) == []
    (stale,) = compare.stale_cells(experiment(os.path.relpath(tmp_path), steps=4), GIN_LOADERS)
    assert "TRAIN_STEPS=4" in stale
