"""Data sources for training: what the loop asks for (`DataRequest`) and who answers.

A data source is a function (request, model) -> iterator over dicts of numpy
arrays, the model's feature-converted batches, `batch_size` rows each (this
process's rows of the global batch). Two ship here:

  seqio_batches      a registered seqio task or mixture through
                     `pipeline.get_dataset` (deterministic given task, seed, shard)
  synthetic_batches  in-memory arithmetic progressions (tasks named 'synthetic*'),
                     for tests and benchmarks; no TensorFlow work

Both return a `ResumableBatches`: an iterator whose position can be written to
a directory and read back (`save_state` / `restore_state`), so a resumed run
continues the stream at the cost of reading one small state, not of replaying
every batch already consumed. seqio batches save the tf.data iterator
(`tf.train.Checkpoint`: the positions in the sources, shuffle and packing
buffers, prefetched elements), one state per process; synthetic batches save
the next global batch index. Any other iterator is accepted too: a run resumed
from it skips `start_batch` batches instead. `release(batches)` ends a stream
the caller is done with (seqio batches give up their tf.data iterator on a
thread of its own).

`model` is only used through `model.config` (layout, vocab_size) and
`model.dummy_batch` (the feature names and shapes, and a prefix-LM's prefix
features: model/features.py has the rule), so this module does not
import the model package. seqio and TensorFlow load only when a seqio task is
asked for.
"""
from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

SYNTHETIC_PREFIX = "synthetic"


@dataclasses.dataclass(frozen=True)
class DataRequest:
    """What the loop asks a data source for. batch_size is per process."""

    task: str
    task_feature_lengths: dict[str, int]
    split: str
    batch_size: int
    shuffle: bool
    seed: int
    pack: bool
    shard_id: int = 0
    num_shards: int = 1
    start_batch: int = 0  # batches of this stream already consumed (resume)
    repeat: bool = True


# A data source: (request, model) -> iterator over dicts of numpy arrays with
# the model's feature-converted keys, `batch_size` rows each.
DatasetFn = Callable[[DataRequest, Any], Iterator[dict[str, np.ndarray]]]


class DataStateMismatchError(ValueError):
    """A saved data position that this stream cannot continue from (another process count)."""


@runtime_checkable
class ResumableBatches(Protocol):
    """An iterator of batches whose position can be saved and restored.

    save_state(directory) writes this process's position into `directory` (which
    every process shares); restore_state(directory) continues from the position
    saved there, raising DataStateMismatchError when it cannot (one line, why)."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def save_state(self, directory: str) -> None: ...

    def restore_state(self, directory: str) -> None: ...


def _state_name(shard_id: int, num_shards: int) -> str:
    return f"process_{shard_id:05d}-of-{num_shards:05d}"


def _saved_process_counts(directory: str) -> list[int]:
    names = (os.path.basename(p) for p in glob.glob(os.path.join(directory, "process_*")))
    return sorted({int(m.group(1)) for m in (re.search(r"-of-(\d+)", n) for n in names) if m})


class SyntheticBatches:
    """`synthetic_batches` as an object: its position is the next global batch index,
    the same on every process, so it resumes on any number of processes."""

    def __init__(self, request: DataRequest, model: Any):
        self._request, self._model = request, model
        self._next_batch = request.start_batch
        self._batches = self._generate()

    def __iter__(self) -> "SyntheticBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._batches)

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        while self._request.repeat or self._next_batch < 1000:
            batch = synthetic_batch(self._request, self._model, self._next_batch)
            self._next_batch += 1
            yield batch

    def save_state(self, directory: str) -> None:
        if self._request.shard_id == 0:
            with open(os.path.join(directory, "synthetic.json"), "w") as f:
                json.dump({"next_batch": self._next_batch}, f)

    def restore_state(self, directory: str) -> None:
        with open(os.path.join(directory, "synthetic.json")) as f:
            self._next_batch = int(json.load(f)["next_batch"])
        self._batches = self._generate()


class TfDataBatches:
    """numpy batches from a tf.data dataset; the iterator's state is saved with
    `tf.train.Checkpoint`, one file set per process (its shard of the stream)."""

    def __init__(self, dataset: Any, shard_id: int, num_shards: int):
        import tensorflow as tf  # deferred: only seqio sources load TensorFlow
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
        self._name = _state_name(shard_id, num_shards)
        self._num_shards = num_shards

    def __iter__(self) -> "TfDataBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            raise ValueError("this stream of batches was released (close()); build another")
        return {k: v.numpy() for k, v in next(self._iterator).items()}

    def save_state(self, directory: str) -> None:
        self._checkpoint.write(os.path.join(directory, self._name))

    def close(self) -> None:
        """Gives up the tf.data iterator, deleted on a thread of its own. Deleting one stops
        and waits for its background work (prefetching, parallel maps); with the cores busy
        with another run's steps (grid cells trained side by side) that wait took 0.5-37 s,
        all of it lost to the caller's run (docs/performance.md). The interpreter waits for
        the thread at exit. A second call does nothing."""
        if self._iterator is None:
            return
        held = [self._iterator]  # the only reference left: dropped by held.clear(), on the thread
        self._iterator = self._checkpoint = None
        threading.Thread(target=held.clear, name="tf.data iterator release").start()

    def restore_state(self, directory: str) -> None:
        counts = _saved_process_counts(directory)
        if counts and self._num_shards not in counts:
            raise DataStateMismatchError(
                f"the data position in {directory} was saved by {counts[0]} process(es) and this run has "
                f"{self._num_shards}: each process continues its own shard of the stream, so resume with "
                f"{counts[0]} process(es), or start a new MODEL_DIR (init_checkpoint) to change the count")
        self._checkpoint.read(os.path.join(directory, self._name)).assert_consumed()


def release(batches: Iterator) -> None:
    """Ends a stream of batches the caller is done with: its `close()` if it has one
    (TfDataBatches, generators), without waiting for what that releases."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def synthetic_batches(request: DataRequest, model: Any) -> SyntheticBatches:
    """Deterministic in-memory batches (tasks named 'synthetic*'), for tests and benchmarks."""
    return SyntheticBatches(request, model)


