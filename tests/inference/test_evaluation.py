"""inference/evaluation.py: loading a model's checkpoint, seqio metrics, teacher-forced loss."""
from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest

from t5x_like.data import default_vocabulary
from t5x_like.data.pipeline import get_dataset
from t5x_like.inference import decoding, evaluation
from t5x_like.model import model as models
from tests.checkpoint_fixtures import LENGTHS, tiny, write_run


def test_loaded_checkpoint_has_the_saved_params_and_step(prefix_run):
    model_dir, model, params = prefix_run
    loaded = evaluation.load_checkpoint(os.path.join(model_dir, "checkpoints", "7"), model, LENGTHS)
    assert loaded.step == 7 and loaded.model_dir == model_dir and loaded.task_feature_lengths == LENGTHS
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)


@pytest.fixture(scope="module")
def evaluated(prefix_run):
    """One library-level evaluation shared by the checks below, and the same examples as a batch."""
    _, model, params = prefix_run
    result = evaluation.evaluate(model, params, "probe_copy", "validation", LENGTHS, batch_size=4,
                                 max_examples=6, num_shown=6)
    batch = next(get_dataset("probe_copy", LENGTHS, "validation", layout="prefix_lm", batch_size=6,
                                  shuffle=False, pack=False).as_numpy_iterator())
    return model, params, result, batch


def test_teacher_forced_loss_matches_the_models_loss_sums(evaluated):
    model, params, result, batch = evaluated
    _, sums = jax.jit(model.loss_sums)(params, batch)
    metrics = result.metrics["probe_copy"]
    assert metrics["loss"] == pytest.approx(float(sums["loss_sum"] / sums["weight_sum"]), rel=1e-5)
    assert metrics["target_tokens"] == int(sums["weight_sum"])
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)


def test_predictions_are_the_models_greedy_generations(evaluated):
    model, params, result, batch = evaluated
    tokens = decoding.predict_batch(model, params, batch, decoding.DecodeConfig(max_new_tokens=LENGTHS["targets"]),
                                    prompt_length=LENGTHS["inputs"] + 1)
    shown = [example["prediction"] for example in result.examples["probe_copy"]]
    assert shown == [default_vocabulary().decode(t.tolist()) for t in tokens]
    assert 0.0 <= result.metrics["probe_copy"]["exact_match"] <= 100.0


def test_rank_classification_task_is_scored_not_generated(prefix_run):
    _, model, params = prefix_run
    result = evaluation.evaluate(model, params, "sentiment_finefood_rank", "validation",
                                 {"inputs": 64, "targets": 4}, batch_size=8, max_examples=8)
    metrics = result.metrics["sentiment_finefood_rank"]
    assert "accuracy" in metrics and 0.0 <= metrics["accuracy"] <= 100.0
    assert result.examples["sentiment_finefood_rank"] == []  # no generation happened


def test_checkpoint_of_another_size_names_the_mismatched_params(tmp_path):
    write_run(str(tmp_path), tiny("decoder_only", d_model=48))
    with pytest.raises(evaluation.CheckpointError, match=r"mlp/wi_0/kernel: model \(32, 64\) vs "
                                                         r"checkpoint \(48, 64\)"):
        evaluation.load_checkpoint(str(tmp_path), models.Model(tiny("decoder_only", d_model=32)))
