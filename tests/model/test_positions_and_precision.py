"""Relative-position buckets against hand-computed values; bf16 vs fp32 forward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.model import layers, positions
from tests.model_fixtures import init_params, random_tokens, tiny_config

# (relative position = key - query, expected bucket) with 32 buckets, max distance 128.
# Unidirectional: 16 exact buckets for distances 0..15 into the past, then
# 16 + floor(log(n/16) / log(128/16) * 16), capped at 31; future keys -> 0.
UNIDIRECTIONAL = [(0, 0), (-1, 1), (-15, 15), (-16, 16), (-20, 17), (-127, 31), (-1000, 31), (5, 0)]
# Bidirectional: 16 buckets per direction; past keys use 0..15, future keys 16..31;
# 8 exact, then 8 + floor(log(n/8) / log(128/8) * 8).
BIDIRECTIONAL = [(0, 0), (-1, 1), (1, 17), (-7, 7), (7, 23), (8, 24), (-8, 8), (100, 31), (-100, 15), (-12, 9)]


@pytest.mark.parametrize("relative,expected", UNIDIRECTIONAL)
def test_unidirectional_buckets(relative, expected):
    assert int(positions.relative_position_bucket(jnp.array(relative), bidirectional=False)) == expected


@pytest.mark.parametrize("relative,expected", BIDIRECTIONAL)
def test_bidirectional_buckets(relative, expected):
    assert int(positions.relative_position_bucket(jnp.array(relative), bidirectional=True)) == expected


def test_prefix_bias_uses_bidirectional_buckets_inside_the_prefix():
    """In a prefix-LM, future keys inside the prefix get their own buckets (not all bucket 0)."""
    config = tiny_config("prefix_lm")
    module = layers.RelativePositionBias(config, "prefix")
    pos = jnp.arange(6)[None]
    prefix = jnp.array([[1, 1, 1, 0, 0, 0]])
    params = nn.unbox(module.init(jax.random.PRNGKey(0), pos, pos, prefix))["params"]
    table = np.asarray(params["rel_embedding"])
    bias = np.asarray(module.apply({"params": params}, pos, pos, prefix))[0]  # [H, Lq, Lk]
    nb = config.relative_num_buckets
    np.testing.assert_array_equal(bias[:, 0, 2], table[nb + 16 + 2])   # future key in prefix: bidirectional
    np.testing.assert_array_equal(bias[:, 2, 0], table[nb + 2])        # past key in prefix: bidirectional
    np.testing.assert_array_equal(bias[:, 4, 1], table[3])             # target query: causal buckets
    assert not np.array_equal(bias[:, 0, 1], bias[:, 0, 2])            # distinct future distances differ


def test_rope_is_relative():
    """Rotated q·k depends only on the distance between positions."""
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))
    score = lambda i, j: float(jnp.sum(positions.apply_rope(q, jnp.array([[i]])) * positions.apply_rope(k, jnp.array([[j]]))))
    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_linear_rope_scaling_rotates_position_p_as_p_over_the_factor():
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 3, 2, 8))
    at = jnp.array([[0.0, 5.0, 13.0]])
    scaled = positions.rope_inverse_frequencies(8, 500.0, "linear", factor=4.0)
    np.testing.assert_allclose(positions.apply_rope(x, at, inverse_frequencies=scaled),
                               positions.apply_rope(x, at / 4.0, 500.0), atol=1e-6)


def test_llama3_rope_scaling_keeps_short_waves_divides_long_ones_and_smooths_between():
    plain = positions.rope_inverse_frequencies(16, 500.0)
    scaled = positions.rope_inverse_frequencies(16, 500.0, "llama3", factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0, original_max_length=32)
    wavelength = 2 * np.pi / plain
    short, long = wavelength < 32 / 4.0, wavelength > 32 / 1.0
    assert short.any() and long.any() and (~short & ~long).any()
    np.testing.assert_array_equal(scaled[short], plain[short])
    np.testing.assert_allclose(scaled[long], plain[long] / 8.0, rtol=1e-6)
    between = ~short & ~long
    assert np.all((scaled[between] < plain[between]) & (scaled[between] > plain[between] / 8.0))


@pytest.mark.parametrize("layout", ["decoder_only", "encoder_decoder"])
def test_bf16_compute_matches_fp32(layout):
    config = tiny_config(layout)
    model, params = init_params(config, 2, 8 if layout != "decoder_only" else 0, 8)
    rng = np.random.default_rng(0)
    tokens = random_tokens(rng, (2, 8))
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens, "encoder_input_tokens": tokens}
    fp32 = np.asarray(model.logits(params, batch))
    bf16_model = type(model)(config.replace(dtype="bfloat16"))
    bf16 = np.asarray(bf16_model.logits(params, batch))
    scale = np.abs(fp32).max()
    assert np.abs(bf16 - fp32).max() < 0.05 * scale
    assert not np.array_equal(bf16, fp32)  # the bf16 path really ran in bf16


@pytest.mark.parametrize("embedding_init_std", [1.0, 0.02])
def test_learned_positions_start_at_the_scale_of_the_token_embeddings(embedding_init_std):
    config = tiny_config("decoder_only", position="learned", embedding_init_std=embedding_init_std, max_length=512)
    _, params = init_params(config)
    positions = np.asarray(params["decoder_position_embed"]["embedding"])
    tokens = np.asarray(params["token_embed"]["embedding"])
    assert np.std(positions) == pytest.approx(embedding_init_std, rel=0.1)
    assert np.std(positions) == pytest.approx(np.std(tokens), rel=0.2)
