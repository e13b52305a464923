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

Calibration (`calibration="content_free"`): a choice's score becomes its
log-likelihood after the prompt minus its log-likelihood after the same
template with the example's fields left empty (the content-free prompt of
Zhao et al. 2021; a pointwise mutual information between the example and the
choice, as Holtzman et al. 2021's domain-conditional PMI). A model that
prefers one answer string whatever the example says (' great' over
' not great') then no longer answers by that preference alone. Templates whose
prompt reads no example field (word order's) have nothing to calibrate and
keep their raw scores.
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
CALIBRATIONS = ("none", "content_free")


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
    calibration: str = "none"

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
                "calibration": self.calibration, "median": self.median, "spread": list(self.spread),
                "accuracies": self.accuracies,
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


def suite_task(family: str, template: str, num_fewshot: int = 0, seed: int = 0, content_free: bool = False) -> str:
    """The seqio task of one template, registered (with the configured vocabulary) if it is not yet."""
    name = task_suite.task_name(family, template, num_fewshot, content_free)
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


def template_scores(score_fn, layout: str, family: str, template: str, split: str = "validation",
                    num_fewshot: int = 0, seed: int = 0, max_examples: int | None = None,
                    content_free: bool = False, mode_token: str | None = None) -> tuple[list, np.ndarray]:
    """(rows, score per row) of one template's seqio task (`task_suite.rank_classification_rows`
    order) on the first `max_examples` examples, with `mode_token` (UL2's) first in every input;
    score_fn is `evaluation.make_score_fn`'s."""
    rows = task_suite.rank_classification_rows(family, template, split, num_fewshot, seed, content_free)
    if max_examples is not None:
        rows = [r for r in rows if r[2] < max_examples]
    task_name = suite_task(family, template, num_fewshot, seed, content_free)
    vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    lengths = task_lengths(rows, vocabulary, extra_inputs=int(mode_token is not None))
    dataset = template_dataset(layout, task_name, split, lengths, mode_token)
    return rows, np.array([score for _, score in sorted(score_fn(dataset.take(len(rows))))])


def evaluate_family(model: model_lib.Model, params, family: str, split: str = "validation",
                    num_fewshot: int = 0, seed: int = 0, batch_size: int = 16,
                    max_examples: int | None = None, calibration: str = "none",
                    mode_token: str | None = None) -> FamilyResult:
    """Rank classification of every template of `family` on the first `max_examples` examples
    of `split` (all: None), zero-shot or with `num_fewshot` training demonstrations; scores raw
    or calibrated against the content-free prompt (see the module docstring); with `mode_token`,
    UL2's mode token first in every input."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {calibration!r}; expected one of {CALIBRATIONS}")
    score_fn = evaluation.make_score_fn(model, params, batch_size)
    scores = functools.partial(template_scores, score_fn, model.config.layout, family, split=split,
                               num_fewshot=num_fewshot, seed=seed, max_examples=max_examples, mode_token=mode_token)
    results = []
    for template in task_suite.family(family).templates:
        rows, choice_scores = scores(template.name)
        if calibration == "content_free" and template.fields:
            choice_scores = choice_scores - scores(template.name, content_free=True)[1]
        results.append(TemplateResult(template.name, task_suite.task_name(family, template.name, num_fewshot),
                                      tuple(choice_correctness(rows, choice_scores))))
    return FamilyResult(family, task_suite.family(family).chance, num_fewshot, tuple(results), calibration)
