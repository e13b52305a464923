"""Resume continues the input stream from the position saved in the checkpoint, without replay.

The position is the tf.data iterator's state (seqio tasks) or the next batch
index (synthetic), saved per process in each checkpoint's `data` item.
"""
from __future__ import annotations

import os
import threading
import weakref

import numpy as np
import pytest

from t5x_like.data import sources
from t5x_like.data.sources import DataRequest
from t5x_like.training import checkpoints
from t5x_like.training import run as train
from t5x_like.training.metrics_log import read_jsonl
from tests.training_fixtures import tiny_model, tiny_run

TASK = "shakespeare_causal_lm"


def request(**overrides) -> DataRequest:
    base = dict(task=TASK, task_feature_lengths={"targets": 32}, split="train", batch_size=4,
                shuffle=True, seed=1, pack=True)
    return DataRequest(**{**base, **overrides})


def assert_same_batches(a, b):
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("task", [TASK, "synthetic"])
def test_a_restored_stream_continues_where_the_saved_one_was(tmp_path, task):
    model = tiny_model(vocab_size=384)
    first = sources.default_dataset_fn(request(task=task), model)
    for _ in range(3):
        next(first)
    first.save_state(str(tmp_path))
    expected = [next(first) for _ in range(3)]
    second = sources.default_dataset_fn(request(task=task), model)
    second.restore_state(str(tmp_path))
    assert_same_batches([next(second) for _ in range(3)], expected)
    # and not simply the start of the stream
    fresh = next(sources.default_dataset_fn(request(task=task), model))
    assert any(not np.array_equal(fresh[k], expected[0][k]) for k in fresh)


def test_a_released_stream_deletes_its_tf_data_iterator_on_another_thread():
    # Deleting an iterator cut off mid-stream waits for its prefetching: up to 37 s lost to a
    # grid cell while another cell trained (docs/performance.md). The caller must not wait.
    batches = sources.default_dataset_fn(request(), tiny_model(vocab_size=384))
    next(batches)
    deleted_on, deleted = [], threading.Event()
    weakref.finalize(batches._iterator, lambda: (deleted_on.append(threading.current_thread().name),
                                                 deleted.set()))
    sources.release(batches)
    assert deleted.wait(timeout=60), "the iterator was never deleted: a reference to it is still held"
    assert deleted_on == ["tf.data iterator release"]
    with pytest.raises(ValueError, match="released"):
        next(batches)  # no silent restart of the stream


def test_a_tf_data_position_saved_by_other_process_count_is_refused_in_one_line(tmp_path):
    model = tiny_model(vocab_size=384)
    saved = sources.default_dataset_fn(request(shard_id=1, num_shards=2, batch_size=2), model)
    next(saved)
    saved.save_state(str(tmp_path))
    other = sources.default_dataset_fn(request(), model)
    with pytest.raises(sources.DataStateMismatchError, match=r"saved by 2 process\(es\) and this run has 1"):
        other.restore_state(str(tmp_path))


def test_synthetic_position_resumes_on_any_process_count(tmp_path):
    model = tiny_model()
    whole = sources.synthetic_batches(request(task="synthetic", batch_size=4), model)
    next(whole)
    whole.save_state(str(tmp_path))
    expected = next(whole)
    half = sources.synthetic_batches(request(task="synthetic", batch_size=2, shard_id=1, num_shards=2), model)
    half.restore_state(str(tmp_path))
    got = next(half)
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key][2:])


def recording_dataset_fn(requests: list):
    def dataset_fn(req, model):
        requests.append(req)
        return sources.default_dataset_fn(req, model)
    return dataset_fn


def losses(model_dir) -> list[float]:
    return [row["loss"] for row in read_jsonl(os.path.join(model_dir, "metrics.jsonl"), "train")]


@pytest.mark.slow
def test_resume_reads_the_saved_position_instead_of_replaying_and_matches_the_uninterrupted_run(
        tmp_path, persistent_compilation_cache):
    overrides = dict(model=tiny_model(vocab_size=384), mixture_or_task_name=TASK, batch_size=4,
                     checkpoint_period=3)
    train.train(tiny_run(tmp_path / "straight", train_steps=6, **overrides))
    train.train(tiny_run(tmp_path / "resumed", train_steps=3, **overrides))
    requests: list = []
    train.train(tiny_run(tmp_path / "resumed", train_steps=6, dataset_fn=recording_dataset_fn(requests),
                         **overrides))
    assert [r.start_batch for r in requests] == [0], "the resumed run replayed the stream"
    assert os.path.isdir(tmp_path / "resumed" / "checkpoints" / "3" / checkpoints.DATA_ITEM)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


@pytest.mark.slow
def test_a_stream_that_cannot_save_its_position_is_replayed_on_resume(tmp_path, persistent_compilation_cache):
    requests: list = []

    def dataset_fn(req, model):  # a generator cannot save its position: the run falls back to skipping
        requests.append(req)
        return (batch for batch in sources.synthetic_batches(req, model))
    train.train(tiny_run(tmp_path / "straight", train_steps=6))
    train.train(tiny_run(tmp_path / "run", train_steps=2, dataset_fn=dataset_fn))
    train.train(tiny_run(tmp_path / "run", train_steps=4, dataset_fn=dataset_fn))
    assert [r.start_batch for r in requests] == [0, 0, 2]
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "2" / checkpoints.DATA_ITEM)
    # a checkpoint that has a saved position, resumed with a stream that cannot take it: replayed too
    train.train(tiny_run(tmp_path / "saved", train_steps=4))
    assert os.path.isdir(tmp_path / "saved" / "checkpoints" / "4" / checkpoints.DATA_ITEM)
    requests.clear()
    train.train(tiny_run(tmp_path / "saved", train_steps=6, dataset_fn=dataset_fn))
    assert [r.start_batch for r in requests] == [0, 4]
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")[:4]
    assert losses(tmp_path / "saved") == losses(tmp_path / "straight")


def test_a_damaged_data_position_falls_back_to_the_previous_checkpoint_and_its_position(
        tmp_path, caplog, persistent_compilation_cache):
    from t5x_like.training import partitioning
    config = tiny_run(tmp_path / "run", train_steps=6, checkpoint_period=2)
    train.train(config)
    (tmp_path / "run" / "checkpoints" / "6" / checkpoints.DATA_ITEM / "synthetic.json").write_text("{not json")
    trainer = train.build_trainer(config, partitioning.make_mesh((1, 1, 1)))
    checkpointer = train.build_checkpointer(config)
    batches = train.make_batches(config, "train", 0, train=True)
    start = train.restore_or_init_state(trainer, checkpointer, batches=batches)
    checkpointer.close()
    assert int(start.state.step) == 4 and start.stream_restored and not start.stream_needs_rebuild()
    assert "checkpoint step 6 is unreadable" in caplog.text
    expected = next(sources.synthetic_batches(request(task="synthetic", batch_size=8, seed=config.seed, start_batch=4), config.model))
    got = next(batches)
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key])