def synthetic_batch(request: DataRequest, model: Any, index: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `index` of the synthetic stream.

    Row r of global batch i depends only on (seed, split, i, r): each row is an
    arithmetic progression mod the vocabulary with a random start and stride
    (learnable, so the loss falls). Every process computes the same global
    batch and keeps its own rows, so runs agree across process counts.
    """
    lengths = request.task_feature_lengths
    global_size = request.batch_size * request.num_shards
    template = model.dummy_batch(global_size, lengths)
    vocab = int(model.config.vocab_size)
    split_id = {"train": 0, "validation": 1, "test": 2}.get(request.split, 3)
    rng = np.random.default_rng([request.seed, split_id, index])
    batch = {}
    for key, value in template.items():
        n, length = value.shape
        if key.endswith("_tokens"):
            start = rng.integers(2, vocab, size=(n, 1))
            stride = rng.integers(1, 5, size=(n, 1))
            seq = 2 + (start + stride * np.arange(length)[None]) % (vocab - 2)
            if key == "decoder_input_tokens":  # shifted-right targets
                seq = np.concatenate([np.zeros((n, 1), seq.dtype), seq[:, :-1]], axis=1)
            batch[key] = seq.astype(value.dtype)
        elif key == "decoder_causal_attention" or (key == "decoder_loss_weights" and "decoder_causal_attention"
                                                     in template):
            batch[key] = value  # a prefix-LM's prefix and targets-only loss, as the model's dummy batch has them
        elif key.endswith(("_loss_weights", "_segment_ids")):
            batch[key] = np.ones_like(value)
        elif key.endswith("_positions"):
            batch[key] = np.broadcast_to(np.arange(length, dtype=value.dtype), value.shape).copy()
        else:
            batch[key] = value
    lo = request.shard_id * request.batch_size
    return {k: v[lo:lo + request.batch_size] for k, v in batch.items()}


def seqio_batches(request: DataRequest, model: Any) -> TfDataBatches:
    """Batches from `t5x_like.data.get_dataset` (a deterministic tf.data pipeline).
    `start_batch` > 0 draws and drops that many batches (a replay, for checkpoints
    without a saved position); resume restores the saved state and asks for 0."""
    from t5x_like.data import pipeline  # deferred: loads TensorFlow and registers the tasks
    ds = pipeline.get_dataset(request.task, request.task_feature_lengths, request.split,
                          layout=model.config.layout, batch_size=request.batch_size,
                          shuffle=request.shuffle, seed=request.seed, shard_id=request.shard_id,
                          num_shards=request.num_shards, pack=request.pack,
                          num_epochs=None if request.repeat else 1)
    batches = TfDataBatches(ds, request.shard_id, request.num_shards)
    for _ in range(request.start_batch):  # not ds.skip: the graph must stay the one a saved state fits
        next(batches)
    return batches


def default_dataset_fn(request: DataRequest, model: Any) -> Iterator[dict[str, np.ndarray]]:
    if request.task.startswith(SYNTHETIC_PREFIX):
        return synthetic_batches(request, model)
    return seqio_batches(request, model)


def task_has_split(name: str, split: str) -> bool:
    """Whether every subtask of a task or mixture has `split` (synthetic tasks have them all)."""
    if name.startswith(SYNTHETIC_PREFIX):
        return True
    import seqio  # deferred: synthetic runs never load TensorFlow

    from t5x_like.data import tasks  # deferred with seqio: registers the tasks
    tasks.register_on_request(name)
    return all(split in task.splits for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)))


def check_task_name(name: str) -> None:
    """Raises ValueError (one line, close matches) for an unregistered task/mixture."""
    if name.startswith(SYNTHETIC_PREFIX):
        return
    import seqio  # deferred: synthetic runs never load TensorFlow

    from t5x_like.data import tasks  # deferred with seqio: registers the tasks
    tasks.register_on_request(name)
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:20]) or 'none'}"
        raise ValueError(f"unknown task or mixture {name!r}{hint}")
