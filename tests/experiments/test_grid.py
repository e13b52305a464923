"""Comparison grids: every shipped experiment's matching claims, grids that expand to arms, cells in threads."""
import glob
import json
import os

import pytest

from t5x_like.cli.compare import load_arm, load_experiment
from t5x_like.data import tasks
from t5x_like.experiments import cells, claims, grid, spec
from tests import REPO_ROOT as REPO

EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, "gin_configs/experiments/*.gin")))


def model_configs(experiment: spec.Experiment) -> dict:
    return {name: run.config.model.config for name, run in grid.load_arm_runs(experiment, load_arm).items()}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_satisfies_its_matching_claims(path):
    experiment = load_experiment([path], ["OUTPUT_DIR = '/tmp/unused'"])
    assert claims.check_claims(experiment, claims.sizes(experiment, model_configs(experiment))) == []


def test_a_false_claim_is_caught():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/quick.gin")], [])
    encdec = next(a for a in experiment.arms if a.name == "encoder_decoder")
    experiment.arms = [a if a is not encdec else spec.Arm(**{**encdec.__dict__, "claims": {"params": "P"}})
                       for a in experiment.arms]
    failures = claims.check_claims(experiment, claims.sizes(experiment, model_configs(experiment)))
    assert len(failures) == 1 and "encoder_decoder: claims params = P" in failures[0]


@pytest.mark.parametrize("claim,unit,value", [("P", "P", 1.0), ("2P", "P", 2.0), ("P/2", "P", 0.5), ("M/2", "M", 0.5), ("1.5M", "M", 1.5)])
def test_claim_multiples(claim, unit, value):
    assert claims.parse_multiple(claim, unit) == value


def test_bad_claim_is_a_clear_error():
    with pytest.raises(ValueError, match="expected e.g."):
        claims.parse_multiple("two P", "P")


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
    arms = spec.expand_grid({
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
        spec.expand_grid(grid)


def test_experiment_joins_explicit_arms_and_grid_and_rejects_duplicates():
    grid = {"name": "g_{a}", "model": "m.gin", "axes": {"a": ["1", "2"]}}
    experiment = spec.Experiment(name="e", output_dir="/tmp/e", arms=[{"name": "first", "model": "m.gin"}], grid=grid)
    assert [arm.name for arm in experiment.arms] == ["first", "g_1", "g_2"]
    with pytest.raises(ValueError, match="unique"):
        spec.Experiment(name="e", output_dir="/tmp/e", arms=[{"name": "g_1", "model": "m.gin"}], grid=grid)


def test_adaptation_arms_run_after_their_source_and_start_from_its_run_of_the_same_seed():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/adaptation.gin")],
                                 ["OUTPUT_DIR = '/tmp/out'"])
    planned = cells.plan(experiment)
    arm_runs = grid.load_arm_runs(experiment, load_arm)
    order = [(c.arm.name, c.seed) for c in planned]
    for cell in planned:
        if cell.arm.init_from:
            assert order.index((cell.arm.init_from, cell.seed)) < order.index((cell.arm.name, cell.seed))
            config = cells.cell_config(experiment, cell, arm_runs[cell.arm.name])
            assert config.init_checkpoint == f"/tmp/out/runs/{cell.arm.init_from}_seed{cell.seed}"
            assert config.train_steps == cell.arm.train_steps and config.seed == cell.seed
            assert config.model_dir == cell.run_dir


@pytest.mark.parametrize("arms,message", [
    ([{"name": "a", "model": "m", "init_from": "b"}], "init_from 'b' is not another arm"),
    ([{"name": "a", "model": "m", "baseline": "a"}], "baseline 'a' is not another arm"),
    ([{"name": "a", "model": "m", "init_from": "b"}, {"name": "b", "model": "m", "init_from": "a"}], "cycle"),
])
def test_bad_adaptation_arms_are_one_clear_error(arms, message):
    with pytest.raises(ValueError, match=message):
        spec.Experiment(name="x", output_dir="/tmp/x", arms=arms)


@pytest.mark.parametrize("binding", ["t5x_like.data.tasks.mlm_rate.rate = 0.3", "tasks.mlm_rate.rate=0.3",
                                     "D_MODEL = 64\nmlm_rate.rate = 0.3"])
def test_arms_whose_runs_set_the_data_settings_differently_are_refused_before_training(tmp_path, binding):
    model = os.path.join(REPO, "gin_configs/models/encoder_only/tiny.gin")
    arms = [{"name": "a", "model": model}, {"name": "b", "model": model, "bindings": [binding]}]
    experiment = spec.Experiment(name="x", output_dir=str(tmp_path), arms=arms, task="shakespeare_mlm",
                                    eval_task="shakespeare_mlm", seeds=(0,))
    with pytest.raises(ValueError, match=r"arms a and b set the data settings \['mlm_rate'\] differently"):
        grid.load_arm_runs(experiment, load_arm)
    assert not os.path.exists(os.path.join(tmp_path, "runs"))  # refused before any run started


def test_arms_that_start_from_another_arm_pass_the_data_settings_check_before_any_checkpoint_exists(tmp_path):
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/adaptation.gin")],
                                 [f"OUTPUT_DIR = '{tmp_path}'"])
    assert any(arm.init_from for arm in experiment.arms)
    grid.load_arm_runs(experiment, load_arm)  # no run directory or checkpoint needed


