"""Helpers shared by the tests/test_data_*.py files (not a conftest: import what you use)."""
from __future__ import annotations

import numpy as np
import seqio

import t5x_like.data.tasks  # noqa: F401  (registers the tasks)
from t5x_like.data import objectives, task_sources, tasks
from t5x_like.data import vocab as vocab_lib

VOCAB = vocab_lib.default_vocabulary()
SENTINELS = set(vocab_lib.sentinel_ids())
EOS = VOCAB.eos_id


def random_texts(count: int, seed: int = 0, min_words: int = 1, max_words: int = 400) -> list[str]:
    """Reproducible word soup of varied lengths, with some non-ASCII characters."""
    rng = np.random.RandomState(seed)
    words = ["the", "king", "doth", "wake", "tonight", "and", "takes", "his", "rouse", "é", "ñandú", "—", "o"]
    return [" ".join(rng.choice(words, size=rng.randint(min_words, max_words + 1))) for _ in range(count)]


def objective_task(preprocessors: list, texts: list[str], with_inputs: bool = True,
                   name: str = "test_objective", vocabulary: seqio.Vocabulary = VOCAB) -> seqio.Task:
    """An unregistered task running `preprocessors` after tokenizing `texts` (split "train")."""
    source = task_sources.InMemorySource(lambda split: texts, ["text"], ["train"])
    return seqio.Task(name, source=source, output_features=tasks._features(vocabulary, with_inputs),
                      preprocessors=[tasks._TEXT_TO_TARGETS, tasks._TOKENIZE, *preprocessors])


def run(task: seqio.Task, lengths: dict[str, int], seed: int = 0, shuffle: bool = False) -> list[dict]:
    ds = task.get_dataset(lengths, split="train", shuffle=shuffle, seed=seed)
    return list(ds.as_numpy_iterator())


def strip_eos(ids) -> list[int]:
    ids = [int(i) for i in ids]
    assert ids and ids[-1] == EOS, f"expected a trailing EOS in {ids[-5:]}"
    return ids[:-1]


def tokens_of(texts: list[str]) -> list[int]:
    return [t for text in texts for t in VOCAB.encode(text)]


__all__ = ["EOS", "SENTINELS", "VOCAB", "objective_task", "objectives", "random_texts", "run",
           "strip_eos", "tokens_of"]
