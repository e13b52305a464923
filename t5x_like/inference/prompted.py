"""Prompted zero-shot and few-shot evaluation: rank classification of every template of a task family.

Owns scoring one model on a `data.task_suite` family: for each template, every
(input, choice) row of its seqio task (`tasks.register_suite_tasks`) goes
through the layout's feature converter and `evaluation.make_score_fn`
(`Model.score`: the sum of the choice's token log-likelihoods, its EOS
included), and an example is correct when its gold choice scores highest. Where
the input goes is the converter's: the encoder for encoder-decoder, the
bidirectional prefix for prefix-LM, the causal context for decoder-only.
Reports per template the per-example correctness, and per family the accuracy
of each template, their median and spread. Intervals over seeds and examples
are the grid's (`experiments/stats.py`).
"""
from __future__ import annotations

import dataclasses
import functools
import statistics
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_like.data import feature_converters, pipeline, task_suite, tasks
from t5x_like.data import vocab as vocab_lib
from t5x_like.inference import evaluation
from t5x_like.model import model as model_lib

LENGTH_MULTIPLE = 16  # task lengths round up to it, so templates of similar length share compiled programs


@dataclasses.dataclass(frozen=True)
class TemplateResult:
    template: str
    task: str
    correct: tuple   # per example, in the family's example order

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))


@dataclasses.dataclass(frozen=True)
class FamilyResult:
    family: str
    chance: float
    num_fewshot: int
    templates: tuple  # TemplateResult per template

    @property
    def accuracies(self) -> dict[str, float]:
        return {t.template: t.accuracy for t in self.templates}

    @property
    def median(self) -> float:
        """The median over templates of each template's accuracy (T0's summary)."""
        return float(statistics.median(self.accuracies.values()))

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.accuracies.values()), max(self.accuracies.values())

    def as_dict(self) -> dict:
        return {"family": self.family, "chance": self.chance, "num_fewshot": self.num_fewshot,
                "median": self.median, "spread": list(self.spread), "accuracies": self.accuracies,
                "correct": {t.template: [bool(c) for c in t.correct] for t in self.templates}}


def choice_correctness(rows: Sequence[tuple], scores: Sequence[float]) -> list[bool]:
    """Per example (rows' idx, in order of first appearance): whether its highest-scoring choice
    is the gold one. rows are (inputs, choice, idx, is_correct), one per choice; ties go to the
    first choice, so a scorer that cannot tell the choices apart is at the gold-at-0 rate."""
    if len(rows) != len(scores):
        raise ValueError(f"{len(rows)} choices but {len(scores)} scores")
    best: dict[int, tuple[float, bool]] = {}
    for (_, _, idx, is_correct), score in zip(rows, scores):
        if idx not in best or float(score) > best[idx][0]:
            best[idx] = (float(score), bool(is_correct))
    return [correct for _, correct in best.values()]


def suite_task(family: str, template: str, num_fewshot: int = 0, seed: int = 0) -> str:
    """The seqio task of one template, registered (with the configured vocabulary) if it is not yet."""
    name = task_suite.task_name(family, template, num_fewshot)
    if name not in seqio.TaskRegistry.names() or seed:
        tasks.register_suite_tasks([family], num_fewshot, seed)
    return name


def task_lengths(rows: Sequence[tuple], vocabulary: seqio.Vocabulary, extra_inputs: int = 0) -> dict[str, int]:
    """{'inputs', 'targets'}: the longest of each (EOS included; `extra_inputs` more tokens for
    the inputs) over the rows, rounded up to LENGTH_MULTIPLE, so nothing is truncated."""
    def longest(texts, extra=0):
        most = max(len(vocabulary.encode(t)) + 1 for t in set(texts)) + extra
        return -(-most // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    return {"inputs": longest((r[0] for r in rows), extra_inputs), "targets": longest(r[1] for r in rows)}


def template_dataset(layout: str, task_name: str, split: str, lengths: dict[str, int],
                     mode_token: str | None = None):
    """The task's rows of `split`, unshuffled, as the layout's model features, enumerated (what
    `evaluation.make_score_fn` reads); with a UL2 mode token ("[S2S]", ...) first in every input
    (lengths must leave room for it)."""
    if layout == "encoder_only":
        raise ValueError("an encoder-only (MLM) model has no decoder to score answer choices with; "
                         "prompted evaluation needs decoder_only, prefix_lm or encoder_decoder")
    task = seqio.get_mixture_or_task(task_name)
    with pipeline.BUILD_LOCK:
        dataset = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1)
    if mode_token is not None:
        dataset = dataset.map(functools.partial(
            _prepend, vocab_lib.mode_token_id(mode_token, task.output_features["inputs"].vocabulary)))
    converter = feature_converters.for_layout(layout, True, pack=False)
    return converter(dataset, lengths).enumerate()


def _prepend(token_id: int, features: dict) -> dict:
    return {**features, "inputs": tf.concat([[token_id], features["inputs"]], axis=0)}


def evaluate_family(model: model_lib.Model, params, family: str, split: str = "validation",
                    num_fewshot: int = 0, seed: int = 0, batch_size: int = 16,
                    max_examples: int | None = None, mode_token: str | None = None) -> FamilyResult:
    """Rank classification of every template of `family` on the first `max_examples` examples
    of `split` (all: None), zero-shot or with `num_fewshot` training demonstrations; with
    `mode_token`, UL2's mode token first in every input."""
    score_fn = evaluation.make_score_fn(model, params, batch_size)
    results = []
    for template in task_suite.family(family).templates:
        task_name = suite_task(family, template.name, num_fewshot, seed)
        rows = task_suite.rank_classification_rows(family, template.name, split, num_fewshot, seed)
        if max_examples is not None:
            rows = [r for r in rows if r[2] < max_examples]
        vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
        lengths = task_lengths(rows, vocabulary, extra_inputs=int(mode_token is not None))
        dataset = template_dataset(model.config.layout, task_name, split, lengths, mode_token)
        scored = sorted(score_fn(dataset.take(len(rows))))
        results.append(TemplateResult(template.name, task_name,
                                      tuple(choice_correctness(rows, [s for _, s in scored]))))
    return FamilyResult(family, task_suite.family(family).chance, num_fewshot, tuple(results))
