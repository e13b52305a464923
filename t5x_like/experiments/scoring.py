"""Scoring a finished cell: the shared metric every arm is compared on, and downstream tasks.

The shared metric: the negative log-likelihood per target token of the
`eval_task` validation examples (the same examples, in the same order, for
every arm with that eval task), given each example's inputs. Every layout
with a decoder can be scored on a prefix-LM task; encoder-only arms are
scored on an MLM task (NLL of the masked tokens). Downstream tasks are
finetuned from the cell's checkpoint (or scored zero-shot) and scored with
their seqio metrics. Parameters are read with `training.checkpoints.load_params`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os

import jax
import numpy as np

from t5x_like.data import pipeline, tasks
from t5x_like.experiments.cells import Cell, GridCache
from t5x_like.experiments.spec import Experiment, arm_lengths
from t5x_like.inference import evaluation
from t5x_like.model.features import matched_feature_lengths
from t5x_like.training import checkpoints
from t5x_like.training import run as train_lib
from t5x_like.training.run import TrainConfig
from t5x_like.training.trainer import StopRequested

log = logging.getLogger(__name__)


def score_shared_metric(config: TrainConfig, eval_task: str, inputs_length: int, targets_length: int,
                        num_examples: int, cache: GridCache | None = None) -> list[float]:
    """Per-example mean NLL of the eval task's target tokens, for the first eval_examples."""
    model = config.model
    lengths = matched_feature_lengths(model.config.layout, inputs_length, targets_length,
                                      task_has_inputs=tasks.task_has_inputs(eval_task))
    params = checkpoints.load_params(config.model_dir, model.abstract_params()).params
    score = cache.programs.score_fn(model) if cache else jax.jit(model.score)
    per_example: list[float] = []
    for batch in score_batches(eval_task, lengths, model.config.layout, num_examples, cache):
        log_likelihood = np.asarray(score(params, batch))
        _, weights = model.targets_and_weights(batch)
        tokens = np.maximum(np.asarray(weights).sum(-1), 1.0)
        per_example.extend((-log_likelihood / tokens).tolist())
    if len(per_example) < num_examples:
        log.warning("%s has only %d validation examples (asked %d)", eval_task, len(per_example), num_examples)
    return per_example[:num_examples]


SCORE_BATCH_SIZE = 16


def score_batches(eval_task: str, lengths: dict[str, int], layout: str, num_examples: int,
                  cache: GridCache | None = None) -> list[dict]:
    """The first validation batches of `eval_task` that hold `num_examples` examples (all of
    them if it has fewer), unshuffled: the same for every model of this layout and lengths."""
    key = (eval_task, tuple(sorted(lengths.items())), layout, num_examples)
    if cache is not None and key in cache.score_batches:
        return cache.score_batches[key]
    dataset = pipeline.get_dataset(eval_task, lengths, split="validation", layout=layout,
                                   batch_size=SCORE_BATCH_SIZE, shuffle=False, seed=0, pack=False, num_epochs=1)
    # Read to its end (take): deleting an iterator cut off mid-stream waits for its prefetching (sources.release).
    batches = list(dataset.take(math.ceil(num_examples / SCORE_BATCH_SIZE)).as_numpy_iterator())
    if cache is not None:
        cache.score_batches[key] = batches
    return batches


def evaluate_downstream(experiment: Experiment, cell: Cell, config: TrainConfig, task: str,
                        cache: GridCache | None = None, stop: StopRequested | None = None) -> dict[str, float]:
    """The task's metrics for one run: finetuned (params from the run) or zero-shot."""
    model = config.model
    lengths = matched_feature_lengths(model.config.layout, *arm_lengths(experiment, cell.arm),
                                      task_has_inputs=tasks.task_has_inputs(task))
    source = config.model_dir
    if experiment.downstream_steps:
        finetune = dataclasses.replace(
            config, model_dir=os.path.join(cell.run_dir, "downstream", task), mixture_or_task_name=task,
            task_feature_lengths=lengths, train_steps=experiment.downstream_steps,
            init_checkpoint=config.model_dir, eval_split=None, checkpoint_period=experiment.downstream_steps)
        train_lib.train(finetune, cache.programs if cache else None, stop)
        source = finetune.model_dir
    params = checkpoints.load_params(source, model.abstract_params()).params
    result = evaluation.evaluate(model, params, task, "validation", lengths, batch_size=16,
                                 max_examples=experiment.eval_examples)
    return result.metrics.get(task, {})
