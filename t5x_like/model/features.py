"""Which arrays each layout's batches hold, and how long: the layout-to-features rule, written once.

Two steps, each a pure function of plain values:

  matched_feature_lengths   a text of inputs + targets tokens -> the task feature lengths that
                            give each layout the same tokens at comparable compute
  model_feature_lengths     task feature lengths -> the model features a feature-converted
                            batch of the layout holds, with their lengths

`model_feature_lengths` is the rule seqio's feature converters apply
(`data.feature_converters.for_layout`; tests/data/test_feature_converters.py
checks it against them for every layout, with and without packing), stated
in plain Python for the model side, which loads no seqio: dummy and
synthetic batches (`Model.dummy_batch`), and the stack lengths that sizing
counts FLOPs over (`stack_lengths`). `prefix_indicator` and
`prefix_loss_weights` are the prefix-LM converter's `decoder_causal_attention`
(1 = bidirectional) and `decoder_loss_weights` (the targets) for one unpacked
example. They overlap at one position: the last input token sees the whole
prefix and predicts the first target.

    >>> matched_feature_lengths("decoder_only", 512, 114)
    {'inputs': 512, 'targets': 114}
    >>> model_feature_lengths("prefix_lm", {"inputs": 512, "targets": 114})
    {'decoder_input_tokens': 626, 'decoder_target_tokens': 626, 'decoder_loss_weights': 626, 'decoder_causal_attention': 626}
    >>> stack_lengths("encoder_decoder", {"inputs": 512, "targets": 114})
    {'encoder': 512, 'decoder': 114}

Matching layouts. To compare layouts on the same tokens at comparable compute
we follow T5 (Raffel et al. 2020, Sec. 3.2) and Wang et al. (2022): an
encoder-decoder runs its encoder over the inputs and its decoder over the
targets, so a decoder-only model (causal or prefix) that sees the
concatenation inputs+targets has the same per-token cost ("M") with half the
parameters. Wang et al.'s numbers: encoder-decoder span corruption inputs
512 / targets 114; non-causal (prefix-LM) decoder 626 = 512 + 114. For a
targets-only objective on a decoder we give the same total, 626; Wang et al.
trained their causal full-LM decoder at 512, which is
`matched_feature_lengths("decoder_only", 512, 0, task_has_inputs=False)`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from t5x_like.model.config import LAYOUTS


def matched_feature_lengths(layout: str, inputs_length: int, targets_length: int,
                            task_has_inputs: bool = True) -> dict[str, int]:
    """task_feature_lengths giving each layout the same tokens at comparable compute (T5 Sec. 3.2,
    Wang et al. 2022: an encoder-decoder's encoder over the inputs and decoder over the targets
    costs what a decoder over inputs + targets costs).

    >>> matched_feature_lengths("encoder_decoder", 512, 114)
    {'inputs': 512, 'targets': 114}
    >>> matched_feature_lengths("decoder_only", 512, 114, task_has_inputs=False)
    {'targets': 626}
    >>> matched_feature_lengths("encoder_only", 512, 114)   # MLM over 626 tokens
    {'inputs': 626, 'targets': 626}
    """
    if min(inputs_length, targets_length) < 0 or inputs_length + targets_length < 2:
        raise ValueError(f"lengths must be >= 0 with a positive total, got {inputs_length}, {targets_length}")
    _check_layout(layout)
    total = inputs_length + targets_length
    if layout == "encoder_only":
        return {"inputs": total, "targets": total}
    if layout == "decoder_only" and not task_has_inputs:
        return {"targets": total}
    if not task_has_inputs:
        raise ValueError(f"layout {layout!r} needs a task with inputs")
    return {"inputs": inputs_length, "targets": targets_length}


def model_feature_lengths(layout: str, task_feature_lengths: Mapping[str, int],
                          pack: bool = False) -> dict[str, int]:
    """The model features of `layout` for a task with these feature lengths, as seqio's converter
    for the layout makes them (a task "has inputs" when its lengths name inputs); packing adds
    segment ids and positions per stack."""
    _check_layout(layout)
    inputs, targets = task_feature_lengths.get("inputs", 0), task_feature_lengths["targets"]
    if layout == "encoder_only":
        stacks = {"encoder": inputs or targets}
        features = {name: stacks["encoder"] for name in
                    ("encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights")}
    elif layout == "encoder_decoder":
        stacks = {"encoder": inputs, "decoder": targets}
        features = {"encoder_input_tokens": inputs, **_decoder_features(targets)}
    else:
        stacks = {"decoder": inputs + targets}
        features = _decoder_features(inputs + targets)
        if inputs:
            features["decoder_causal_attention"] = inputs + targets
    if pack:
        for stack, length in stacks.items():
            features.update({f"{stack}_segment_ids": length, f"{stack}_positions": length})
    return features


def stack_lengths(layout: str, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """How many positions each stack of `layout` runs over, per example."""
    features = model_feature_lengths(layout, task_feature_lengths)
    lengths = {"encoder": features.get("encoder_input_tokens"), "decoder": features.get("decoder_target_tokens")}
    return {stack: length for stack, length in lengths.items() if length is not None}


def prefix_indicator(length: int, inputs_length: int) -> np.ndarray:
    """seqio's `decoder_causal_attention` for one unpacked prefix-LM example of `inputs_length`
    input tokens: 1 over the BOS and the inputs (bidirectional), 0 over the targets.

    >>> prefix_indicator(7, 3)
    array([1, 1, 1, 1, 0, 0, 0], dtype=int32)
    """
    return (np.arange(length) <= inputs_length).astype(np.int32)


def prefix_loss_weights(length: int, inputs_length: int) -> np.ndarray:
    """seqio's `decoder_loss_weights` (loss on the targets only) for one unpacked prefix-LM example
    of `inputs_length` input tokens: 1 where `decoder_target_tokens` holds a target.

    >>> prefix_loss_weights(7, 3)
    array([0, 0, 0, 1, 1, 1, 1], dtype=int32)
    """
    return (np.arange(length) >= inputs_length).astype(np.int32)


def _decoder_features(length: int) -> dict[str, int]:
    return {name: length for name in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")}


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