def test_one_binding_moves_every_pretraining_task_to_another_corpus():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/adaptation.gin")],
                                 ["OUTPUT_DIR = '/tmp/out'", "compare.Experiment.corpus = 'bible'"])
    assert experiment.task == "bible_prefix_lm" and experiment.eval_task == "bible_prefix_lm"
    assert {arm.task for arm in experiment.arms} == {None, "bible_causal_lm", "bible_span_corruption"}
    assert {arm.eval_task for arm in experiment.arms} == {None, "bible_causal_lm", "bible_span_corruption"}


def test_wang_protocol_moves_its_pretraining_to_another_corpus_and_keeps_the_finetuning_mixture():
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/wang_protocol.gin")],
                                 ["OUTPUT_DIR = '/tmp/out'", "compare.Experiment.corpus = 'bible'"])
    pretrained = [arm for arm in experiment.arms if arm.phase == "pretrained"]
    finetuned = [arm for arm in experiment.arms if arm.phase == "finetuned"]
    assert {arm.task for arm in pretrained} == {"bible_causal_lm", "bible_prefix_lm", "bible_span_corruption"}
    assert {arm.init_from for arm in finetuned} == {arm.name for arm in pretrained}
    mixture = {arm.task for arm in finetuned}
    assert len(mixture) == 1 and len({arm.train_steps for arm in finetuned}) == 1
    held_in = set(tasks.suite_multitask_families(mixture.pop()))
    held_out = {f for arm in finetuned for f in spec.zero_shot_families(experiment, arm)}
    assert len(held_out) >= 2 and not held_in & held_out
    assert all(spec.zero_shot_families(experiment, arm) == experiment.zero_shot_families for arm in pretrained)


def test_mixed_attention_arms_differ_only_in_the_encoder_mask():
    """Every arm of the mixed-attention comparison trains on the same batches (same task, lengths,
    seed, batch size, objective) and is scored on the same examples: only the mask differs."""
    experiment = load_experiment([os.path.join(REPO, "gin_configs/experiments/mixed_attention.gin")],
                                 ["OUTPUT_DIR = '/tmp/out'"])
    seed = experiment.seeds[0]
    arm_runs = grid.load_arm_runs(experiment, load_arm)
    configs = {arm.name: cells.cell_config(experiment, cells.cell_of(experiment, arm, seed), arm_runs[arm.name])
               for arm in experiment.arms}
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


