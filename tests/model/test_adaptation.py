"""Adaptation plans between layouts, and the relative-position table conversion."""
from __future__ import annotations

import numpy as np
import pytest

from t5x_like.model import adaptation, positions
from t5x_like.model.config import TransformerConfig

BUCKETS, MAX_DISTANCE = 32, 128
STACK = {"decoder_layers_0/mlp/wo/kernel": (64, 32), "decoder_norm/scale": (32,), "token_embed/embedding": (384, 32)}


def tree(layout: str) -> dict[str, tuple]:
    rows = 2 * BUCKETS if layout == "prefix_lm" else BUCKETS
    shapes = {**STACK, "decoder_relpos_bias/rel_embedding": (rows, 2)}
    if layout == "encoder_only":
        shapes = {k.replace("decoder_", "encoder_"): v for k, v in shapes.items()}
    if layout == "encoder_decoder":
        shapes = {**shapes, **{k.replace("decoder_", "encoder_"): v for k, v in shapes.items()},
                  "decoder_layers_0/cross_attention/query/kernel": (32, 2, 16)}
    return shapes


def config(layout: str, buckets: int = BUCKETS) -> TransformerConfig:
    encoder = 2 if layout in ("encoder_only", "encoder_decoder") else 0
    decoder = 0 if layout == "encoder_only" else 2
    return TransformerConfig(layout=layout, num_encoder_layers=encoder, num_decoder_layers=decoder,
                             relative_num_buckets=buckets, relative_max_distance=MAX_DISTANCE)


def plan(source, target, source_config_saved: bool = True):
    source_config = config(source) if source_config_saved else None
    return adaptation.adaptation_plan(tree(source), tree(target), config(target), source_config)


def test_the_same_tree_loads_everything_unchanged():
    p = plan("decoder_only", "decoder_only")
    assert not p.adapted and all(src == dst and fn is None for dst, (src, fn) in p.loads.items())


@pytest.mark.parametrize("source,target", [("decoder_only", "prefix_lm"), ("prefix_lm", "decoder_only"),
                                           ("encoder_only", "prefix_lm"), ("encoder_only", "decoder_only"),
                                           ("decoder_only", "encoder_only")])
@pytest.mark.parametrize("source_config_saved", [True, False], ids=["saved_config", "older_checkpoint"])
def test_bridged_pairs_carry_every_tensor_and_convert_only_the_relative_table(source, target, source_config_saved):
    p = plan(source, target, source_config_saved)
    assert p.adapted and set(p.loads) == set(tree(target)) and not p.initialized and not p.dropped
    converted = {dst for dst, (_, fn) in p.loads.items() if fn is not None}
    assert converted == {next(k for k in tree(target) if "relpos" in k)}


@pytest.mark.parametrize("source,target", [("decoder_only", "encoder_decoder"), ("encoder_decoder", "prefix_lm")])
def test_encoder_decoder_is_refused_naming_the_tensors(source, target):
    with pytest.raises(adaptation.AdaptationError, match="encoder-decoder"):
        plan(source, target)


def test_another_width_is_refused_naming_the_tensor():
    wider = {**tree("prefix_lm"), "decoder_norm/scale": (64,)}
    with pytest.raises(adaptation.AdaptationError, match=r"decoder_norm/scale: checkpoint \(32,\) vs model \(64,\)"):
        adaptation.adaptation_plan(tree("decoder_only"), wider, config("prefix_lm"), config("decoder_only"))


def bias(table: np.ndarray, relative: int, kind: str) -> np.ndarray:
    """The row a table of `kind` gives a (query, key) pair at `relative` = key - query."""
    bucket = int(positions.relative_position_bucket(np.array(relative), bidirectional=kind == "bidirectional",
                                                    num_buckets=BUCKETS, max_distance=MAX_DISTANCE))
    return table[bucket]


def test_causal_to_prefix_keeps_the_causal_block_and_gives_the_prefix_block_the_same_bias_by_distance():
    causal = np.random.default_rng(0).normal(size=(BUCKETS, 2)).astype(np.float32)
    prefix = adaptation.convert_relpos_table(causal, "causal", "prefix", BUCKETS, MAX_DISTANCE)
    assert prefix.shape == (2 * BUCKETS, 2)
    np.testing.assert_array_equal(prefix[:BUCKETS], causal)
    bidirectional = prefix[BUCKETS:]
    # exact buckets (|distance| < 8): past and future keys see the causal bias of their distance
    for distance in range(8):
        np.testing.assert_array_equal(bias(bidirectional, -distance, "bidirectional"), bias(causal, -distance, "causal"))
        np.testing.assert_array_equal(bias(bidirectional, distance, "bidirectional"), bias(causal, -distance, "causal"))


def test_prefix_to_causal_drops_the_prefix_block():
    prefix = np.random.default_rng(1).normal(size=(2 * BUCKETS, 2)).astype(np.float32)
    causal = adaptation.convert_relpos_table(prefix, "prefix", "causal", BUCKETS, MAX_DISTANCE)
    np.testing.assert_array_equal(causal, prefix[:BUCKETS])


def test_bidirectional_to_prefix_reuses_the_table_for_the_prefix_block_and_its_past_half_for_causal_pairs():
    table = np.random.default_rng(2).normal(size=(BUCKETS, 2)).astype(np.float32)
    prefix = adaptation.convert_relpos_table(table, "bidirectional", "prefix", BUCKETS, MAX_DISTANCE)
    np.testing.assert_array_equal(prefix[BUCKETS:], table)
    for distance in (0, 1, 5, 20, 100):
        np.testing.assert_array_equal(bias(prefix[:BUCKETS], -distance, "causal"),
                                      bias(table, -distance, "bidirectional"))


def test_a_source_with_other_bucket_settings_is_read_with_its_own_saved_config():
    """A prefix-LM with 16 buckets has a 32-row table, the row count of a 32-bucket causal table: only
    the source's saved config tells them apart. Each converted row is the source's row of the same
    relative position (exact buckets: distances below 8)."""
    source_config, target_config = config("prefix_lm", buckets=16), config("decoder_only", buckets=32)
    table_path = "decoder_relpos_bias/rel_embedding"
    source_tree, target_tree = {**STACK, table_path: (32, 2)}, {**STACK, table_path: (32, 2)}
    p = adaptation.adaptation_plan(source_tree, target_tree, target_config, source_config)
    origin, convert = p.loads[table_path]
    assert p.adapted and origin == table_path and convert is not None
    table = np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32)
    converted = convert(table)
    for relative in range(-7, 1):
        source_row = table[int(positions.relative_position_bucket(np.array(relative), bidirectional=False,
                                                                  num_buckets=16, max_distance=MAX_DISTANCE))]
        np.testing.assert_array_equal(bias(converted, relative, "causal"), source_row, err_msg=str(relative))
    guessed = adaptation.adaptation_plan(source_tree, target_tree, target_config)  # no saved config: same shapes
    assert not guessed.adapted
