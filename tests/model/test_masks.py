"""Mask properties, checked by perturbing tokens and watching which outputs move.

A hidden token must leave an output bitwise unchanged (fp32); a visible one
must change it. Every layout and mask kind is covered. The AttentionMask that
carries a call's mask gives, as its dense form, exactly the dense mask the
builders compose for every layout, packing and decoding case.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.model import layers, masks
from tests.model_fixtures import init_params, jitted_logits, random_tokens, tiny_config

L = 8
RNG = np.random.default_rng(0)


def decoder_batch(tokens, prefix_lengths=None, segment_ids=None):
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, axis=1),
             "decoder_loss_weights": np.ones_like(tokens)}
    batch["decoder_target_tokens"][:, -1] = 1
    if prefix_lengths is not None:
        batch["decoder_causal_attention"] = (np.arange(tokens.shape[1])[None] < np.asarray(prefix_lengths)[:, None]).astype(np.int32)
    if segment_ids is not None:
        batch["decoder_segment_ids"] = segment_ids
        batch["decoder_positions"] = np.concatenate([np.arange(n) for n in np.unique(segment_ids[0], return_counts=True)[1]])[None].repeat(tokens.shape[0], 0).astype(np.int32)
    return batch


def outputs_after_perturbing(config, batch, key, position):
    """(logits before, logits after) changing token `position` of batch[key], row 0."""
    model, params = init_params(config, 2, L if config.layout != "decoder_only" else 0, L)
    logits_fn = jitted_logits(config)
    before = np.asarray(logits_fn(params, batch))
    perturbed = {k: np.array(v) for k, v in batch.items()}
    perturbed[key][0, position] = 3 + (perturbed[key][0, position] - 2) % 60
    after = np.asarray(logits_fn(params, perturbed))
    return before[0], after[0]


def changed_positions(before, after):
    return [i for i in range(before.shape[0]) if not np.array_equal(before[i], after[i])]


@pytest.mark.parametrize("position,num_kv_heads", [("relative", None), ("rope", None), ("learned", None),
                                                   ("alibi", None), ("none", None), ("rope", 2), ("relative", 1)])
def test_causal_output_ignores_future_tokens(position, num_kv_heads):
    config = tiny_config("decoder_only", position=position, num_kv_heads=num_kv_heads)
    j = 4
    before, after = outputs_after_perturbing(config, decoder_batch(random_tokens(RNG, (2, L))), "decoder_input_tokens", j)
    assert changed_positions(before, after) == list(range(j, L))


def test_decoder_only_ignores_prefix_feature():
    """Su's control: a decoder_only model on prefix-LM data stays causal."""
    config = tiny_config("decoder_only")
    batch = decoder_batch(random_tokens(RNG, (2, L)), prefix_lengths=[6, 6])
    before, after = outputs_after_perturbing(config, batch, "decoder_input_tokens", 4)
    assert changed_positions(before, after) == list(range(4, L))


@pytest.mark.parametrize("position", ["relative", "rope", "alibi"])
def test_prefix_positions_see_later_prefix_tokens(position):
    config = tiny_config("prefix_lm", position=position)
    batch = decoder_batch(random_tokens(RNG, (2, L)), prefix_lengths=[5, 3])
    before, after = outputs_after_perturbing(config, batch, "decoder_input_tokens", 3)  # inside the prefix
    assert changed_positions(before, after) == list(range(L))  # prefix positions 0..2 see it too


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_prefix_lm_targets_never_see_later_targets(num_kv_heads):
    config = tiny_config("prefix_lm", num_kv_heads=num_kv_heads)
    batch = decoder_batch(random_tokens(RNG, (2, L)), prefix_lengths=[3, 5])
    before, after = outputs_after_perturbing(config, batch, "decoder_input_tokens", 5)  # a target position
    assert changed_positions(before, after) == list(range(5, L))


def test_prefix_lengths_are_per_example():
    config = tiny_config("prefix_lm")
    batch = decoder_batch(random_tokens(RNG, (2, L)), prefix_lengths=[2, 6])
    model, params = init_params(config, 2, L, L)
    logits_fn = jitted_logits(config)
    perturbed = {k: np.array(v) for k, v in batch.items()}
    perturbed["decoder_input_tokens"][:, 4] += 1
    before, after = np.asarray(logits_fn(params, batch)), np.asarray(logits_fn(params, perturbed))
    assert changed_positions(before[0], after[0]) == list(range(4, L))  # 4 is a target in row 0
    assert changed_positions(before[1], after[1]) == list(range(L))     # 4 is in row 1's prefix


def test_bidirectional_encoder_sees_everything():
    config = tiny_config("encoder_only")
    tokens = random_tokens(RNG, (2, L))
    batch = {"encoder_input_tokens": tokens, "encoder_target_tokens": tokens, "encoder_loss_weights": np.ones_like(tokens)}
    before, after = outputs_after_perturbing(config, batch, "encoder_input_tokens", 6)
    assert changed_positions(before, after) == list(range(L))


