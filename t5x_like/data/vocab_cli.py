"""`t5x-like vocab`: train a SentencePiece model on a task's training text, once.

    t5x-like vocab --task shakespeare_causal_lm --size 8000 --out vocabs/
    t5x-like vocab --task shakespeare_causal_lm,sentiment_finefood --size 1000 --out vocabs/

writes vocabs/shakespeare_causal_lm.sp8000.model (and .vocab; for several tasks
their names are joined by "+") and prints the gin binding that loads it. If the
model is already there it is reused, not retrained.
The model reserves pad=0, eos=1, unk=2 (seqio's ids); the extra ids for
sentinels, UL2 mode tokens and [MASK] are added on load by
`t5x_like.data.vocab.sentencepiece_vocabulary` (vocab_size = size + 125).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from typing import Iterator

log = logging.getLogger(__name__)


def model_path(out_dir: str, task: str, size: int) -> str:
    """task: one task name, or several separated by commas."""
    return os.path.join(out_dir, f"{task.replace(',', '+')}.sp{size}.model")


def task_text(task_name: str, split: str = "train", max_sentences: int = 1_000_000) -> Iterator[str]:
    """Non-empty lines of every string feature of the task's source, in source order."""
    import seqio
    import tensorflow as tf

    import t5x_like.data  # noqa: F401  (registers the tasks)

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


def train(task: str, size: int, out_dir: str, max_sentences: int = 1_000_000,
          model_type: str = "unigram") -> str:
    """Trains (or finds) the model on the train text of `task` (comma-separated: each
    task's text in turn); returns its path."""
    path = model_path(out_dir, task, size)
    if os.path.exists(path):
        log.info("%s exists; not retraining", path)
        return path
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    prefix = path[: -len(".model")]
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain.from_iterable(
            task_text(name, "train", max_sentences) for name in task.split(",")), model_prefix=prefix,
        vocab_size=size, model_type=model_type, character_coverage=1.0, byte_fallback=True,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, shuffle_input_sentence=True,
        input_sentence_size=max_sentences, minloglevel=2)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="t5x-like vocab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="seqio task or mixture (its train split); several: comma-separated")
    parser.add_argument("--size", type=int, default=8000, help="pieces, before the 125 extra ids")
    parser.add_argument("--out", required=True, help="directory for the .model/.vocab files")
    parser.add_argument("--max_sentences", type=int, default=1_000_000)
    parser.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
    args = parser.parse_args(argv)
    if args.size < 260:  # byte fallback alone takes 256 pieces, plus pad/eos/unk
        parser.error(f"--size {args.size} is too small; byte fallback needs at least 260 pieces")
    existed = os.path.exists(model_path(args.out, args.task, args.size))
    try:
        path = train(args.task, args.size, args.out, args.max_sentences, args.model_type)
    except ValueError as e:
        print(f"t5x-like vocab: {e}", file=sys.stderr)
        return 1
    print(f"{'reused' if existed else 'trained'} {path}")
    print(f"gin: t5x_like.data.vocab.sentencepiece_vocabulary.path = '{os.path.abspath(path)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
