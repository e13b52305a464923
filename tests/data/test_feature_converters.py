"""EncoderOnlyMLMFeatureConverter on concrete tensors, and the layout -> converter table."""
from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_like.data import feature_converters
from t5x_like.data.feature_converters import EncoderOnlyMLMFeatureConverter


def _dataset(examples):
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})


DOCSTRING_EXAMPLE = [
    {"inputs": [9, 5, 3, 1], "targets": [7, 4, 3, 1], "mlm_weights": [2, 2, 1, 1]},
    {"inputs": [6, 9, 1], "targets": [6, 8, 1], "mlm_weights": [2, 2, 1]},
]


def test_mlm_converter_packs_the_docstring_example():
    ds = EncoderOnlyMLMFeatureConverter(pack=True)(_dataset(DOCSTRING_EXAMPLE), {"inputs": 8, "targets": 8})
    (out,) = list(ds.as_numpy_iterator())
    expected = {
        "encoder_input_tokens": [9, 5, 3, 1, 6, 9, 1, 0],
        "encoder_target_tokens": [7, 4, 3, 1, 6, 8, 1, 0],
        "encoder_loss_weights": [1, 1, 0, 0, 1, 1, 0, 0],
        "encoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 0],
        "encoder_positions": [0, 1, 2, 3, 0, 1, 2, 0],
    }
    assert set(out) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(out[key], value, err_msg=key)


def test_mlm_converter_pads_each_example_without_packing():
    ds = EncoderOnlyMLMFeatureConverter(pack=False)(_dataset(DOCSTRING_EXAMPLE), {"inputs": 5, "targets": 5})
    first, second = list(ds.as_numpy_iterator())
    assert set(first) == {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights"}
    np.testing.assert_array_equal(first["encoder_input_tokens"], [9, 5, 3, 1, 0])
    np.testing.assert_array_equal(second["encoder_target_tokens"], [6, 8, 1, 0, 0])
    np.testing.assert_array_equal(second["encoder_loss_weights"], [1, 1, 0, 0, 0])


def test_mlm_converter_weights_the_unchanged_selected_token():
    # Position 0 was selected but kept (input == target): it must still carry loss.
    ds = EncoderOnlyMLMFeatureConverter(pack=False)(
        _dataset([{"inputs": [6, 4, 1], "targets": [6, 4, 1], "mlm_weights": [2, 1, 1]}]),
        {"inputs": 3, "targets": 3})
    np.testing.assert_array_equal(next(ds.as_numpy_iterator())["encoder_loss_weights"], [1, 0, 0])


def test_mlm_converter_requires_the_mlm_weights_feature():
    ds = _dataset([{"inputs": [3, 1], "targets": [3, 1]}])
    with pytest.raises(ValueError, match="mlm_weights"):
        EncoderOnlyMLMFeatureConverter(pack=True)(ds, {"inputs": 4, "targets": 4})


def test_mlm_converter_requires_equal_lengths():
    with pytest.raises(ValueError, match="equal inputs and targets"):
        EncoderOnlyMLMFeatureConverter(pack=True)(_dataset(DOCSTRING_EXAMPLE), {"inputs": 8, "targets": 4})


@pytest.mark.parametrize("layout,has_inputs,expected", [
    ("decoder_only", True, seqio.PrefixLMFeatureConverter),
    ("decoder_only", False, seqio.LMFeatureConverter),
    ("prefix_lm", True, seqio.PrefixLMFeatureConverter),
    ("encoder_decoder", True, seqio.EncDecFeatureConverter),
    ("encoder_only", True, EncoderOnlyMLMFeatureConverter),
])
def test_for_layout_picks_the_converter(layout, has_inputs, expected):
    converter = feature_converters.for_layout(layout, has_inputs, pack=False)
    assert type(converter) is expected
    assert not converter.pack


@pytest.mark.parametrize("layout", ["prefix_lm", "encoder_decoder", "encoder_only"])
def test_for_layout_rejects_targets_only_tasks_where_inputs_are_needed(layout):
    with pytest.raises(ValueError, match="needs"):
        feature_converters.for_layout(layout, task_has_inputs=False, pack=True)


def test_for_layout_rejects_unknown_layout():
    with pytest.raises(ValueError, match="unknown layout"):
        feature_converters.for_layout("decoder_encoder", True, True)


def test_decoder_only_and_prefix_lm_see_identical_features_on_an_inputs_task():
    # Su's controlled experiment: the only difference is how the model uses
    # decoder_causal_attention, never the tokens or the loss.
    examples = [{"inputs": [7, 8, 1], "targets": [3, 9, 1]}]
    outs = [next(feature_converters.for_layout(layout, True, pack=True)(
        _dataset(examples), {"inputs": 4, "targets": 4}).as_numpy_iterator())
        for layout in ("decoder_only", "prefix_lm")]
    assert set(outs[0]) == set(outs[1])
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key], outs[1][key])
    np.testing.assert_array_equal(outs[0]["decoder_loss_weights"], [0, 0, 0, 1, 1, 1, 0, 0])


def _lengths_task(with_inputs: bool, inputs_length: int, targets_length: int, count: int = 3) -> tf.data.Dataset:
    """Examples whose inputs (if any) and targets fill exactly the given lengths (ids >= 2)."""
    rng = np.random.default_rng(0)
    examples = [{"targets": rng.integers(2, 50, targets_length - 1).tolist() + [1]} for _ in range(count)]
    if with_inputs:
        for example in examples:
            example["inputs"] = rng.integers(2, 50, inputs_length - 1).tolist() + [1]
    return _dataset(examples)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("layout,with_inputs", [("decoder_only", True), ("decoder_only", False), ("prefix_lm", True),
                                                ("encoder_decoder", True), ("encoder_only", True)])
def test_the_model_side_feature_rule_is_what_seqio_s_converters_make(layout, with_inputs, pack):
    """model.features.model_feature_lengths (the rule the model side uses without seqio) names the
    features, and their lengths, that the layout's converter makes, padded and packed."""
    from t5x_like.model import features
    lengths = {"inputs": 6, "targets": 6} if layout == "encoder_only" else (
        {"inputs": 5, "targets": 4} if with_inputs else {"targets": 9})
    converter = feature_converters.for_layout(layout, with_inputs, pack)
    expected = features.model_feature_lengths(layout, lengths, pack=pack)
    assert dict(converter.get_model_feature_lengths(lengths)) == expected
    if layout == "encoder_only":
        return  # its converter needs an MLM task: the lengths above are its own (docstring tests cover the arrays)
    (first, *_) = list(converter(_lengths_task(with_inputs, lengths.get("inputs", 0), lengths["targets"]),
                                 lengths).as_numpy_iterator())
    assert {k: len(v) for k, v in first.items()} == expected
    if "decoder_causal_attention" in first and not pack:
        length = expected["decoder_causal_attention"]
        np.testing.assert_array_equal(first["decoder_causal_attention"], features.prefix_indicator(length, lengths["inputs"]))
        np.testing.assert_array_equal(first["decoder_loss_weights"], features.prefix_loss_weights(length, lengths["inputs"]))


def test_the_converters_table_covers_exactly_the_model_s_layouts():
    from t5x_like.model.config import LAYOUTS
    assert sorted(feature_converters.LAYOUTS) == sorted(LAYOUTS)