def test_forward_backward_layers_first_layer_is_forward():
    config = tiny_config("encoder_only", num_encoder_layers=1, encoder_mask="forward_backward_layers")
    tokens = random_tokens(RNG, (2, L))
    batch = {"encoder_input_tokens": tokens, "encoder_target_tokens": tokens, "encoder_loss_weights": np.ones_like(tokens)}
    before, after = outputs_after_perturbing(config, batch, "encoder_input_tokens", 4)
    assert changed_positions(before, after) == list(range(4, L))


def test_forward_backward_layers_two_layers_see_everything():
    config = tiny_config("encoder_only", encoder_mask="forward_backward_layers")
    tokens = random_tokens(RNG, (2, L))
    batch = {"encoder_input_tokens": tokens, "encoder_target_tokens": tokens, "encoder_loss_weights": np.ones_like(tokens)}
    before, after = outputs_after_perturbing(config, batch, "encoder_input_tokens", 4)
    assert changed_positions(before, after) == list(range(L))


def _single_head_outputs(mask, head, x, perturb_at):
    """Output of one head of an attention layer (mask: an AttentionMask), before and after changing input j."""
    attention = layers.MultiHeadAttention(tiny_config("encoder_only"))
    params = nn.unbox(attention.init(jax.random.PRNGKey(1), x, x, mask)["params"])
    out_kernel = np.zeros_like(params["out"]["kernel"])
    out_kernel[head] = params["out"]["kernel"][head]  # only this head reaches the output
    params = {**params, "out": {"kernel": out_kernel}}
    apply = jax.jit(lambda p, y: attention.apply({"params": p}, y, y, mask))
    return np.asarray(apply(params, x))[0], np.asarray(apply(params, x.at[0, perturb_at].add(1.0)))[0]


@pytest.mark.parametrize("head,expected", [(0, range(4, L)), (1, range(4, L)), (2, range(0, 5)), (3, range(0, 5))])
def test_forward_backward_heads_obey_their_triangle(head, expected):
    mask = masks.AttentionMask(masks.forward_backward_head_structures(4), (L, L))
    x = jax.random.normal(jax.random.PRNGKey(2), (1, L, 32))
    before, after = _single_head_outputs(mask, head, x, 4)
    assert changed_positions(before, after) == list(expected)


def test_packed_segments_never_see_each_other_decoder():
    config = tiny_config("decoder_only")
    segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2]] * 2, np.int32)
    batch = decoder_batch(random_tokens(RNG, (2, L)), segment_ids=segments)
    before, after = outputs_after_perturbing(config, batch, "decoder_input_tokens", 1)  # segment 1
    assert changed_positions(before, after) == [1, 2]


@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_packed_segments_never_see_each_other_encoder(num_kv_heads):
    config = tiny_config("encoder_only", num_kv_heads=num_kv_heads)
    tokens = random_tokens(RNG, (2, L))
    segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2]] * 2, np.int32)
    batch = {"encoder_input_tokens": tokens, "encoder_target_tokens": tokens, "encoder_loss_weights": np.ones_like(tokens),
             "encoder_segment_ids": segments, "encoder_positions": np.array([[0, 1, 2, 0, 1, 2, 3, 4]] * 2, np.int32)}
    before, after = outputs_after_perturbing(config, batch, "encoder_input_tokens", 5)
    assert changed_positions(before, after) == [3, 4, 5, 6, 7]


def encdec_batch(encoder_tokens, decoder_tokens):
    return {"encoder_input_tokens": encoder_tokens, "decoder_input_tokens": decoder_tokens,
            "decoder_target_tokens": np.roll(decoder_tokens, -1, 1), "decoder_loss_weights": np.ones_like(decoder_tokens)}


@pytest.mark.parametrize("shared,num_kv_heads", [(False, None), (True, None), (False, 2)])
def test_encoder_decoder_decoder_is_causal_and_sees_all_inputs(shared, num_kv_heads):
    config = tiny_config("encoder_decoder", share_encoder_decoder=shared, num_kv_heads=num_kv_heads)
    batch = encdec_batch(random_tokens(RNG, (2, L)), random_tokens(RNG, (2, L)))
    before, after = outputs_after_perturbing(config, batch, "decoder_input_tokens", 5)
    assert changed_positions(before, after) == list(range(5, L))
    before, after = outputs_after_perturbing(config, batch, "encoder_input_tokens", 7)
    assert changed_positions(before, after) == list(range(L))


def test_encoder_padding_is_invisible():
    config = tiny_config("encoder_decoder")
    encoder_tokens = random_tokens(RNG, (2, L))
    encoder_tokens[:, 6:] = 0
    batch = encdec_batch(encoder_tokens, random_tokens(RNG, (2, L)))
    model, params = init_params(config, 2, L, L)
    logits_fn = jitted_logits(config)
    shorter = {**batch, "encoder_input_tokens": encoder_tokens[:, :6]}
    np.testing.assert_allclose(np.asarray(logits_fn(params, batch)), np.asarray(logits_fn(params, shorter)), atol=1e-5)


