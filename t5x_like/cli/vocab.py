"""`t5x-like vocab`: train a SentencePiece model on a task's training text, once.

    t5x-like vocab --task shakespeare_causal_lm --size 8000 --out vocabs/
    t5x-like vocab --task shakespeare_causal_lm,sentiment_finefood --size 1000 --out vocabs/

writes vocabs/shakespeare_causal_lm.sp8000.model (and .vocab; for several tasks
their names are joined by "+") and prints how to load it. If the
model is already there it is reused, not retrained.
The model reserves pad=0, eos=1, unk=2 (seqio's ids); the extra ids for
sentinels, UL2 mode tokens and [MASK] are added on load by
`t5x_like.data.vocab.sentencepiece_vocabulary` (vocab_size = size + 125).
"""
from __future__ import annotations

import argparse
import os
import sys

from t5x_like.data.vocab_training import model_path, train_sentencepiece


def main(argv: list[str] | None = None) -> int:
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
        path = train_sentencepiece(args.task, args.size, args.out, args.max_sentences, args.model_type)
    except ValueError as e:
        print(f"t5x-like vocab: {e}", file=sys.stderr)
        return 1
    print(f"{'reused' if existed else 'trained'} {path}")
    print(f"use it for every task with --gin.t5x_like.data.tasks.vocabulary.sentencepiece_model='{os.path.abspath(path)}' "
          f"(in Python: t5x_like.data.vocab.sentencepiece_vocabulary(path))")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
