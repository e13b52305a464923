"""Training system on one device: partitioning rules, optimizers, loss
normalization and accumulation, checkpoints (corruption, finetune init), NaN
stop, CLI errors, and the files a run writes."""
from __future__ import annotations

import glob
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import checkpoints, models, optimizers, partitioning, train
from t5x_like.config import TransformerConfig
from t5x_like.metrics_log import read_jsonl
from t5x_like.trainer import LossOptions, Trainer

LENGTHS = {"targets": 32}


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """Runs in this module compile the same programs again and again: cache them."""
    # private API: the cache is set up once per process; reset it to take effect
    from jax._src import compilation_cache
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    new = (str(tmp_path_factory.getbasetemp() / "jax_cache"), 0, 0)
    for n, v in zip(names, new):
        jax.config.update(n, v)
    compilation_cache.reset_cache()
    yield
    for n, v in old.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()


def tiny_model(**overrides) -> models.Model:
    base = {"layout": "decoder_only", "vocab_size": 128, "d_model": 32, "num_heads": 4, "head_dim": 8,
            "d_ff": 64, "num_decoder_layers": 2}
    return models.Model(TransformerConfig(**{**base, **overrides}))


def tiny_run(model_dir, **overrides) -> train.TrainConfig:
    base = {"model": tiny_model(), "model_dir": str(model_dir), "mixture_or_task_name": "synthetic",
            "task_feature_lengths": LENGTHS, "train_steps": 6, "batch_size": 8, "log_period": 1,
            "checkpoint_period": 2, "eval_split": None, "tensorboard": False, "async_checkpointing": False,
            "optimizer": optimizers.adamw(learning_rate=3e-3)}
    return train.TrainConfig(**{**base, **overrides})


def one_device_mesh():
    return partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def make_trainer(optimizer, num_microbatches=1, loss=None, model=None):
    return Trainer(model or tiny_model(), optimizer, one_device_mesh(), partitioning.logical_axis_rules(),
                   batch_size=8, task_feature_lengths=LENGTHS, num_microbatches=num_microbatches,
                   loss=loss or LossOptions(z_loss=1e-4))


def synthetic_batch(model, index=0):
    request = train.DataRequest("synthetic", LENGTHS, "train", 8, False, 0, False, start_batch=index)
    return next(train.synthetic_batches(request, model))


# -- partitioning -------------------------------------------------------------------
def test_mesh_shape_minus_one_fills_remaining_devices():
    assert partitioning.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
    assert partitioning.resolve_mesh_shape((1, 1, -1), 4) == (1, 1, 4)
    with pytest.raises(ValueError):
        partitioning.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError):
        partitioning.resolve_mesh_shape((2, 2, 1), 8)


def test_rules_table_covers_every_parameter_axis_of_every_layout():
    rules = dict(partitioning.logical_axis_rules())
    for layout, depth in (("decoder_only", (0, 2)), ("encoder_decoder", (2, 2)), ("encoder_only", (2, 0))):
        model = tiny_model(layout=layout, num_encoder_layers=depth[0], num_decoder_layers=depth[1])
        boxed = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), m.dummy_batch(2, {"inputs": 8, "targets": 8})))
        names = {n for spec in jax.tree.leaves(nn.get_partition_spec(boxed)) for n in spec if n}
        assert names <= set(rules), f"{layout}: axes without a rule: {names - set(rules)}"


def test_axis_that_does_not_divide_a_dimension_is_left_unsharded():
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    spec = partitioning._fit_spec(jax.sharding.PartitionSpec("tensor", ("data", "fsdp")), (6, 8), mesh)
    assert spec == jax.sharding.PartitionSpec("tensor", ("data", "fsdp"))  # size-1 axes always divide


# -- optimizers ---------------------------------------------------------------------
def test_inverse_sqrt_schedule_is_t5s_constant_then_rsqrt():
    schedule = optimizers.inverse_sqrt_schedule()
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(9_999)) == pytest.approx(0.01)
    assert float(schedule(40_000)) == pytest.approx(1 / np.sqrt(40_000))


def test_warmup_cosine_rises_linearly_then_decays_to_end_ratio():
    schedule = optimizers.warmup_cosine_schedule(1e-3, warmup_steps=10, total_steps=110, end_ratio=0.1)
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(110)) == pytest.approx(1e-4)