def test_mask_semantics_worked_example():
    prefix = jnp.array([[1, 1, 0, 0]])
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(np.asarray(masks.prefix_lm_mask(prefix))[0, 0], expected)
    np.testing.assert_array_equal(np.asarray(masks.causal_mask(4))[0, 0], np.tril(np.ones((4, 4), bool)))
    np.testing.assert_array_equal(np.asarray(masks.backward_mask(4))[0, 0], np.triu(np.ones((4, 4), bool)))


# --- the AttentionMask's dense form: the builders' composition, for every case -------------------------
VALID = jnp.arange(L)[None] < jnp.array([[L], [5]])
ENCODER_VALID = jnp.arange(L + 2)[None] < jnp.array([[7], [L + 2]])
SEGMENTS = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 0, 0, 0]])
ENCODER_SEGMENTS = jnp.array([[1] * 4 + [2] * 6, [1] * 10])
PREFIX = jnp.arange(L)[None] < jnp.array([[3], [5]])
STEP_POSITIONS = jnp.array([[4], [9]])
ENCODER_HEADS = {layer: masks.encoder_head_structures("forward_backward_layers", 4, layer) for layer in (0, 1)}


def _padding(valid=VALID):
    return masks.padding_mask(valid, valid)


DENSE_CASES = {  # name: (the AttentionMask, the dense mask the builders compose)
    "decoder": (masks.self_attention_mask(("causal",), VALID), masks.combine(masks.causal_mask(L), _padding())),
    "decoder_packed": (masks.self_attention_mask(("causal",), VALID, SEGMENTS),
                       masks.combine(masks.causal_mask(L), _padding(), masks.segment_mask(SEGMENTS, SEGMENTS))),
    "prefix_lm": (masks.self_attention_mask(("causal",), VALID, prefix_indicator=PREFIX),
                  masks.combine(masks.prefix_lm_mask(PREFIX), _padding())),
    "prefix_lm_packed": (masks.self_attention_mask(("causal",), VALID, SEGMENTS, PREFIX),
                         masks.combine(masks.prefix_lm_mask(PREFIX), _padding(),
                                       masks.segment_mask(SEGMENTS, SEGMENTS))),
    "encoder": (masks.self_attention_mask(("bidirectional",), VALID), _padding()),
    "encoder_packed": (masks.self_attention_mask(("bidirectional",), VALID, SEGMENTS),
                       masks.combine(_padding(), masks.segment_mask(SEGMENTS, SEGMENTS))),
    "forward_backward_heads_packed": (
        masks.self_attention_mask(masks.forward_backward_head_structures(4), VALID, SEGMENTS),
        masks.combine(_padding(), masks.segment_mask(SEGMENTS, SEGMENTS)) & masks.forward_backward_heads_mask(L, 4)),
    "forward_backward_layers_even": (masks.self_attention_mask(ENCODER_HEADS[0], VALID),
                                     _padding() & masks.forward_backward_layer_mask(L, 0)),
    "forward_backward_layers_odd": (masks.self_attention_mask(ENCODER_HEADS[1], VALID),
                                    _padding() & masks.forward_backward_layer_mask(L, 1)),
    "cross": (masks.cross_attention_mask(VALID, ENCODER_VALID), masks.padding_mask(VALID, ENCODER_VALID)),
    "cross_packed": (masks.cross_attention_mask(VALID, ENCODER_VALID, SEGMENTS, ENCODER_SEGMENTS),
                     masks.combine(masks.padding_mask(VALID, ENCODER_VALID),
                                   masks.segment_mask(SEGMENTS, ENCODER_SEGMENTS))),
    "decoding_step": (masks.decoding_step_mask(STEP_POSITIONS, 12),
                      (jnp.broadcast_to(jnp.arange(12), (2, 12)) <= STEP_POSITIONS)[:, None, None, :]),
    "decoding_step_cross": (masks.decoding_step_cross_mask(ENCODER_VALID), ENCODER_VALID[:, None, None, :]),
}


@pytest.mark.parametrize("case", sorted(DENSE_CASES))
def test_attention_mask_dense_form_is_the_builders_mask(case):
    mask, expected = DENSE_CASES[case]
    dense = mask.dense()
    assert dense.dtype == jnp.bool_ and dense.shape == expected.shape, (dense.shape, expected.shape)
    np.testing.assert_array_equal(np.asarray(dense), np.asarray(expected))


def test_attention_mask_without_padding_or_structure_sees_everything():
    np.testing.assert_array_equal(masks.AttentionMask(("bidirectional",), (3, 5)).dense(), np.ones((1, 1, 3, 5), bool))


def test_only_masks_with_segment_ids_are_packed():
    assert DENSE_CASES["decoder_packed"][0].packed and not DENSE_CASES["prefix_lm"][0].packed


def test_attention_mask_passes_through_jit_as_one_argument():
    mask = DENSE_CASES["prefix_lm_packed"][0]
    np.testing.assert_array_equal(jax.jit(lambda m: m.dense())(mask), mask.dense())
