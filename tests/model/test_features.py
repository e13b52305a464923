"""The layout-to-features rule (model/features.py): matched lengths, model features, stack lengths.
Its agreement with seqio's converters is tested in tests/data/test_feature_converters.py."""
from __future__ import annotations

import numpy as np
import pytest

from t5x_like.model import features
from t5x_like.model import model as models
from t5x_like.model.config import TransformerConfig


@pytest.mark.parametrize("layout,has_inputs,expected", [
    ("encoder_decoder", True, {"inputs": 512, "targets": 114}),
    ("prefix_lm", True, {"inputs": 512, "targets": 114}),
    ("decoder_only", True, {"inputs": 512, "targets": 114}),
    ("decoder_only", False, {"targets": 626}),
    ("encoder_only", True, {"inputs": 626, "targets": 626}),
])
def test_matched_feature_lengths_give_every_layout_the_same_total(layout, has_inputs, expected):
    lengths = features.matched_feature_lengths(layout, 512, 114, task_has_inputs=has_inputs)
    assert lengths == expected
    model_length = sum(lengths.values()) if layout != "encoder_only" else lengths["inputs"]
    assert model_length == 626


def test_matched_feature_lengths_rejects_encoder_decoder_without_inputs():
    with pytest.raises(ValueError, match="needs a task with inputs"):
        features.matched_feature_lengths("encoder_decoder", 512, 114, task_has_inputs=False)


@pytest.mark.parametrize("layout", ["decoder_only", "prefix_lm", "encoder_decoder", "encoder_only"])
def test_a_model_s_dummy_batch_holds_exactly_its_layout_s_features(layout):
    encoder = 2 if layout in ("encoder_only", "encoder_decoder") else 0
    config = TransformerConfig(layout=layout, num_encoder_layers=encoder, num_decoder_layers=0 if layout == "encoder_only" else 2)
    lengths = {"inputs": 6, "targets": 6} if layout == "encoder_only" else {"inputs": 5, "targets": 3}
    batch = models.Model(config).dummy_batch(2, lengths)
    assert {k: v.shape[1] for k, v in batch.items()} == features.model_feature_lengths(layout, lengths)
    if "decoder_causal_attention" in batch:
        np.testing.assert_array_equal(batch["decoder_causal_attention"][0], [1, 1, 1, 1, 1, 1, 0, 0])
        np.testing.assert_array_equal(batch["decoder_loss_weights"][0], [0, 0, 0, 0, 0, 1, 1, 1])


def test_stack_lengths_count_an_mlm_text_once():
    assert features.stack_lengths("encoder_only", {"inputs": 626, "targets": 626}) == {"encoder": 626}
    assert features.stack_lengths("decoder_only", {"targets": 626}) == {"decoder": 626}
    assert features.stack_lengths("encoder_decoder", {"inputs": 512, "targets": 114}) == {"encoder": 512, "decoder": 114}