def test_weight_decay_skips_norm_scales_and_biases():
    params = {"layer_0": {"attention": {"query": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}},
                          "pre_attention_norm": {"scale": jnp.ones(4)}},
              "token_embed": {"embedding": jnp.ones((8, 4))}}
    mask = optimizers.decay_mask(params)
    assert mask["layer_0"]["attention"]["query"] == {"kernel": True, "bias": False}
    assert mask["layer_0"]["pre_attention_norm"]["scale"] is False
    assert mask["token_embed"]["embedding"] is True


def test_adamw_weight_decay_leaves_masked_parameters_alone():
    tx = optimizers.adamw(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=None).tx
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0.0
    assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-0.05)


# -- the train step -----------------------------------------------------------------
@pytest.fixture(scope="module")
def sgd_trainers():
    """Same model and SGD step, with 1 and with 4 microbatches."""
    model = tiny_model()
    return model, {k: make_trainer(optimizers.sgd(1.0), k, model=model) for k in (1, 4)}


def test_accumulating_four_microbatches_gives_the_large_batch_update(sgd_trainers):
    model, trainers = sgd_trainers
    params = trainers[1].init_params()
    batch = synthetic_batch(model)
    batch["decoder_loss_weights"][:2, 20:] = 0  # uneven token counts across microbatches
    results = {}
    for k, t in trainers.items():
        state = t.init_state(jax.tree.map(jnp.copy, params))
        results[k] = jax.device_get(t.train_step(state, t.global_batch(batch)))
    (big, big_metrics), (acc, acc_metrics) = results[1], results[4]
    assert acc_metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-6)
    assert acc_metrics["weight_sum"] == big_metrics["weight_sum"] == 8 * 32 - 2 * 12
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(big.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(acc.step) == 1


def test_constant_loss_normalizing_factor_scales_the_update(sgd_trainers):
    model, trainers = sgd_trainers
    by_tokens = trainers[1]
    constant = make_trainer(optimizers.sgd(1.0), model=model,
                            loss=LossOptions(z_loss=1e-4, loss_normalizing_factor=1000.0))
    params = by_tokens.init_params()
    batch = synthetic_batch(model)
    new = {}
    for name, t in (("tokens", by_tokens), ("constant", constant)):
        state, metrics = t.train_step(t.init_state(jax.tree.map(jnp.copy, params)), t.global_batch(batch))
        new[name] = jax.tree.map(lambda a, b: a - b, jax.device_get(state.params), jax.device_get(params))
    ratio = float(metrics["weight_sum"]) / 1000.0  # tokens / constant
    for a, b in zip(jax.tree.leaves(new["constant"]), jax.tree.leaves(new["tokens"])):
        np.testing.assert_allclose(a, b * ratio, rtol=1e-3, atol=1e-6)


def test_z_loss_is_reported_and_label_smoothing_changes_only_the_objective(sgd_trainers):
    model, trainers = sgd_trainers
    params = trainers[1].init_params()
    batch = synthetic_batch(model)
    both = jax.jit(lambda p, b: (model.loss_sums(p, b, None, z_loss=0.0),
                                 model.loss_sums(p, b, None, z_loss=1e-2, label_smoothing=0.1)))
    (plain, m0), (smoothed, m1) = both(params, batch)
    assert float(m1["z_loss_sum"]) > 0 and float(m0["z_loss_sum"]) == 0
    assert float(m1["loss_sum"]) == pytest.approx(float(m0["loss_sum"]), rel=1e-6)
    assert float(smoothed) != pytest.approx(float(plain), rel=1e-6)


# -- checkpoints and runs -----------------------------------------------------------
def test_corrupt_newest_checkpoint_is_skipped_and_training_continues(tmp_path, caplog):
    config = tiny_run(tmp_path / "run", train_steps=6)
    train.train(config)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "6"]
    for path in glob.glob(str(ckpt_dir / "6" / "params" / "**" / "*"), recursive=True):
        if os.path.isfile(path) and "/d/" in path:  # the array data files
            with open(path, "r+b") as f:
                size = f.seek(0, 2)
                f.seek(0)
                f.write(os.urandom(size))
    (ckpt_dir / "8.orbax-checkpoint-tmp-1").mkdir()  # a half-written save, never finalized
    trainer = train.build_trainer(config, partitioning.make_mesh((1, 1, 1)))
    checkpointer = train.build_checkpointer(config)
    with caplog.at_level(logging.WARNING):
        state, consumed = train.restore_or_init_state(trainer, checkpointer)
    checkpointer.close()
    assert int(state.step) == 4 and consumed == 4
    assert "unreadable" in caplog.text
    assert any(name.startswith("6.corrupt-") for name in os.listdir(ckpt_dir))
    result = train.train(tiny_run(tmp_path / "run", train_steps=8))
    assert result.step == 8
    assert {"6", "8"} <= set(os.listdir(ckpt_dir))


