"""Training a SentencePiece vocabulary on the text of registered tasks (`t5x-like vocab`).

The model reserves pad=0, eos=1, unk=2 (seqio's ids) and uses byte fallback;
the extra ids for sentinels, UL2 mode tokens and [MASK] are added on load by
`vocab.sentencepiece_vocabulary` (vocab_size = size + 125). A model already
on disk is reused, not retrained.
"""
from __future__ import annotations

import itertools
import logging
import os
from typing import Iterator

import sentencepiece as spm
import seqio
import tensorflow as tf

from t5x_like.data import tasks  # noqa: F401  (registers the tasks whose text is read)

log = logging.getLogger(__name__)


def model_path(out_dir: str, task: str, size: int) -> str:
    """task: one task name, or several separated by commas."""
    return os.path.join(out_dir, f"{task.replace(',', '+')}.sp{size}.model")


def task_text(task_name: str, split: str = "train", max_sentences: int = 1_000_000) -> Iterator[str]:
    """Non-empty lines of every string feature of the task's source, in source order."""
    provider = seqio.get_mixture_or_task(task_name)
    task = provider if isinstance(provider, seqio.Task) else provider.tasks[0]
    ds = task.source.get_dataset(split=split, shuffle=False)
    keys = [k for k, spec in ds.element_spec.items() if spec.dtype == tf.string and spec.shape.rank == 0]
    count = 0
    for example in ds.as_numpy_iterator():
        for key in keys:
            for line in example[key].decode("utf-8", errors="replace").splitlines():
                if line.strip():
                    yield line
                    count += 1
                    if count >= max_sentences:
                        return


def train_sentencepiece(task: str, size: int, out_dir: str, max_sentences: int = 1_000_000,
          model_type: str = "unigram") -> str:
    """Trains (or finds) the model on the train text of `task` (comma-separated: each
    task's text in turn); returns its path."""
    path = model_path(out_dir, task, size)
    if os.path.exists(path):
        log.info("%s exists; not retraining", path)
        return path
    os.makedirs(out_dir, exist_ok=True)
    prefix = path[: -len(".model")]
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain.from_iterable(
            task_text(name, "train", max_sentences) for name in task.split(",")), model_prefix=prefix,
        vocab_size=size, model_type=model_type, character_coverage=1.0, byte_fallback=True,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, shuffle_input_sentence=True,
        input_sentence_size=max_sentences, minloglevel=2)
    return path
