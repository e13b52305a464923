"""seqio metric functions for the downstream tasks.

Each takes the postprocessed targets and predictions (or scores) as seqio's
Evaluator passes them and returns {name: value}, values in percent.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Share of predictions equal to their target."""
    _same_length(targets, predictions)
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Share of predictions equal to their target after stripping surrounding whitespace."""
    _same_length(targets, predictions)
    hits = [str(t).strip() == str(p).strip() for t, p in zip(targets, predictions)]
    return {"exact_match": 100.0 * float(np.mean(hits))}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, exponential smoothing)."""
    import sacrebleu  # imported here: only evaluation needs it

    _same_length(targets, predictions)
    return {"bleu": sacrebleu.corpus_bleu([str(p) for p in predictions], [[str(t) for t in targets]]).score}


def rank_classification_accuracy(targets: Sequence[tuple[int, bool]],
                                 scores: Sequence[float]) -> dict[str, float]:
    """Accuracy of picking, per example `idx`, the candidate with the highest score.

    targets are (idx, is_correct) pairs, one per candidate (see
    tasks.rank_classification_targets); scores the model's log-likelihoods.
    """
    _same_length(targets, scores)
    best: dict[int, tuple[float, bool]] = {}
    for (idx, is_correct), score in zip(targets, scores):
        if int(idx) not in best or float(score) > best[int(idx)][0]:
            best[int(idx)] = (float(score), bool(is_correct))
    return {"accuracy": 100.0 * float(np.mean([c for _, c in best.values()]))}


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} targets but {len(b)} predictions")
    if not len(a):
        raise ValueError("no examples to score")
