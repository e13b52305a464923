"""`get_dataset`: a task or mixture, converted for one layout, batched and sharded.

Owns the single entry point the trainer and evaluator call, and the checks
that turn a wrong name, split or length into one readable error before any
tf.data graph is built. The work itself is `seqio.get_dataset`.
"""
from __future__ import annotations

import threading
from typing import Mapping

import seqio
import tensorflow as tf

from t5x_like.data import (
    feature_converters,
    tasks,  # noqa: F401  (registers the tasks get_dataset looks up)
)

# seqio hands the objectives' random maps their seeds from a process-global counter
# (seqio.utils.map_seed_manager) while a pipeline is built: two pipelines built at once in
# threads (grid cells trained side by side) would interleave their seeds.
BUILD_LOCK = threading.Lock()  # hold it around any seqio get_dataset call


def _provider(name: str) -> seqio.Task | seqio.Mixture:
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        raise ValueError(f"no seqio task or mixture named {name!r}; registered: "
                         f"{', '.join(n for n in known if '_ul2_' not in n)}") from None


def _check(provider, task_feature_lengths: Mapping[str, int], split: str, layout: str,
           batch_size: int, shard_id: int, num_shards: int) -> None:
    splits = provider.splits if isinstance(provider, seqio.Task) else set().union(
        *(t.splits for t in provider.tasks))
    if split not in splits:
        raise ValueError(f"{provider.name} has no split {split!r}; it has {sorted(splits)}")
    expected = sorted(provider.output_features)
    if sorted(task_feature_lengths) != expected:
        raise ValueError(f"{provider.name} needs task_feature_lengths for {expected}, got "
                         f"{dict(task_feature_lengths)} (see model.features.matched_feature_lengths)")
    if any(int(v) < 2 for v in task_feature_lengths.values()):
        raise ValueError(f"every task feature length must be >= 2, got {dict(task_feature_lengths)}")
    if layout not in feature_converters.LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {feature_converters.LAYOUTS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard_id < num_shards, got shard {shard_id} of {num_shards}")


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                split: str = "train", layout: str = "decoder_only", batch_size: int = 8,
                shuffle: bool = True, seed: int | None = 0, shard_id: int = 0, num_shards: int = 1,
                pack: bool = True, num_epochs: int | None = 1) -> tf.data.Dataset:
    """Batches of model features for `layout` (see feature_converters.for_layout).

    Deterministic for a fixed seed (shuffling and every objective's randomness);
    shard `shard_id` of `num_shards` holds every num_shards-th example of the
    source (of a prepared TFDS corpus: its own contiguous 1/num_shards of the split,
    read at the source), so hosts see disjoint data. num_epochs=None repeats forever (the
    objectives draw new corruption each epoch). Incomplete last batches are dropped.
    Safe to call from several threads: pipelines are built one at a time.
    """
    provider = _provider(mixture_or_task_name)
    _check(provider, task_feature_lengths, split, layout, batch_size, shard_id, num_shards)
    converter = feature_converters.for_layout(layout, "inputs" in provider.output_features, pack)
    shard_info = seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None
    with BUILD_LOCK:
        return seqio.get_dataset(
            provider, task_feature_lengths=dict(task_feature_lengths), feature_converter=converter,
            dataset_split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
            num_epochs=num_epochs, batch_size=batch_size, verbose=False)