def _small_grid(output_dir) -> spec.Experiment:
    """Two from-scratch arms and one adapted from the first: a cell that must wait for another."""
    tiny = "gin_configs/models/{}/tiny.gin"
    return spec.Experiment(
        name="threads", output_dir=str(output_dir), seeds=(0,), train_steps=3, eval_period=3, eval_examples=16,
        run_bindings=("PACK = False", "EVAL_STEPS = 1"),
        arms=[{"name": "causal", "model": tiny.format("decoder_only"), "task": "shakespeare_causal_lm"},
              {"name": "prefix", "model": tiny.format("prefix_lm")},
              {"name": "adapted", "model": tiny.format("prefix_lm"), "init_from": "causal", "train_steps": 2}])


def _what_the_cells_computed(records: list[dict]) -> list[dict]:
    skip = ("train_seconds_this_invocation", "command", "config")
    return [{k: v for k, v in record.items() if k not in skip} for record in records]


@pytest.mark.slow
def test_cells_trained_at_once_in_threads_give_the_records_of_one_at_a_time(tmp_path, capsys):
    one = _small_grid(tmp_path / "one")
    one_at_a_time = grid.run_grid(one, grid.load_arm_runs(one, load_arm), cells_at_once=1)
    capsys.readouterr()
    two = _small_grid(tmp_path / "two")
    at_once = grid.run_grid(two, grid.load_arm_runs(two, load_arm), cells_at_once=2)
    assert [r["arm"] for r in at_once] == ["causal", "prefix", "adapted"]
    assert _what_the_cells_computed(at_once) == _what_the_cells_computed(one_at_a_time)
    out = capsys.readouterr().out
    finished = [line for line in out.splitlines() if " finished in " in line]
    assert len(finished) == 3 and all(line.startswith(("[causal seed 0] ", "[prefix seed 0] ", "[adapted seed 0] "))
                                      for line in finished)
    assert out.index("[causal seed 0] [run 1/3] causal seed 0 finished") < out.index("adapted seed 0 started")


def _finish_without_training(experiment: spec.Experiment, record_config: bool = True) -> None:
    """A record for every cell, as run_cell writes it, without training (staleness reads only the record)."""
    arm_runs = grid.load_arm_runs(experiment, load_arm)
    for cell in cells.plan(experiment):
        config = cells.cell_config(experiment, cell, arm_runs[cell.arm.name])
        record = {"arm": cell.arm.name, "seed": cell.seed, "command": arm_runs[cell.arm.name].command(config)}
        if record_config:
            record["config"] = cells.run_fields(config)
        os.makedirs(cell.run_dir)
        with open(os.path.join(cell.run_dir, cells.RESULT_FILE), "w") as f:
            json.dump(record, f)


def _two_arms(output_dir, steps=3, prefix_bindings=()) -> spec.Experiment:
    tiny = "gin_configs/models/{}/tiny.gin"
    return spec.Experiment(name="e", output_dir=output_dir, seeds=(0, 1), train_steps=steps,
                           arms=[{"name": "causal", "model": tiny.format("decoder_only")},
                                 {"name": "prefix", "model": tiny.format("prefix_lm"),
                                  "bindings": list(prefix_bindings)}])


@pytest.mark.parametrize("record_config", [True, False], ids=["fields", "command_of_an_older_record"])
def test_a_relative_and_an_absolute_output_dir_name_the_same_finished_runs(tmp_path, record_config):
    _finish_without_training(_two_arms(str(tmp_path)), record_config)
    assert cells.stale_cells(_two_arms(os.path.relpath(tmp_path)), grid.load_arm_runs(_two_arms("x"), load_arm)) == []
    stale = cells.stale_cells(_two_arms(os.path.relpath(tmp_path), steps=4),
                              grid.load_arm_runs(_two_arms("x", steps=4), load_arm))
    assert len(stale) == 4 and all(("train_steps: 3 -> 4" if record_config else "TRAIN_STEPS=4") in s for s in stale)


def test_changing_one_field_of_a_finished_arm_marks_exactly_its_cells_stale(tmp_path):
    _finish_without_training(_two_arms(str(tmp_path)))
    changed = _two_arms(str(tmp_path), prefix_bindings=["LEARNING_RATE = 0.02"])
    stale = cells.stale_cells(changed, grid.load_arm_runs(changed, load_arm))
    assert [s.split(" (")[0] for s in stale] == ["prefix seed 0", "prefix seed 1"]
    assert all("optimizer" in s for s in stale), stale


