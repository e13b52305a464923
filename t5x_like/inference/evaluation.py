"""Evaluation of a trained model: load a checkpoint, predict, score, compute task metrics.

Owns: `load_checkpoint` (a model rebuilt from its MODEL_DIR's saved config,
and its params through `training.checkpoints.load_params`), `evaluate`, which
runs a task or mixture through `seqio.Evaluator` with

  predict_fn   greedy (or any `DecodeConfig`) generation with the KV cache,
               for tasks whose metrics read generated text (accuracy, exact
               match, BLEU);
  score_fn     per-example target log-likelihood (`Model.score`), for tasks
               whose metrics read scores, e.g. rank classification
               (`sentiment_finefood_rank`: one example per candidate label,
               the metric picks the highest-scoring one);

plus teacher-forced loss, perplexity and token accuracy for every task (also
those without metrics, such as pretraining tasks), and `evaluate_checkpoint`,
which does all of it for a checkpoint and builds the JSON report (what
`t5x-like eval` and infer runs print, then write). Does not own the metric functions
(each task's, `data/metrics.py`), the decoding search (`decoding.py`), or
reading the gin config of a run older than model_config.json (the command
line's: cli/gin_loading.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from t5x_like.data import feature_converters, pipeline
from t5x_like.data import tasks  # also registers the tasks evaluate looks up
from t5x_like.data.sources import check_task_name
from t5x_like.inference import decoding
from t5x_like.model import model as model_lib
from t5x_like.training import checkpoints
from t5x_like.training.checkpoints import CheckpointError  # also what callers of this module catch

log = logging.getLogger(__name__)



# --- loading ---------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedCheckpoint:
    model: model_lib.Model
    params: Any
    step: int
    model_dir: str
    task_feature_lengths: dict[str, int]  # the training run's, {} if unknown


def load_checkpoint(path: str, model: model_lib.Model | None = None,
                    task_feature_lengths: dict[str, int] | None = None) -> LoadedCheckpoint:
    """The checkpoint at `path` (MODEL_DIR, its checkpoints/ or a step folder): `model` (default:
    rebuilt from the MODEL_DIR's model_config.json, with the data settings it was trained
    with) and its params from the named or the newest good step (checkpoints.load_params:
    damaged steps skipped with a warning, nothing written). CheckpointError naming every
    mismatched tensor if the checkpoint is of another model."""
    if model is None:
        saved = checkpoints.read_model_config(path)
        if saved is None:
            raise CheckpointError(
                f"no {checkpoints.MODEL_CONFIG_FILE} in the MODEL_DIR of {path!r} (a run from before it was "
                "saved): pass the model, or use `t5x-like eval`, which reads the run's config.gin")
        tasks.apply_settings(saved.data)
        model = model_lib.Model(saved.model)
        if task_feature_lengths is None:
            task_feature_lengths = saved.task_feature_lengths
    loaded = checkpoints.load_params(path, model.abstract_params())
    return LoadedCheckpoint(model, loaded.params, loaded.step, loaded.run_dir, dict(task_feature_lengths or {}))


# --- model functions for seqio.Evaluator -------------------------------------------------
def _batches(dataset, batch_size: int):
    """(indices, batch) from seqio's enumerated eval dataset, the last batch padded to batch_size."""
    for indices, features in dataset.batch(batch_size).as_numpy_iterator():
        real = len(indices)
        if real < batch_size:
            features = {k: np.concatenate([v, np.repeat(v[:1], batch_size - real, 0)]) for k, v in features.items()}
        yield indices, real, features


def strip_after_eos(tokens: np.ndarray, eos_id: int | None = decoding.EOS_ID) -> list[int]:
    """Generated ids up to (not including) EOS, without padding."""
    out = []
    for t in tokens.tolist():
        if t == eos_id:
            break
        if t != model_lib.PAD_ID:
            out.append(t)
    return out


def make_predict_fn(model: model_lib.Model, params, feature_lengths: dict[str, int], batch_size: int,
                    decode_config: decoding.DecodeConfig | None = None, rng_seed: int = 0):
    """seqio predict_fn: [(index, generated ids [max_new_tokens])] with the KV cache.

    The ids keep their fixed length (0 after EOS): seqio stacks them into one
    array, and its vocabulary's decode stops at EOS."""
    config = decode_config or decoding.DecodeConfig()
    config = dataclasses.replace(config, max_new_tokens=feature_lengths["targets"])
    prompt_length = feature_lengths.get("inputs", 0) + 1 if model.config.layout != "encoder_decoder" else None

    def predict_fn(dataset, model_feature_shapes=None):
        results = []
        for n, (indices, real, batch) in enumerate(_batches(dataset, batch_size)):
            prompts = model.prompts(batch, prompt_length)
            out = decoding.generate(model, params, prompts, config, jax.random.key(rng_seed + n))
            tokens = np.asarray(out.tokens)
            results.extend((int(i), t) for i, t in zip(indices, tokens[:real]))
        return results
    return predict_fn


