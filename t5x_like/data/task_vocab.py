"""Which vocabulary a registered task or mixture uses, and whether a model's embedding holds it.

Owns `task_vocabulary` and `check_model_vocab_size`: the one check, made before
anything is compiled or written, that a model has an embedding row for every id
its task can produce (`t5x-like train` through `TrainConfig.validate`, and
`t5x-like eval`). Light to import: seqio and the task registry load on the first
call for a seqio task; synthetic tasks ('synthetic*') and unknown names (reported
elsewhere, with close matches) are not checked.
"""
from __future__ import annotations

from typing import Any

from t5x_like.data.sources import SYNTHETIC_PREFIX


def task_vocabulary(name: str) -> Any | None:
    """The seqio vocabulary of a task's targets (of a mixture: its subtasks' largest); None
    for synthetic and unregistered names."""
    if name.startswith(SYNTHETIC_PREFIX):
        return None
    import seqio  # deferred: synthetic runs never load TensorFlow

    from t5x_like.data import tasks  # noqa: F401  (deferred: loads TensorFlow; registers the tasks)
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        return None
    subtasks = seqio.get_subtasks(seqio.get_mixture_or_task(name))
    return max((task.output_features["targets"].vocabulary for task in subtasks), key=lambda v: v.vocab_size)


def check_model_vocab_size(name: str, model_vocab_size: int) -> None:
    """ValueError, one line naming both sizes and the fix, if a model of `model_vocab_size`
    embedding rows cannot hold the ids of task `name`'s vocabulary."""
    vocabulary = task_vocabulary(name)
    if vocabulary is None:
        return
    from t5x_like.data import vocab  # deferred: loads seqio (TensorFlow), already loaded above

    if model_vocab_size >= vocab.ids_used(vocabulary):
        return
    rows = vocab.embedding_rows(vocabulary)
    raise ValueError(
        f"the model's vocab_size {model_vocab_size} is smaller than the vocabulary of {name} "
        f"({vocab.describe(vocabulary)}): set --gin.TransformerConfig.vocab_size={rows} "
        f"(vocab.embedding_rows: the {vocab.ids_used(vocabulary)} ids it uses rounded up to a multiple of 128)")