def test_finetune_init_takes_params_only_with_a_fresh_optimizer(tmp_path):
    train.train(tiny_run(tmp_path / "pre", train_steps=2))
    config = tiny_run(tmp_path / "ft", train_steps=2, init_checkpoint=str(tmp_path / "pre"))
    trainer = train.build_trainer(config, partitioning.make_mesh((1, 1, 1)))
    checkpointer = train.build_checkpointer(config)
    state, consumed = train.restore_or_init_state(trainer, checkpointer, config.init_checkpoint)
    checkpointer.close()
    pre = checkpoints.restore_params(str(tmp_path / "pre"), trainer.abstract_params)
    assert int(state.step) == 0 and consumed == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(pre)):
        np.testing.assert_array_equal(a, b)
    fresh = trainer.optimizer.tx.init(pre)
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    poisoned = optimizers.sgd(lambda step: jnp.where(step >= 3, jnp.nan, 1e-3))
    config = tiny_run(tmp_path / "run", train_steps=8, optimizer=poisoned)
    with pytest.raises(train.NonFiniteLossError, match="non-finite training loss"):
        train.train(config)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]
    assert "non-finite" in capsys.readouterr().out


# -- command line -------------------------------------------------------------------
MODEL_GIN = "--gin_file=gin_configs/models/decoder_only/tiny.gin"
RUN_GIN = "--gin_file=gin_configs/runs/pretrain.gin"


def run_main(args, capsys):
    rc = train.main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_missing_required_macro_is_one_line_naming_it(capsys):
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, "--gin.MODEL_DIR=/tmp/x",
                           "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.TRAIN_STEPS=1"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "TASK_FEATURE_LENGTHS" in err


def test_misspelled_binding_is_one_line_error(capsys):
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, "--gin.TrainConfig.batch_sise=4"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "batch_sise" in err


def test_unknown_task_is_one_line_with_close_matches(capsys):
    data = pytest.importorskip("t5x_like.data")
    if not hasattr(data, "get_dataset"):
        pytest.skip("t5x_like.data has no tasks yet")
    rc, _, err = run_main([MODEL_GIN, RUN_GIN, "--gin.MODEL_DIR=/tmp/x", "--gin.TRAIN_STEPS=1",
                           "--gin.MIXTURE_OR_TASK_NAME=shakespeare_casual_lm",
                           "--gin.TASK_FEATURE_LENGTHS={'targets': 32}"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "shakespeare_causal_lm" in err


def test_cli_run_writes_config_jsonl_tensorboard_and_eval(tmp_path, capsys):
    model_dir = tmp_path / "run"
    rc, out, _ = run_main([MODEL_GIN, RUN_GIN, f"--gin.MODEL_DIR={model_dir}",
                           "--gin.MIXTURE_OR_TASK_NAME=synthetic", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
                           "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=4", "--gin.LOG_PERIOD=2",
                           "--gin.EVAL_PERIOD=2", "--gin.EVAL_STEPS=2", "--gin.CHECKPOINT_PERIOD=2"], capsys)
    assert rc == 0
    assert "step 4/4" in out and "tok/s" in out and "[eval @ step 4]" in out
    assert "MODEL_DIR" in (model_dir / "config.gin").read_text()
    assert "TrainConfig" in (model_dir / "operative_config.gin").read_text()
    rows = read_jsonl(str(model_dir / "metrics.jsonl"))
    assert [(r["split"], r["step"]) for r in rows] == [("train", 2), ("eval", 2), ("train", 4), ("eval", 4)]
    assert rows[-1]["perplexity"] == pytest.approx(np.exp(rows[-1]["loss"]))
    assert glob.glob(str(model_dir / "tensorboard" / "train" / "events.out.tfevents.*"))
    assert glob.glob(str(model_dir / "tensorboard" / "eval" / "events.out.tfevents.*"))
    assert json.loads((model_dir / "train_config.json").read_text())["train_steps"] == "4"


def test_keep_best_keeps_lowest_validation_loss_besides_the_latest(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), keep=1, keep_best=True, async_save=False)
    tree = {"w": jnp.ones((2, 2))}
    for step, eval_loss in zip((1, 2, 3, 4), (3.0, 1.0, 2.0, 4.0)):
        ckpt.save(step, tree, tree, {"batches_consumed": step}, {"eval_loss": eval_loss})
    ckpt.close()
    assert ckpt.steps() == [2, 4]
    assert not ckpt.save(4, tree, tree, {}), "an existing step must never be overwritten"