def test_a_record_written_before_a_field_existed_is_not_stale(tmp_path):
    """A model or TrainConfig field added since the run (num_kv_heads, profile_steps) is read at its
    default, which the run had in effect; a recorded non-default value still counts."""
    _finish_without_training(_two_arms(str(tmp_path)))
    for cell in cells.plan(_two_arms(str(tmp_path))):
        path = os.path.join(cell.run_dir, cells.RESULT_FILE)
        with open(path) as f:
            record = json.load(f)
        del record["config"]["model"]["num_kv_heads"], record["config"]["profile_steps"]
        record["config"]["logical_axis_rules"] = [rule for rule in record["config"]["logical_axis_rules"]
                                                  if "kv_heads" not in rule[0]]
        if cell.arm.name == "prefix":
            record["config"]["model"]["rope_scaling"] = "linear"
        with open(path, "w") as f:
            json.dump(record, f)
    experiment = _two_arms(str(tmp_path))
    stale = cells.stale_cells(experiment, grid.load_arm_runs(experiment, load_arm))
    assert [s.split(" (")[0] for s in stale] == ["prefix seed 0", "prefix seed 1"] and "model" in stale[0]


def test_an_output_dir_with_a_quote_in_its_name_holds_every_run_of_the_grid(tmp_path):
    """Paths never pass through gin: a cell trains in its own folder under any OUTPUT_DIR."""
    output_dir = str(tmp_path / "Shakespeare's runs")
    experiment = _small_grid(output_dir)
    arm_runs = grid.load_arm_runs(experiment, load_arm)
    for cell in cells.plan(experiment):
        config = cells.cell_config(experiment, cell, arm_runs[cell.arm.name])
        assert config.model_dir == os.path.join(output_dir, "runs", f"{cell.arm.name}_seed0")
        if cell.arm.init_from:
            assert config.init_checkpoint == os.path.join(output_dir, "runs", f"{cell.arm.init_from}_seed0")


def test_a_moved_output_dir_keeps_its_finished_runs_adapted_ones_too(tmp_path):
    _finish_without_training(_small_grid(tmp_path / "before"))
    os.rename(tmp_path / "before", tmp_path / "after")
    moved = _small_grid(tmp_path / "after")
    assert cells.stale_cells(moved, grid.load_arm_runs(moved, load_arm)) == []


@pytest.mark.slow
def test_a_grid_with_seeds_stacked_gives_each_cell_its_lone_record_up_to_rounding_and_reruns_bitwise(tmp_path, capsys):
    import dataclasses

    import numpy as np
    experiments = {name: dataclasses.replace(_small_grid(tmp_path / name), seeds=(0, 1), stack_seeds=name != "lone")
                   for name in ("lone", "stacked", "again")}
    records = {name: grid.run_grid(e, grid.load_arm_runs(e, load_arm), cells_at_once=2 if name == "stacked" else 1)
               for name, e in experiments.items()}
    out = capsys.readouterr().out
    assert "causal seeds 0,1" in out and out.index("[causal seeds 0,1] [run 1+4/6] causal seeds 0,1 finished") < \
        out.index("adapted seeds 0,1 started")  # the adapted arm's stacked seeds waited for their source's
    lone, stacked_records, again = records["lone"], records["stacked"], records["again"]
    assert [(r["arm"], r["seed"]) for r in stacked_records] == [(r["arm"], r["seed"]) for r in lone]
    assert [r["seeds_stacked"] for r in stacked_records] == [2] * 6 and {r["seeds_stacked"] for r in lone} == {1}
    for mine, alone in zip(stacked_records, lone):
        np.testing.assert_allclose(mine["shared_nll_per_example"], alone["shared_nll_per_example"], rtol=1e-4)
        assert mine["config"] == {**alone["config"], "model_dir": mine["config"]["model_dir"],
                                  "init_checkpoint": mine["config"]["init_checkpoint"]}
    assert _what_the_cells_computed(stacked_records) == _what_the_cells_computed(again)
