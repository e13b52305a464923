"""Initialising a run from a checkpoint of another layout (init_checkpoint + the new model file)."""
from __future__ import annotations

import functools
import logging
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5x_like.model import adaptation
from t5x_like.model import model as models
from t5x_like.model.config import TransformerConfig
from t5x_like.training import checkpoints, optimizers, partitioning
from t5x_like.training.checkpoints.integrity import flat_leaves
from t5x_like.training import run as train
from t5x_like.training.trainer import Trainer
from tests.training_fixtures import one_device_mesh

LENGTHS = {"inputs": 8, "targets": 8}


def config(layout: str, d_model: int = 32, buckets: int = 32) -> TransformerConfig:
    encoder = 2 if layout in ("encoder_only", "encoder_decoder") else 0
    decoder = 0 if layout == "encoder_only" else 2
    return TransformerConfig(layout=layout, vocab_size=128, d_model=d_model, num_heads=4, head_dim=8, d_ff=64,
                             num_encoder_layers=encoder, num_decoder_layers=decoder, relative_num_buckets=buckets)


def save_source(model_dir: str, layout: str, buckets: int = 32, saved_config: bool = False) -> dict:
    """A checkpoint of `layout` at step 5 (with its model_config.json if `saved_config`); its params by path."""
    model = models.Model(config(layout, buckets=buckets))
    if saved_config:
        checkpoints.write_model_config(model_dir, checkpoints.SavedModelConfig(model.config, LENGTHS))
    params = jax.jit(lambda rng: nn.unbox(model.init(rng, model.dummy_batch(1, LENGTHS)))["params"])(
        jax.random.key(3))
    saver = checkpoints.Checkpointer(os.path.join(model_dir, checkpoints.CHECKPOINT_SUBDIR), async_save=False)
    saver.save(5, params, {"count": np.zeros(())}, {"batches_consumed": 5})
    saver.close()
    return {k: np.asarray(v) for k, v in flat_leaves(params).items()}


def start_from(model_dir: str, layout: str):
    """The run's starting point, as train() finds it: init_checkpoint with the layout's plan."""
    trainer = Trainer(models.Model(config(layout)), optimizers.adamw(learning_rate=1e-3), one_device_mesh(),
                      partitioning.logical_axis_rules(), batch_size=2, task_feature_lengths=LENGTHS)
    checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "target"), async_save=False)
    try:
        return trainer, train.restore_or_init_state(trainer, checkpointer, init_checkpoint=model_dir)
    finally:
        checkpointer.close()


def restore_as(model_dir: str, layout: str, d_model: int = 32) -> dict:
    """restore_params into an abstract tree of `layout` (no trainer: only the params are read)."""
    target = config(layout, d_model)
    abstract = models.Model(target).abstract_params(
        jax.sharding.NamedSharding(one_device_mesh(), jax.sharding.PartitionSpec()))
    plan = functools.partial(adaptation.adaptation_plan, target_config=target)
    params = checkpoints.load_params(model_dir, abstract, plan).params
    return {k: np.asarray(v) for k, v in flat_leaves(params).items()}


MODES = {"decoder_only": "causal", "prefix_lm": "prefix", "encoder_only": "bidirectional"}


def assert_carried(got: dict, saved: dict, source: str, target: str) -> None:
    stack = "encoder" if source == "encoder_only" else "decoder"
    assert len(got) == len(saved)
    for path, value in got.items():
        origin = path.replace("decoder_", stack + "_")
        if adaptation.RELPOS_TABLE in path:
            expected = adaptation.convert_relpos_table(saved[origin], MODES[source], MODES[target], 32, 128)
        else:
            expected = saved[origin]
        np.testing.assert_array_equal(value, expected, err_msg=path)


@pytest.fixture(scope="module")
def causal_checkpoint(tmp_path_factory) -> tuple[str, dict]:
    """A decoder-only checkpoint (step 5) and its params by path, shared by the tests that only read it."""
    model_dir = str(tmp_path_factory.mktemp("causal_source"))
    return model_dir, save_source(model_dir, "decoder_only")


def test_a_run_initialised_from_a_causal_checkpoint_starts_as_a_prefix_lm_with_a_fresh_optimizer(
        causal_checkpoint, caplog):
    model_dir, saved = causal_checkpoint
    with caplog.at_level(logging.INFO):
        trainer, start = start_from(model_dir, "prefix_lm")
    assert int(start.state.step) == 0 and start.batches_consumed == 0
    got = {k: np.asarray(v) for k, v in flat_leaves(start.state.params).items()}
    assert_carried(got, saved, "decoder_only", "prefix_lm")
    assert "adapted:" in caplog.text and "converted: decoder_relpos_bias/rel_embedding" in caplog.text
    fresh = trainer.optimizer.tx.init(start.state.params)
    for a, b in zip(jax.tree.leaves(start.state.opt_state), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # the plans are tested in the fast loop (tests/model/test_adaptation.py)
@pytest.mark.parametrize("source,target", [("prefix_lm", "decoder_only"), ("encoder_only", "prefix_lm"),
                                           ("encoder_only", "decoder_only")])
def test_every_tensor_is_carried_and_the_relative_table_converted_as_documented(tmp_path, source, target):
    saved = save_source(str(tmp_path), source)
    assert_carried(restore_as(str(tmp_path), target), saved, source, target)


def test_decoder_only_to_encoder_decoder_is_refused_in_one_line_naming_tensors(causal_checkpoint):
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        restore_as(causal_checkpoint[0], "encoder_decoder")
    message = str(error.value)
    assert "\n" not in message and "encoder_layers_0" in message and "encoder-decoder" in message


def test_another_width_is_refused_naming_the_mismatched_tensors(causal_checkpoint):
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"differ in shape.*checkpoint \(32,\) vs model \(64,\)"):
        restore_as(causal_checkpoint[0], "prefix_lm", d_model=64)


def test_the_source_s_saved_config_decides_how_its_relative_table_is_read(tmp_path):
    """A prefix-LM with 16 buckets has as many table rows as a 32-bucket causal model: read with the
    target's settings (all a checkpoint without a saved config offers) it would be loaded unchanged.
    Its model_config.json says what it is, so the table is converted row by relative position."""
    saved = save_source(str(tmp_path), "prefix_lm", buckets=16, saved_config=True)
    _, start = start_from(str(tmp_path), "decoder_only")
    got = {k: np.asarray(v) for k, v in flat_leaves(start.state.params).items()}
    table = "decoder_relpos_bias/rel_embedding"
    expected = adaptation.convert_relpos_table(saved[table], "prefix", "causal", 32, 128, source_buckets=(16, 128))
    np.testing.assert_array_equal(got[table], expected)
    assert not np.array_equal(got[table], saved[table])
    for path in got:
        if path != table:
            np.testing.assert_array_equal(got[path], saved[path], err_msg=path)
