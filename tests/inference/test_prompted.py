"""Prompted evaluation: rank classification per template, where each layout puts the template's input."""
from __future__ import annotations

import numpy as np
import pytest

from t5x_like.data import task_suite, tasks
from t5x_like.data import vocab as vocab_lib
from t5x_like.inference import prompted
from tests.model_fixtures import init_params, tiny_config

ROWS = task_suite.rank_classification_rows("last_word", "plain", "validation")


def test_forcing_the_gold_choice_highest_gives_accuracy_one_and_lowest_zero():
    gold_high = [1.0 if r[3] else 0.0 for r in ROWS]
    assert all(prompted.choice_correctness(ROWS, gold_high))
    assert not any(prompted.choice_correctness(ROWS, [-s for s in gold_high]))


def test_a_scorer_blind_to_the_choices_scores_the_gold_at_first_rate_near_chance():
    correct = prompted.choice_correctness(ROWS, [0.0] * len(ROWS))
    first_choice_is_gold = [is_correct for index, (_, _, _, is_correct) in enumerate(ROWS) if index % 4 == 0]
    assert np.mean(correct) == np.mean(first_choice_is_gold)
    # the suite shuffles the choices, so the gold is first about as often as chance says
    assert abs(np.mean(correct) - task_suite.family("last_word").chance) < 0.1


def _first_row_features(layout: str):
    name = prompted.suite_task("word_order", "verse")
    rows = task_suite.rank_classification_rows("word_order", "verse", "validation")
    lengths = prompted.task_lengths(rows, tasks.configured_vocabulary())
    _, features = next(prompted.template_dataset(layout, name, "validation", lengths).as_numpy_iterator())
    return rows[0], features, tasks.configured_vocabulary()


def test_prefix_lm_puts_the_template_input_in_the_bidirectional_prefix():
    row, features, vocabulary = _first_row_features("prefix_lm")
    inputs = vocabulary.encode(row[0]) + [1]  # and its EOS
    prefix = features["decoder_causal_attention"].astype(bool)
    assert prefix.sum() == len(inputs) + 1  # the prefix reaches the first target position, as seqio marks it
    assert list(features["decoder_target_tokens"][:len(inputs)]) == inputs
    assert list(features["decoder_loss_weights"][:len(inputs)]) == [0] * len(inputs)


def test_encoder_decoder_puts_the_template_input_in_the_encoder():
    row, features, vocabulary = _first_row_features("encoder_decoder")
    inputs = vocabulary.encode(row[0]) + [1]
    assert list(features["encoder_input_tokens"][:len(inputs)]) == inputs
    assert vocabulary.decode([t for t in features["decoder_target_tokens"] if t > 1]) == row[1]


def test_encoder_only_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="no decoder"):
        prompted.template_dataset("encoder_only", prompted.suite_task("word_order", "verse"), "validation",
                                  {"inputs": 32, "targets": 96})


@pytest.mark.slow
def test_family_result_does_not_depend_on_batch_size_and_summarises_templates():
    model, params = init_params(tiny_config("decoder_only", vocab_size=384))
    a = prompted.evaluate_family(model, params, "word_order", batch_size=8, max_examples=6)
    b = prompted.evaluate_family(model, params, "word_order", batch_size=4, max_examples=6)
    assert a == b
    assert len(a.templates) == 3 and all(len(t.correct) == 6 for t in a.templates)
    low, high = a.spread
    assert low <= a.median <= high and a.chance == 0.5


def test_calibration_removes_a_preference_for_one_answer_string_whatever_the_example():
    """Raw scores = a fixed liking for each answer string + a small signal for the gold one: raw
    ranking answers by the liking; subtracting the content-free scores (the liking) leaves the signal."""
    rows = task_suite.rank_classification_rows("sentiment", "overall", "validation")
    liking = {" great": 5.0, " not great": 0.0}
    content_free = np.array([liking[choice] for _, choice, _, _ in rows])
    raw = content_free + np.array([0.1 if is_gold else 0.0 for *_, is_gold in rows])
    assert np.mean(prompted.choice_correctness(rows, raw)) == pytest.approx(0.5, abs=0.01)  # labels balanced
    assert all(prompted.choice_correctness(rows, raw - content_free))


@pytest.mark.slow
def test_calibrated_family_ranks_raw_minus_content_free_scores_and_leaves_fieldless_templates_alone():
    from t5x_like.inference import evaluation
    model, params = init_params(tiny_config("decoder_only", vocab_size=384))
    score_fn = evaluation.make_score_fn(model, params, 8)
    calibrated = prompted.evaluate_family(model, params, "last_word", batch_size=8, max_examples=5,
                                          calibration="content_free")
    assert calibrated.calibration == "content_free"
    for result in calibrated.templates:
        rows, raw = prompted.template_scores(score_fn, "decoder_only", "last_word", result.template, max_examples=5)
        free_rows, free = prompted.template_scores(score_fn, "decoder_only", "last_word", result.template,
                                                   max_examples=5, content_free=True)
        assert [r[1:] for r in free_rows] == [r[1:] for r in rows] and free_rows[0][0] != rows[0][0]
        assert list(result.correct) == prompted.choice_correctness(rows, raw - free)
    fieldless = prompted.evaluate_family(model, params, "word_order", batch_size=8, max_examples=4,
                                         calibration="content_free")
    assert fieldless.templates == prompted.evaluate_family(model, params, "word_order", batch_size=8,
                                                           max_examples=4).templates
    with pytest.raises(ValueError, match="unknown calibration"):
        prompted.evaluate_family(model, params, "word_order", calibration="pmi")


@pytest.mark.parametrize("layout", ["prefix_lm", "encoder_decoder"])
def test_a_ul2_mode_token_goes_first_in_the_inputs_and_nothing_else_moves(layout):
    name = prompted.suite_task("word_order", "verse")
    rows = task_suite.rank_classification_rows("word_order", "verse", "validation")
    vocabulary = tasks.configured_vocabulary()
    lengths = prompted.task_lengths(rows, vocabulary, extra_inputs=1)
    first = lambda mode: next(prompted.template_dataset(layout, name, "validation", lengths, mode).as_numpy_iterator())[1]
    plain, moded = first(None), first("[S2S]")
    key = "encoder_input_tokens" if layout == "encoder_decoder" else "decoder_target_tokens"
    inputs = vocabulary.encode(rows[0][0]) + [1]
    assert list(moded[key][:len(inputs) + 1]) == [vocab_lib.mode_token_id("[S2S]")] + inputs
    assert list(plain[key][:len(inputs)]) == inputs
    if layout == "prefix_lm":  # the mode token is part of the bidirectional prefix
        assert moded["decoder_causal_attention"].sum() == plain["decoder_causal_attention"].sum() + 1
