"""Runs on one device: corrupt checkpoints, finetune init, NaN and collapse stops, keep-best."""
import glob
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.training import checkpoints, optimizers, partitioning
from t5x_like.training import run as train
from tests.training_fixtures import tiny_run

pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")  # runs here recompile the same programs


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
        start = train.restore_or_init_state(trainer, checkpointer)
    state, consumed = start.state, start.batches_consumed
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
    start = train.restore_or_init_state(trainer, checkpointer, config.init_checkpoint)
    state, consumed = start.state, start.batches_consumed
    checkpointer.close()
    pre = checkpoints.load_params(str(tmp_path / "pre"), trainer.abstract_params).params
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
    assert "non-finite" not in capsys.readouterr().out  # an error, for the caller to show (the CLI: stderr)


def test_keep_best_keeps_lowest_validation_loss_besides_the_latest(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), keep=1, keep_best=True, async_save=False)
    tree = {"w": jnp.ones((2, 2))}
    for step, eval_loss in zip((1, 2, 3, 4), (3.0, 1.0, 2.0, 4.0)):
        ckpt.save(step, tree, tree, {"batches_consumed": step}, {"eval_loss": eval_loss})
    ckpt.close()
    assert ckpt.steps() == [2, 4]
    assert not ckpt.save(4, tree, tree, {}), "an existing step must never be overwritten"


@pytest.mark.slow  # a real corpus run to the end
def test_a_corpus_without_a_validation_split_trains_to_the_end_without_evaluation(tmp_path, caplog):
    from t5x_like.data import tasks
    from tests.training_fixtures import tiny_model
    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n\n" * 200)
    tasks.register_text_files_task("test_train_split_only", str(tmp_path / "corpus.txt"))
    config = tiny_run(tmp_path / "run", model=tiny_model(vocab_size=384), train_steps=4,
                      mixture_or_task_name="test_train_split_only", eval_split="validation", eval_period=2)
    with caplog.at_level(logging.WARNING):
        result = train.train(config)
    assert result.step == 4 and not result.eval_metrics
    assert "has no 'validation' split: training without evaluation" in caplog.text
    assert "4" in os.listdir(tmp_path / "run" / "checkpoints")


def test_a_run_that_collapses_without_nan_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    # Adafactor at a huge learning rate from step 5: the loss sits at ln(vocab) with no gradient, the
    # parameter norm explodes, nothing is NaN. Steps 2 and 4 were saved before; step 6 must not be.
    huge_from_step_5 = optimizers.adafactor(learning_rate=lambda step: jnp.where(step >= 4, 1e4, 1e-2))
    config = tiny_run(tmp_path / "run", train_steps=8, optimizer=huge_from_step_5)
    with pytest.raises(train.CollapsedRunError, match=r"training collapsed at step [56]: .*lower the learning rate"):
        train.train(config)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4"]


@pytest.mark.parametrize("field,value,message", [
    ("profile_steps", (3, 2), "profile_steps' END (>= START) must be >= 3, got 2"),
    ("profile_steps", (0, 2), "profile_steps' START must be >= 1"),
    ("profile_steps", 5, "must be (START, END)"),
    ("memory_profile_step", 0, "memory_profile_step must be >= 1"),
])
def test_a_bad_profiling_field_is_named(tmp_path, field, value, message):
    with pytest.raises(train.ConfigFieldError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_run(tmp_path, **{field: value}).check_fields()