@functools.lru_cache(maxsize=8)
def jitted(model: model_lib.Model, name: str):
    """`model.score` or `model.score_tokens` (name "score" / "score_tokens"), or the loss sums'
    metrics ("loss"), jitted once per model."""
    if name == "loss":
        return jax.jit(lambda params, batch: model.loss_sums(params, batch)[1])
    return jax.jit(getattr(model, name))


def make_score_fn(model: model_lib.Model, params, batch_size: int):
    """seqio score_fn: [(index, sum of target log-likelihoods)]."""
    def score_fn(dataset, model_feature_shapes=None):
        results = []
        for indices, real, batch in _batches(dataset, batch_size):
            scores = np.asarray(jitted(model, "score")(params, batch))
            results.extend((int(i), float(s)) for i, s in zip(indices, scores[:real]))
        return results
    return score_fn


def teacher_forced_metrics(model: model_lib.Model, params, dataset, batch_size: int) -> dict[str, float]:
    """Loss (mean cross-entropy per target token), perplexity and token accuracy over a dataset."""
    totals = {"loss_sum": 0.0, "weight_sum": 0.0, "correct_sum": 0.0}
    examples = 0
    for _, real, batch in _batches(dataset, batch_size):
        weights = np.zeros((batch_size, 1), np.float32)
        weights[:real] = 1.0  # padded rows do not count
        key = "encoder_loss_weights" if model.config.layout == "encoder_only" else "decoder_loss_weights"
        target_key = key.replace("loss_weights", "target_tokens")
        base = batch.get(key, (batch[target_key] != model_lib.PAD_ID))
        batch = dict(batch, **{key: (np.asarray(base, np.float32) * weights)})
        sums = jax.device_get(jitted(model, "loss")(params, batch))
        for name in totals:
            totals[name] += float(sums[name])
        examples += real
    tokens = max(totals["weight_sum"], 1.0)
    loss = totals["loss_sum"] / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "token_accuracy": 100.0 * totals["correct_sum"] / tokens, "examples": examples,
            "target_tokens": int(totals["weight_sum"])}


# --- the evaluation ------------------------------------------------------------------------
@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]      # task -> metric -> value
    examples: dict[str, list[dict[str, str]]]  # task -> a few decoded predictions


def check_split(mixture_or_task_name: str, split: str) -> list:
    """The subtasks; raises ValueError for an unknown name (with close matches) or if one lacks `split`."""
    check_task_name(mixture_or_task_name)
    tasks = seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))
    for task in tasks:
        if split not in task.splits:
            raise ValueError(f"task {task.name!r} has no split {split!r}; it has {sorted(task.splits)}")
    return tasks


def evaluate(model: model_lib.Model, params, mixture_or_task_name: str, split: str = "validation",
             feature_lengths: dict[str, int] | None = None, batch_size: int = 16,
             decode_config: decoding.DecodeConfig | None = None, max_examples: int | None = None,
             num_shown: int = 3) -> EvalResult:
    """Metrics of every subtask: its seqio metric fns (predictions and/or scores)
    plus teacher-forced loss/perplexity/token accuracy.

    feature_lengths: task feature lengths (targets = the most tokens generated);
    None: the longest example of each feature (seqio's automatic lengths).
    """
    tasks = check_split(mixture_or_task_name, split)
    has_inputs = "inputs" in tasks[0].output_features
    converter = feature_converters.for_layout(model.config.layout, has_inputs, pack=False)
    with pipeline.BUILD_LOCK:  # the Evaluator builds its task datasets here
        evaluator = seqio.Evaluator(mixture_or_task_name, converter, eval_split=split,
                                    sequence_length=feature_lengths, num_examples=max_examples,
                                    use_memory_cache=True, async_compute_metrics=False)
    metrics: dict[str, dict[str, float]] = {}
    examples: dict[str, list[dict[str, str]]] = {}
    if evaluator.eval_tasks:
        lengths = dict(feature_lengths) if feature_lengths else _longest(evaluator)
        predict_fn = make_predict_fn(model, params, lengths, batch_size, decode_config)
        score_fn = make_score_fn(model, params, batch_size)
        future, outputs = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn, score_fn=score_fn)
        metrics = {name: dict(values) for name, values in (future.result() or {}).items()}
        for task in evaluator.eval_tasks:
            examples[task.name] = _shown(task, evaluator, outputs.get(task.name, {}), num_shown)
        datasets = evaluator.cached_model_datasets
    else:  # no task with metrics (e.g. pretraining): teacher-forced metrics only
        datasets = _model_datasets(tasks, converter, split, feature_lengths, max_examples)
    for name, dataset in datasets.items():
        tf_metrics = teacher_forced_metrics(model, params, dataset, batch_size)
        metrics.setdefault(name, {}).update(tf_metrics)
    return EvalResult({k: {m: _plain(v) for m, v in d.items()} for k, d in metrics.items()}, examples)


