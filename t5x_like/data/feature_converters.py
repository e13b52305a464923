"""Task features -> model features: the one new converter and the layout table.

Owns: `EncoderOnlyMLMFeatureConverter` (BERT-style MLM for the encoder-only
layout) and `for_layout`, which says which seqio converter each layout uses.
The other converters are seqio's own:

  layout           task has inputs           targets only
  decoder_only     PrefixLMFeatureConverter  LMFeatureConverter
  prefix_lm        PrefixLMFeatureConverter  (error: nothing to be bidirectional over)
  encoder_decoder  EncDecFeatureConverter    (error)
  encoder_only     EncoderOnlyMLMFeatureConverter (needs an MLM task)

The decoder-only model reads the same PrefixLM features as the prefix-LM model
and ignores `decoder_causal_attention` (which, despite its name, is 1 where
attention is bidirectional): the only difference between the two is the mask
over the inputs, as in Su's controlled experiment.
"""
from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from t5x_like.data.objectives import MLM_WEIGHTS_KEY

FeatureSpec = seqio.FeatureConverter.FeatureSpec


class EncoderOnlyMLMFeatureConverter(seqio.FeatureConverter):
    """Feature converter for an encoder-only model trained with BERT-style MLM.

    The task (see `objectives.mlm`) provides aligned, equally long features:
    "inputs" (the corrupted text), "targets" (the original text) and
    "mlm_weights" (2 at the positions selected for prediction, 1 elsewhere;
    never 0 inside an example, so seqio's packing keeps it aligned). Unlike
    seqio's `EncoderFeatureConverter`, which takes the loss where the input is
    the mask id, the loss weights here cover all selected positions, including
    the 10% replaced by a random token and the 10% left unchanged.

    Example: a packed dataset, mask id 9 (two of the selected positions, the
    4 -> 5 and the kept 6, are not a mask token).

      ds = [{"inputs": [9, 5, 3, 1], "targets": [7, 4, 3, 1], "mlm_weights": [2, 2, 1, 1]},
            {"inputs": [6, 9, 1],    "targets": [6, 8, 1],    "mlm_weights": [2, 2, 1]}]
      task_feature_lengths = {"inputs": 8, "targets": 8}

      converted_ds = {
           "encoder_input_tokens": [9, 5, 3, 1, 6, 9, 1, 0],
          "encoder_target_tokens": [7, 4, 3, 1, 6, 8, 1, 0],
           "encoder_loss_weights": [1, 1, 0, 0, 1, 1, 0, 0],
            "encoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 0],
              "encoder_positions": [0, 1, 2, 3, 0, 1, 2, 0],
      }

    Without packing the segment ids and positions are omitted and each example
    is padded to the length on its own.
    """

    TASK_FEATURES = {
        "inputs": FeatureSpec(dtype=tf.int32),
        "targets": FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "encoder_target_tokens": FeatureSpec(dtype=tf.int32),
        "encoder_loss_weights": FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {
        "encoder_segment_ids": tf.int32,
        "encoder_positions": tf.int32,
    }

    def _convert_features(self, ds: tf.data.Dataset,
                          task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        if MLM_WEIGHTS_KEY not in ds.element_spec:
            raise ValueError(
                f"EncoderOnlyMLMFeatureConverter needs the {MLM_WEIGHTS_KEY!r} feature written "
                f"by objectives.mlm (e.g. task shakespeare_mlm); the dataset has "
                f"{sorted(ds.element_spec)}")
        length = self._length(task_feature_lengths)
        ds = self._pack_or_pad(ds, {"inputs": length, "targets": length, MLM_WEIGHTS_KEY: length})

        def convert(features):
            converted = {
                "encoder_input_tokens": features["inputs"],
                "encoder_target_tokens": features["targets"],
                "encoder_loss_weights": tf.cast(tf.equal(features[MLM_WEIGHTS_KEY], 2), tf.int32),
            }
            if self.pack:
                converted["encoder_segment_ids"] = features["inputs_segment_ids"]
                converted["encoder_positions"] = features["inputs_positions"]
            return converted

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    @staticmethod
    def _length(task_feature_lengths: Mapping[str, int]) -> int:
        if task_feature_lengths["inputs"] != task_feature_lengths["targets"]:
            raise ValueError("EncoderOnlyMLMFeatureConverter needs equal inputs and targets "
                             f"lengths, got {dict(task_feature_lengths)}")
        return task_feature_lengths["inputs"]

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        length = self._length(task_feature_lengths)
        names = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
        return {name: length for name in names}


LAYOUTS = ("decoder_only", "prefix_lm", "encoder_decoder", "encoder_only")


def for_layout(layout: str, task_has_inputs: bool, pack: bool) -> seqio.FeatureConverter:
    """The converter that turns a task's features into `layout`'s model features."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "encoder_only":
        if not task_has_inputs:
            raise ValueError("encoder_only needs an MLM task (inputs, targets, mlm_weights), "
                             "e.g. shakespeare_mlm")
        return EncoderOnlyMLMFeatureConverter(pack=pack)
    if layout == "decoder_only":
        if task_has_inputs:
            return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)
        return seqio.LMFeatureConverter(pack=pack)
    if not task_has_inputs:
        raise ValueError(f"layout {layout!r} needs a task with inputs and targets; "
                         "targets-only tasks (causal LM) go with decoder_only")
    if layout == "prefix_lm":
        return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)
    return seqio.EncDecFeatureConverter(pack=pack)
