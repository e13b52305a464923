"""Data sources for training: what the loop asks for (`DataRequest`) and who answers.

A data source is a function (request, model) -> iterator over dicts of numpy
arrays, the model's feature-converted batches, `batch_size` rows each (this
process's rows of the global batch). Two ship here:

  seqio_batches      a registered seqio task or mixture through
                     `pipeline.get_dataset` (deterministic given task, seed, shard)
  synthetic_batches  in-memory arithmetic progressions (tasks named 'synthetic*'),
                     for tests and benchmarks; no TensorFlow work

`model` is only used through `model.config` (layout, vocab_size) and
`model.dummy_batch` (the feature names and shapes), so this module does not
import the model package. seqio and TensorFlow load only when a seqio task is
asked for.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from typing import Any

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


def synthetic_batches(request: DataRequest, model: Any) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic in-memory batches (tasks named 'synthetic*'), for tests and benchmarks.

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
    i = request.start_batch
    while True:
        rng = np.random.default_rng([request.seed, split_id, i])
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
            elif key.endswith(("_loss_weights", "_segment_ids")):
                batch[key] = np.ones_like(value)
            elif key.endswith("_positions"):
                batch[key] = np.broadcast_to(np.arange(length, dtype=value.dtype), value.shape).copy()
            elif key == "decoder_causal_attention":  # bidirectional over the inputs part
                batch[key] = (np.arange(length)[None] <= lengths.get("inputs", 0)).astype(value.dtype)
                batch[key] = np.broadcast_to(batch[key], value.shape).copy()
            else:
                batch[key] = value
        if "decoder_target_tokens" in batch and "decoder_causal_attention" in batch:
            # loss on the targets part only, as the prefix-LM converter does
            batch["decoder_loss_weights"] = (1 - batch["decoder_causal_attention"]).astype(np.int32)
        lo = request.shard_id * request.batch_size
        yield {k: v[lo:lo + request.batch_size] for k, v in batch.items()}
        i += 1
        if not request.repeat and i >= 1000:
            return


def seqio_batches(request: DataRequest, model: Any) -> Iterator[dict[str, np.ndarray]]:
    """Batches from `t5x_like.data.get_dataset` (a deterministic tf.data pipeline)."""
    from t5x_like.data import pipeline  # deferred: loads TensorFlow and registers the tasks
    ds = pipeline.get_dataset(request.task, request.task_feature_lengths, request.split,
                          layout=model.config.layout, batch_size=request.batch_size,
                          shuffle=request.shuffle, seed=request.seed, shard_id=request.shard_id,
                          num_shards=request.num_shards, pack=request.pack,
                          num_epochs=None if request.repeat else 1)
    return iter(ds.skip(request.start_batch).as_numpy_iterator())


def default_dataset_fn(request: DataRequest, model: Any) -> Iterator[dict[str, np.ndarray]]:
    if request.task.startswith(SYNTHETIC_PREFIX):
        return synthetic_batches(request, model)
    return seqio_batches(request, model)


def task_has_split(name: str, split: str) -> bool:
    """Whether every subtask of a task or mixture has `split` (synthetic tasks have them all)."""
    if name.startswith(SYNTHETIC_PREFIX):
        return True
    import seqio  # deferred: synthetic runs never load TensorFlow

    from t5x_like.data import tasks  # noqa: F401  (deferred with seqio: registers the tasks)
    return all(split in task.splits for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)))


def check_task_name(name: str) -> None:
    """Raises ValueError (one line, close matches) for an unregistered task/mixture."""
    if name.startswith(SYNTHETIC_PREFIX):
        return
    import seqio  # deferred: synthetic runs never load TensorFlow

    from t5x_like.data import tasks  # noqa: F401  (deferred with seqio: registers the tasks)
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:20]) or 'none'}"
        raise ValueError(f"unknown task or mixture {name!r}{hint}")