@dataclasses.dataclass
class CheckpointEvaluation:
    """`evaluate_checkpoint`'s answer: the metrics, the JSON report and where it belongs (not yet written)."""

    result: EvalResult
    report: dict[str, Any]
    output: str       # the report's path
    seconds: float

    def write(self) -> str:
        """Writes the JSON report to `output` (OSError if it cannot: a read-only MODEL_DIR); returns its path."""
        with open(self.output, "w") as f:
            json.dump(self.report, f, indent=1, default=str)
        return self.output


def evaluate_checkpoint(loaded: LoadedCheckpoint, mixture_or_task_name: str, split: str = "validation",
                        feature_lengths: dict[str, int] | None = None, batch_size: int = 16,
                        decode_config: decoding.DecodeConfig | None = None, max_examples: int | None = None,
                        output: str | None = None) -> CheckpointEvaluation:
    """`evaluate` on a loaded checkpoint, with its JSON report (default path
    MODEL_DIR/eval-<task>-<split>-step<step>.json), which the caller writes (`write()`) after
    showing the metrics: a MODEL_DIR that cannot be written does not lose them."""
    config = decode_config or decoding.DecodeConfig(method="greedy")
    start = time.time()
    result = evaluate(loaded.model, loaded.params, mixture_or_task_name, split, feature_lengths, batch_size,
                      config, max_examples)
    seconds = time.time() - start
    output = output or os.path.join(loaded.model_dir,
                                    f"eval-{mixture_or_task_name}-{split}-step{loaded.step}.json")
    report = {"checkpoint": os.path.abspath(loaded.model_dir), "step": loaded.step,
              "task": mixture_or_task_name, "split": split, "feature_lengths": feature_lengths,
              "decoding": {"method": config.method, "num_beams": config.num_beams,
                           "length_penalty": config.length_penalty},
              "seconds": round(seconds, 2), "metrics": result.metrics, "examples": result.examples}
    return CheckpointEvaluation(result, report, output, seconds)


def _longest(evaluator) -> dict[str, int]:
    """The automatic lengths seqio used: the longest example of each feature over all tasks."""
    lengths: dict[str, int] = {}
    for ds in evaluator.cached_task_datasets.values():
        for example in ds.as_numpy_iterator():
            for name in ("inputs", "targets"):
                if name in example:
                    lengths[name] = max(lengths.get(name, 0), len(example[name]))
    return lengths


def _model_datasets(tasks, converter, split, feature_lengths, max_examples):
    out = {}
    for task in tasks:
        with pipeline.BUILD_LOCK:
            ds = task.get_dataset(sequence_length=feature_lengths, split=split, shuffle=False, num_epochs=1)
        if max_examples:
            ds = ds.take(max_examples)
        out[task.name] = converter(ds, feature_lengths).enumerate()
    return out


def _shown(task, evaluator, outputs, n: int) -> list[dict[str, str]]:
    predictions = outputs.get(seqio.metrics.ModelOutputType.PREDICTION)
    if not predictions:
        return []
    vocabulary = task.output_features["targets"].vocabulary
    shown = []
    for example, tokens in zip(evaluator.cached_task_datasets[task.name].take(n).as_numpy_iterator(), predictions):
        shown.append({"inputs": example.get("inputs_pretokenized", b"").decode("utf-8", "replace"),
                      "targets": example.get("targets_pretokenized", b"").decode("utf-8", "replace"),
                      "prediction": vocabulary.decode(list(tokens))})
    return shown


def _plain(value):
    if isinstance(value, (np.generic, jnp.ndarray)):
        value = np.asarray(value).item()
    if hasattr(value, "result"):  # seqio metric objects
        value = value.result()
    return value
